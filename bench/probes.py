"""What watching one server from many deployments costs: probes it gets, CPU the router spends.

1,000 deployments (or endpoints) listing one multi-model server each watch it. Three ways:
- "one watch": what static replicas use (`runtime/server_watches.py`): the deployments share
  one watch, which probes once a period and tells each of them about a change;
- "shared probes": a watch each, taking a probe result younger than a second from the others;
- "own probes": a watch each, each probing for itself (`watches / period` probes a second).
Then what one probe costs, on a new connection (closed after the answer) and on an idle
keep-alive connection borrowed from the proxy's pool (`proxy/pool_probe.py`).
A benchmark, not a test: it takes about two minutes.

    python -m bench.probes [--watches 1000] [--period 10] [--seconds 20] [--probes 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
from collections.abc import Awaitable, Callable
from functools import partial

import uvloop

from inferfront.config.model import Limits
from inferfront.proxy.pool_probe import probe_on_idle_connection
from inferfront.proxy.upstream import UpstreamConnection, UpstreamPools
from inferfront.runtime.probe_client import KeptConnections, probe_http
from inferfront.runtime.probes import ProbeSpec, ReadinessWatch
from inferfront.runtime.server_watches import ServerWatches

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
KEPT_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
WAYS = ("one watch", "shared probes", "own probes")


def _watchers(
    way: str, port: int, spec: ProbeSpec
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """(first probe, keep probing) for one deployment's watch of the server, the given way."""
    if way == "one watch":
        membership = ServerWatches.for_running_loop().join(
            "127.0.0.1", port, spec, 0.1, lambda ready, why: None
        )
        return membership.probe_once, membership.run
    watch = ReadinessWatch(
        "127.0.0.1", port, spec, 0.1, lambda ready: None, share=way == "shared probes"
    )
    return watch.probe_once, watch.run


async def watching_cost(
    watches: int, period: float, seconds: float, way: str
) -> tuple[float, float]:
    """(probes the server gets a second, CPU milliseconds the watching takes a second)."""
    received = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        writer.write(ANSWER)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    spec = ProbeSpec(period=period)
    watchers = [_watchers(way, port, spec) for _ in range(watches)]
    await asyncio.gather(*(first() for first, _ in watchers))  # as StaticRuntime.start does
    tasks = [asyncio.create_task(keep()) for _, keep in watchers]
    await asyncio.sleep(period)  # past every watch's random first wait at the ready pace
    start, cpu_before = received, _cpu_seconds()
    await asyncio.sleep(seconds)
    counted, cpu = received - start, _cpu_seconds() - cpu_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    server.close()
    return counted / seconds, cpu / seconds * 1000


class _KeepAliveServer(asyncio.Protocol):
    """Answers every request head with 200, keeping the connection (closing it when asked)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.seen = b""

    def data_received(self, data: bytes) -> None:
        self.seen += data
        while b"\r\n\r\n" in self.seen:
            head, _, self.seen = self.seen.partition(b"\r\n\r\n")
            self.transport.write(KEPT_ANSWER)  # type: ignore[attr-defined]
            if b"connection: close" in head.lower():
                self.transport.close()


async def one_probe_cost(probes: int, kept: bool) -> float:
    """CPU microseconds per probe (server included), probing one server `probes` times in a row
    on a new connection each, or on the one idle connection of a pool."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_KeepAliveServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pools = UpstreamPools()
    pool = pools.attach("127.0.0.1", port)
    if kept:
        _, conn = await loop.create_connection(lambda: UpstreamConnection(pool), "127.0.0.1", port)
        pool.release(conn)
        KeptConnections.for_running_loop().add(partial(probe_on_idle_connection, pools, Limits()))
    cpu_before = _cpu_seconds()
    for _ in range(probes):
        assert await probe_http("127.0.0.1", port, "/", 2.0, reuse=kept)
    cpu = _cpu_seconds() - cpu_before
    pools.close()
    server.close()
    return cpu / probes * 1e6


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=1000)
    parser.add_argument("--period", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--probes", type=int, default=5000)
    args = parser.parse_args()
    for way in WAYS:
        rate, cpu_ms = uvloop.run(watching_cost(args.watches, args.period, args.seconds, way))
        print(
            f"{args.watches} deployments watching one server, {way}: "
            f"{rate:.1f} probes/s, {cpu_ms:.1f} ms CPU/s (server included)"
        )
    for kept in (False, True, False, True):  # taking turns: load from elsewhere hits both alike
        cost = uvloop.run(one_probe_cost(args.probes, kept))
        where = "an idle kept connection" if kept else "a new connection"
        print(f"one probe on {where}: {cost:.0f} us CPU (server included)")


if __name__ == "__main__":
    main()
