"""Probes on the data plane's idle keep-alive connections (real loopback servers and a real
pool; the router test at the end checks the wiring in `inferfront serve`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

from inferfront.config.model import Limits
from inferfront.proxy.pool_probe import probe_on_idle_connection
from inferfront.proxy.upstream import UpstreamConnection, UpstreamPool, UpstreamPools
from inferfront.runtime.probe_client import KeptConnections, probe_http
from inferfront.runtime.probes import ProbeSpec, ReadinessWatch
from tests.conftest import ModelServerFactory
from tests.helpers import wait_until
from tests.integration.test_probe_client import CLOSE, HANG, OK, ScriptedServer
from tests.router import RouterFactory, endpoint_config

UNREADY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nstarting"
LARGE = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
WAIT = 10.0


@dataclass
class Kept:
    """A pool to the scripted server, lending its idle connections to probes."""

    server: ScriptedServer
    pools: UpstreamPools
    pool: UpstreamPool

    async def add_idle_connection(self) -> UpstreamConnection:
        return (await self.add_idle_connections(1))[0]

    async def add_idle_connections(self, count: int) -> list[UpstreamConnection]:
        """Open `count` connections to the server and put them in the pool, idle."""
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(count):
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(self.pool), "127.0.0.1", self.server.port
            )
            self.pool.release(conn)
            conns.append(conn)
        assert self.pool.idle == conns
        return conns

    async def probe(self, timeout: float = 2.0, reuse: bool = True) -> bool:
        return await probe_http("127.0.0.1", self.server.port, "/health", timeout, reuse=reuse)

    def requests(self) -> list[list[bytes]]:
        return self.server.requests


def scripted(script: Callable[[int, int], bytes | None]):
    """A fixture factory: a Kept around a ScriptedServer answering with `script`."""

    @pytest.fixture
    async def fixture() -> AsyncIterator[Kept]:
        async with ScriptedServer(script) as server:
            pools = UpstreamPools()
            pool = pools.attach("127.0.0.1", server.port)
            lender = partial(probe_on_idle_connection, pools, Limits())
            KeptConnections.for_running_loop().add(lender)
            try:
                yield Kept(server, pools, pool)
            finally:
                KeptConnections.for_running_loop().remove(lender)
                pools.close()

    return fixture


healthy = scripted(lambda connection, request: OK)
first_closes = scripted(lambda connection, request: CLOSE if connection == 0 else OK)
unready = scripted(lambda connection, request: UNREADY)
first_hangs = scripted(lambda connection, request: HANG if connection == 0 else OK)
large = scripted(lambda connection, request: LARGE)


async def test_a_probe_goes_over_an_idle_kept_connection_and_gives_it_back(
    healthy: Kept,
) -> None:
    conn = await healthy.add_idle_connection()
    assert await healthy.probe()
    assert await healthy.probe()
    requests = healthy.requests()
    assert len(requests) == 1  # no connection of the probes' own
    assert len(requests[0]) == 2
    assert b"GET /health HTTP/1.1\r\n" in requests[0][0]
    assert b"connection: close" not in requests[0][0].lower()
    assert healthy.pool.idle == [conn]


async def test_without_an_idle_connection_a_probe_opens_its_own(healthy: Kept) -> None:
    assert await healthy.probe()
    requests = healthy.requests()
    assert len(requests) == 1 and b"Connection: close" in requests[0][0]
    assert healthy.pool.idle == []


async def test_a_probe_asked_for_a_new_connection_leaves_the_kept_one_alone(
    healthy: Kept,
) -> None:
    conn = await healthy.add_idle_connection()
    assert await healthy.probe(reuse=False)
    requests = healthy.requests()
    assert [len(on_connection) for on_connection in requests] == [0, 1]
    assert healthy.pool.idle == [conn]


async def test_a_kept_connection_that_closes_leaves_the_probe_to_a_new_one(
    first_closes: Kept,
) -> None:
    await first_closes.add_idle_connection()
    assert await first_closes.probe()
    assert len(first_closes.requests()) == 2
    assert first_closes.pool.idle == []


async def test_an_unready_answer_fails_the_probe_and_keeps_the_connection(unready: Kept) -> None:
    conn = await unready.add_idle_connection()
    assert not await unready.probe()
    assert len(unready.requests()) == 1
    assert unready.pool.idle == [conn]


async def test_a_probe_timing_out_on_a_kept_connection_fails_and_closes_it(
    first_hangs: Kept,
) -> None:
    await first_hangs.add_idle_connection()
    assert not await first_hangs.probe(timeout=0.2)
    assert first_hangs.pool.idle == []
    await asyncio.wait_for(first_hangs.server.all_closed.wait(), WAIT)  # closed, not leaked
    assert len(first_hangs.requests()) == 1  # and no second try past the timeout


async def test_a_large_answer_counts_but_closes_the_connection(large: Kept) -> None:
    await large.add_idle_connection()
    assert await large.probe()
    assert large.pool.idle == []
    await asyncio.wait_for(large.server.all_closed.wait(), WAIT)


async def test_a_watch_uses_kept_connections_only_while_its_replica_is_ready(
    healthy: Kept,
) -> None:
    spec = ProbeSpec(path="/health", period=60.0, timeout=2.0)
    watch = ReadinessWatch("127.0.0.1", healthy.server.port, spec, 60.0, lambda ready: None)
    await healthy.add_idle_connection()

    def requests_by_connection() -> list[int]:
        return [len(on_connection) for on_connection in healthy.requests()]

    await watch.probe_once()  # not ready yet: it must show it takes new connections
    assert requests_by_connection() == [0, 1] and watch.ready
    await watch.probe_once()  # ready: the kept connection confirms it
    assert requests_by_connection() == [1, 1]
    watch.report_failure()  # the proxy saw connections refused
    await watch.probe_once()
    assert requests_by_connection() == [1, 1, 1]
    assert b"Connection: close" in healthy.requests()[2][0]
    await watch.probe_once()  # ready again
    assert requests_by_connection() == [2, 1, 1]


def test_the_router_probes_its_replicas_on_kept_connections(
    router: RouterFactory, model_server: ModelServerFactory
) -> None:
    replica = model_server("r0")
    probe: dict[str, Any] = {"initial_delay": 0, "period": 0.05, "timeout": 2}
    handle = router(endpoint_config([replica.url], readiness_probe=probe))
    answer = httpx.post(f"{handle.url}/api/v1/endpoint/endpoint/score", json={}, timeout=WAIT)
    assert answer.status_code == 200
    replica.reset()
    wait_until(
        lambda: replica.stats(history=False)["health_checks"] >= 5,
        timeout=WAIT,
        message="readiness probes reach the replica",
    )
    stats = replica.stats(history=False)
    # The request's connection went back to the pool: the probes since then use it.
    assert stats["health_checks_on_kept"] >= stats["health_checks"] - 1, stats
