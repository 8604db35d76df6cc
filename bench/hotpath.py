"""The data plane's own Python cost per request, without sockets or a load generator.

`make bench-hotpath` drives a real ClientConnection and UpstreamConnection with in-memory
transports (a POST in, a small JSON answer back), so the figure is the router's Python work per
request alone: steadier than wall-clock load tests on a noisy machine, and the place to look
first when optimising the hot path. `--profile` adds a cProfile listing (which inflates times).

    python -m bench.hotpath [--requests N] [--profile] [--endpoints N] [--replicas N] [--per-turn N]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pathlib
import pstats
import tempfile
import time

import uvloop
import yaml

from inferfront.config import load_config
from inferfront.endpoints import Endpoints
from inferfront.proxy.client import ClientConnection
from inferfront.proxy.server import Proxy
from inferfront.proxy.upstream import UpstreamConnection


class MemoryTransport:
    """Collects what is written; enough of asyncio.Transport for the proxy's protocols."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class DiscardingTransport(MemoryTransport):
    """A replica's side: what the router sends it is dropped (its answers are fed directly)."""

    def write(self, data: bytes) -> None:
        pass


# What hey sends in `make bench`, and what the nginx model answers.
REQUEST = (
    b"POST /api/v1/endpoint/bench/score HTTP/1.1\r\nHost: 127.0.0.1:8282\r\n"
    b"User-Agent: hey/0.0.1\r\nContent-Length: 20\r\nContent-Type: application/json\r\n"
    b"Accept-Encoding: gzip\r\n\r\n" + b'{"data":[1,2,3,4,5]}'
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 22:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
    + b'{"ok":true,"n":1}'
)
REPLICA_PORT = 5603  # the first replica's (more replicas: the ports after it)
CONFIG = {
    "server": {"access_log": False},
    "endpoints": [
        {
            "name": "bench",
            "auth_mode": "none",
            "traffic": {"dep": 100},
            "deployments": [
                {
                    "name": "dep",
                    "urls": [f"http://127.0.0.1:{REPLICA_PORT}"],
                    "request_settings": {"max_concurrent_requests_per_instance": 1000},
                }
            ],
        }
    ],
}


def _config(endpoints: int) -> dict:
    """CONFIG with `endpoints` endpoints (bench-0, bench-1, ...) when more than one."""
    if endpoints == 1:
        return CONFIG
    template = CONFIG["endpoints"][0]
    return {
        **CONFIG,
        "endpoints": [{**template, "name": f"bench-{i}"} for i in range(endpoints)],
    }


async def measure(
    n: int, profile: bool, endpoints: int = 1, per_turn: int = 16, replicas: int = 1
) -> None:
    d = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    d.write_text(yaml.safe_dump(_config(endpoints)))
    config = load_config(d)
    table = Endpoints(list(config.endpoints))
    ports = range(REPLICA_PORT, REPLICA_PORT + replicas)
    for state in table.deployments():
        for port in ports:
            state.replica_added(f"r{port}", "127.0.0.1", port)
            state.replica_ready(f"r{port}", True)
    proxy = Proxy(table, config.server.limits, retries=2, access_log=None)
    # One kept connection per replica (endpoints share a replica's pool).
    for port in ports:
        pool = table.pools.by_address[f"127.0.0.1:{port}"]
        upstream = UpstreamConnection(pool)
        upstream.connection_made(DiscardingTransport())
        pool.idle.append(upstream)
    client, client_transport = ClientConnection(proxy), MemoryTransport()
    client.connection_made(client_transport)
    # With several endpoints, requests go to each in turn (as `make bench`'s endpoint rows do).
    requests = (
        [REQUEST]
        if endpoints == 1
        else [REQUEST.replace(b"/bench/", f"/bench-{i}/".encode()) for i in range(endpoints)]
    )

    exchanges = client.exchanges

    def one(i: int) -> None:
        client.data_received(requests[i % endpoints])
        exchanges[-1].upconn.data_received(ANSWER)  # the replica the request went to answers

    # Warm up, and check the path really answers 200.
    for i in range(max(1000, 3 * endpoints, 3 * replicas)):
        one(i)
    await asyncio.sleep(0)  # a loop turn: the proxy makes the writes it held
    assert client_transport.out[-1].startswith(b"HTTP/1.1 200"), client_transport.out[-1][:100]
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for first in range(0, n, per_turn):
        for i in range(first, min(first + per_turn, n)):
            one(i)
        await asyncio.sleep(0)  # the end of a loop turn: the held writes are made
        client_transport.out.clear()
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - started
    print(
        f"{elapsed / n * 1e6:.2f} us of Python per proxied request "
        f"({n:,} requests over {endpoints:,} endpoint(s) and {replicas:,} replica(s), "
        f"{per_turn} a loop turn, no sockets)"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--endpoints", type=int, default=1, help="spread requests over this many endpoints"
    )
    parser.add_argument(
        "--per-turn",
        type=int,
        default=16,
        help="requests handled per event-loop turn (16: about what a saturated router sees; "
        "1: light load, where each request pays for a turn's held writes alone)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="replicas per deployment, one kept connection each (the requests spread evenly)",
    )
    args = parser.parse_args()
    uvloop.run(measure(args.requests, args.profile, args.endpoints, args.per_turn, args.replicas))


if __name__ == "__main__":
    main()
