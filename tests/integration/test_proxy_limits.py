"""Concurrency limits and queueing through a real router process: the per-replica limit under a
crowd, no idle replica while requests wait, 429 / 503 / 504, client disconnects freeing their
place, and what /metrics and /admin show meanwhile.

One router (module scope) serves one endpoint per scenario, each with its own model server(s),
so a scenario's leftovers (e.g. a slot a bug leaks) never reach another test.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    ModelServerHandle,
    async_wait_until,
    start_model_servers,
    stop_servers,
    underused_spans,
    wait_until,
)
from tests.router import RouterFactory, RouterHandle

HTTP_TIMEOUT = 30.0
CROWD = 200
CROWD_DELAY_MS = 20
STEADY_REQUESTS = 36
STEADY_DELAY_MS = 100
LIMIT = 2
DEPLOYMENT = "blue"


def _endpoint(name: str, servers: list[str], **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "auth_mode": "none",
        "traffic": {DEPLOYMENT: 100},
        "deployments": [{"name": DEPLOYMENT, "urls": servers, "request_settings": settings}],
    }


# Scenario endpoint -> (model servers, request settings).
SCENARIOS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "crowd": (
        ("c0", "c1", "c2"),
        {
            "max_concurrent_requests_per_instance": LIMIT,
            "max_queued_requests": CROWD,
            "max_queue_wait_ms": 60_000,
            "request_timeout_ms": 60_000,
        },
    ),
    "steady": (
        ("c0", "c1", "c2"),
        {
            "max_concurrent_requests_per_instance": LIMIT,
            "max_queued_requests": CROWD,
            "max_queue_wait_ms": 60_000,
            "request_timeout_ms": 60_000,
        },
    ),
    # Azure's default queue bound: 2 * 1 per replica * 1 replica.
    "full": (("f0",), {"max_queue_wait_ms": 20_000, "request_timeout_ms": 20_000}),
    "qwait": (("w0",), {"max_queue_wait_ms": 300, "request_timeout_ms": 20_000}),
    "hang": (("h0",), {"request_timeout_ms": 500}),
    "total": (("t0",), {"max_queue_wait_ms": 20_000, "request_timeout_ms": 1500}),
    # One endpoint per way of leaving, so a slot a bug leaks stays with its own test.
    "leave-queue-close": (
        ("lqc0",),
        {
            "max_queued_requests": 1,
            "max_queue_wait_ms": 20_000,
            "request_timeout_ms": 20_000,
        },
    ),
    "leave-queue-reset": (
        ("lqr0",),
        {
            "max_queued_requests": 1,
            "max_queue_wait_ms": 20_000,
            "request_timeout_ms": 20_000,
        },
    ),
    "leave-replica-close": (
        ("lrc0",),
        {
            "max_queue_wait_ms": 20_000,
            "request_timeout_ms": 60_000,
        },
    ),
    "leave-replica-reset": (
        ("lrr0",),
        {
            "max_queue_wait_ms": 20_000,
            "request_timeout_ms": 60_000,
        },
    ),
    "observed": (("o0",), {"max_queue_wait_ms": 20_000, "request_timeout_ms": 20_000}),
}


class Cluster:
    def __init__(self, handle: RouterHandle, servers: dict[str, ModelServerHandle]) -> None:
        self.router = handle
        self.servers = servers

    def url(self, endpoint: str, query: str = "") -> str:
        return f"{self.router.url}/api/v1/endpoint/{endpoint}/score{query}"

    def deployment(self, endpoint: str) -> dict[str, Any]:
        return self.router.deployment(endpoint, DEPLOYMENT)

    def server(self, endpoint: str) -> ModelServerHandle:
        return self.servers[SCENARIOS[endpoint][0][0]]

    def raw_request(self, endpoint: str, query: str) -> socket.socket:
        """Send a GET on a fresh socket and return the socket (the caller reads or drops it)."""
        sock = socket.create_connection(("127.0.0.1", self.router.port), timeout=HTTP_TIMEOUT)
        path = f"/api/v1/endpoint/{endpoint}/score{query}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        return sock


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    names = sorted({name for servers, _ in SCENARIOS.values() for name in servers})
    servers = {s.name: s for s in start_model_servers(names)}
    config = {
        # A short drain: a test may leave a request hanging, and teardown should not wait on it.
        "server": {"drain_timeout_s": 1.0},
        "endpoints": [
            _endpoint(name, [servers[s].url for s in replicas], **settings)
            for name, (replicas, settings) in SCENARIOS.items()
        ],
    }
    factory = RouterFactory(Path(tmp_path_factory.mktemp("limits")))
    try:
        yield Cluster(factory(config), servers)
    finally:
        factory.stop_all()
        stop_servers(servers.values())


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=CROWD + 10, max_keepalive_connections=CROWD + 10)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits) as http:
        yield http


async def admin(cluster: Cluster, endpoint: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
        response = await http.get(f"{cluster.router.admin_url}/admin/v1/deployments")
    for ep in response.json()["endpoints"]:
        if ep["name"] == endpoint:
            return ep["deployments"][0]
    raise KeyError(endpoint)


async def wait_for_table(
    cluster: Cluster, endpoint: str, inflight: int, queued: int, timeout: float = 10.0
) -> None:
    async def reached() -> bool:
        document = await admin(cluster, endpoint)
        return (document["inflight"], document["queue_length"]) == (inflight, queued)

    await async_wait_until(
        reached, timeout=timeout, message=f"{endpoint}: {inflight} in flight, {queued} queued"
    )


async def occupy_the_slot(
    cluster: Cluster, client: httpx.AsyncClient, endpoint: str, delay_ms: int
) -> asyncio.Future[httpx.Response]:
    """Send a request that takes `delay_ms` and return once it holds `endpoint`'s one slot (and
    nothing waits); the future answers it."""
    running = asyncio.ensure_future(
        client.post(cluster.url(endpoint, f"?delay_ms={delay_ms}"), content=b"{}")
    )
    await wait_for_table(cluster, endpoint, 1, 0)
    return running


def assert_router_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code


def metric_samples(text: str, name: str, endpoint: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of metric `name` for `endpoint`, keyed by their other labels."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("endpoint") == endpoint:
                others = tuple(
                    sorted(
                        (k, v)
                        for k, v in sample.labels.items()
                        if k not in ("endpoint", "deployment")
                    )
                )
                samples[others] = sample.value
    return samples


# ==========================================================================================
# The per-replica limit
# ==========================================================================================


async def test_limit_per_replica_holds_under_200_concurrent_clients(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    servers = [cluster.servers[name] for name in SCENARIOS["crowd"][0]]
    for server in servers:
        server.reset()
    responses = await asyncio.gather(
        *(
            client.post(cluster.url("crowd", f"?delay_ms={CROWD_DELAY_MS}&i={i}"), content=b"{}")
            for i in range(CROWD)
        )
    )
    assert [r.status_code for r in responses] == [200] * CROWD
    stats = [server.stats(history=False) for server in servers]
    assert [s["peak_inflight"] for s in stats] == [LIMIT] * len(servers), stats
    assert sum(s["requests"] for s in stats) == CROWD
    document = await admin(cluster, "crowd")
    assert (document["inflight"], document["queue_length"]) == (0, 0)
    assert document["responses"] == {"200": CROWD}


def read_status_until_close(sock: socket.socket) -> int:
    """The status code of the one answer on a `Connection: close` socket."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1])


def test_no_replica_slot_idles_while_requests_wait(cluster: Cluster) -> None:
    servers = [cluster.servers[name] for name in SCENARIOS["steady"][0]]
    for server in servers:
        server.reset()
    # Raw sockets put every request in the router's hands within milliseconds, far less than
    # one request's duration, so the queue is full before the first answer (a client library
    # under a loaded machine may take longer than that to send them all).
    path = f"/api/v1/endpoint/steady/score?delay_ms={STEADY_DELAY_MS}"
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    sockets = []
    for _ in range(STEADY_REQUESTS):
        sock = socket.create_connection(("127.0.0.1", cluster.router.port), timeout=HTTP_TIMEOUT)
        sock.sendall(request)
        sockets.append(sock)

    def every_request_arrived() -> dict[str, Any] | None:
        document = cluster.deployment("steady")
        seen = document["inflight"] + document["queue_length"]
        seen += sum(document["responses"].values())
        return document if seen == STEADY_REQUESTS else None

    document = wait_until(every_request_arrived)
    arrived = time.time()
    assert document["queue_length"] > 0
    assert [read_status_until_close(sock) for sock in sockets] == [200] * STEADY_REQUESTS
    timelines = [server.stats()["timeline"] for server in servers]
    last_grant = max(start for timeline in timelines for start, _ in timeline)
    # From the moment every request was in the router until the last one was handed a slot,
    # the queue was never empty: a slot may only be free for the hand-over to the next
    # request. The bound is one request's duration, so a slot skipped for a turn is caught.
    for server, timeline in zip(servers, timelines, strict=True):
        spans = underused_spans(timeline, LIMIT, arrived, last_grant)
        longest = max((end - start for start, end in spans), default=0.0)
        assert longest < STEADY_DELAY_MS / 1000, (server.name, spans)
    assert sum(len(timeline) for timeline in timelines) == STEADY_REQUESTS


# ==========================================================================================
# 429, 503, 504
# ==========================================================================================


async def test_429_at_once_when_the_queue_is_full(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    server = cluster.server("full")
    first = await occupy_the_slot(cluster, client, "full", 2000)
    queued = [
        asyncio.ensure_future(client.post(cluster.url("full"), content=b"{}")) for _ in range(2)
    ]
    await wait_for_table(cluster, "full", 1, 2)
    rejected = await client.post(cluster.url("full"), content=b"{}")
    assert_router_error(rejected, 429, "TooManyRequests")
    # Answered while the first request still ran and the two others still waited.
    assert not first.done()
    assert server.stats(history=False)["inflight"] == 1
    assert (await admin(cluster, "full"))["queue_length"] == 2
    assert [r.status_code for r in await asyncio.gather(first, *queued)] == [200, 200, 200]


async def test_503_when_the_queue_wait_passes_max_queue_wait_ms(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    first = await occupy_the_slot(cluster, client, "qwait", 1500)
    started = time.monotonic()
    waited = await client.post(cluster.url("qwait"), content=b"{}")
    assert_router_error(waited, 503, "ServiceUnavailable")
    assert time.monotonic() - started >= 0.3
    assert not first.done()  # it gave up waiting, it was not served late
    assert (await first).status_code == 200
    assert cluster.server("qwait").stats(history=False)["requests"] == 1


async def test_504_when_a_replica_hangs(cluster: Cluster, client: httpx.AsyncClient) -> None:
    server = cluster.server("hang")
    response = await client.post(cluster.url("hang", "?mode=hang"), content=b"{}")
    assert_router_error(response, 504, "GatewayTimeout")
    assert response.headers["azureml-model-deployment"] == DEPLOYMENT
    # The router dropped its connection to the replica: the replica sees the request end.
    wait_until(lambda: server.stats(history=False)["inflight"] == 0)
    await wait_for_table(cluster, "hang", 0, 0)
    assert (await client.post(cluster.url("hang"), content=b"{}")).status_code == 200


async def test_a_short_deadline_fires_behind_a_longer_one_entered_earlier(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    # "full" allows 20 s, "hang" 0.5 s. Deadlines are swept in arrival order per timeout: a
    # sweep that stopped at the older 20 s deadline would leave the hanging request to the
    # client's own timeout instead of a 504.
    older = asyncio.ensure_future(client.post(cluster.url("full", "?mode=hang"), content=b"{}"))
    await wait_for_table(cluster, "full", 1, 0)
    response = await client.post(cluster.url("hang", "?mode=hang"), content=b"{}")
    assert_router_error(response, 504, "GatewayTimeout")
    assert not older.done()  # both hang: only its own deadline, 20 s away, could end it
    older.cancel()  # the client leaves: its slot is freed at once
    await wait_for_table(cluster, "full", 0, 0)
    wait_until(lambda: cluster.server("full").stats(history=False)["inflight"] == 0)


async def test_504_counts_the_queue_wait(cluster: Cluster, client: httpx.AsyncClient) -> None:
    # Timeout 1.5 s; each request takes 1 s. The second waits 1 s for the slot, so only a
    # deadline that includes the queue wait (1 + 1 > 1.5) answers it 504; one counted from
    # the moment the slot was granted would let it finish (1 < 1.5).
    server = cluster.server("total")
    server.reset()
    first = await occupy_the_slot(cluster, client, "total", 1000)
    second = await client.post(cluster.url("total", "?delay_ms=1000"), content=b"{}")
    assert_router_error(second, 504, "GatewayTimeout")
    assert (await first).status_code == 200
    assert server.stats(history=False)["requests"] == 2  # it did get its turn on the replica


# ==========================================================================================
# Clients that leave
# ==========================================================================================


# Both ways a client leaves: a FIN (taken as the client gone) and an RST.
LEAVING = ["close", "reset"]


def leave(sock: socket.socket, how: str) -> None:
    """Close like most clients do (FIN), or abortively (RST: SO_LINGER 0)."""
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", LEAVING)
async def test_client_leaving_the_queue_frees_its_place(
    cluster: Cluster, client: httpx.AsyncClient, how: str
) -> None:
    endpoint = f"leave-queue-{how}"
    server = cluster.server(endpoint)
    first = asyncio.ensure_future(
        client.post(cluster.url(endpoint, "?delay_ms=1500"), content=b"{}")
    )
    try:
        await wait_for_table(cluster, endpoint, 1, 0)
        leaving = cluster.raw_request(endpoint, "?who=leaving")
        await wait_for_table(cluster, endpoint, 1, 1)
        leave(leaving, how)
        await wait_for_table(cluster, endpoint, 1, 0, timeout=2.0)
        # The queue holds one: a new request takes the place the leaver gave up.
        after = await client.post(cluster.url(endpoint, "?who=after"), content=b"{}")
        assert after.status_code == 200
        assert (await first).status_code == 200
        # The leaver's request never reached the replica.
        assert server.stats(history=False)["requests"] == 2
    finally:
        await asyncio.gather(first, return_exceptions=True)


@pytest.mark.parametrize("how", LEAVING)
async def test_client_leaving_during_its_request_frees_the_slot(
    cluster: Cluster, client: httpx.AsyncClient, how: str
) -> None:
    endpoint = f"leave-replica-{how}"
    server = cluster.server(endpoint)
    leaving = cluster.raw_request(endpoint, "?delay_ms=30000")
    await wait_for_table(cluster, endpoint, 1, 0)
    wait_until(lambda: server.stats(history=False)["inflight"] == 1)
    waiting = asyncio.ensure_future(client.post(cluster.url(endpoint), content=b"{}", timeout=3.0))
    await wait_for_table(cluster, endpoint, 1, 1)
    leave(leaving, how)
    # Served long before the leaver's 30 s would have ended, because its slot came back.
    response = await waiting
    assert response.status_code == 200
    # The router dropped the leaver's replica connection: the replica sees that request end.
    wait_until(lambda: server.stats(history=False)["inflight"] == 0, timeout=3.0)


# ==========================================================================================
# Observability while requests run and wait
# ==========================================================================================


async def test_metrics_and_admin_show_queue_inflight_and_codes(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    running = await occupy_the_slot(cluster, client, "observed", 1500)
    waiting = asyncio.ensure_future(client.post(cluster.url("observed"), content=b"{}"))
    await wait_for_table(cluster, "observed", 1, 1)

    document = await admin(cluster, "observed")
    assert document["name"] == DEPLOYMENT
    assert document["limit_per_replica"] == 1
    (replica,) = document["replicas"]
    assert replica["state"] == "ready"
    assert replica["inflight"] == 1
    assert replica["address"] == f"127.0.0.1:{cluster.server('observed').port}"

    text = cluster.router.metrics()
    assert metric_samples(text, "inferfront_queue_length", "observed") == {(): 1.0}
    assert metric_samples(text, "inferfront_replica_inflight", "observed") == {
        (("replica", replica["name"]),): 1.0
    }

    assert [r.status_code for r in await asyncio.gather(running, waiting)] == [200, 200]
    text = cluster.router.metrics()
    assert metric_samples(text, "inferfront_queue_length", "observed") == {(): 0.0}
    codes = metric_samples(text, "inferfront_requests_total", "observed")
    assert codes == {(("code", "200"),): 2.0}
    # Answers the router makes itself are counted by code as well.
    assert (await client.post(cluster.url("hang", "?mode=hang"), content=b"{}")).status_code == 504
    codes = metric_samples(cluster.router.metrics(), "inferfront_requests_total", "hang")
    assert codes.get((("code", "504"),), 0) >= 1
