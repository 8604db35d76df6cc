"""How many readiness probes a server gets from many watches of it, shared or not.

1,000 deployments (or endpoints) listing one multi-model server each watch it; with shared
probes (what static replicas use) the server should see about one probe a second, and
`watches / period` a second without them. A benchmark, not a test: it takes about a minute.

    python -m bench.probes [--watches 1000] [--period 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

from inferfront.runtime.probes import ProbeSpec, ReadinessWatch

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def probes_per_second(watches: int, period: float, seconds: float, share: bool) -> float:
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
    watchers = [
        ReadinessWatch("127.0.0.1", port, spec, 0.1, lambda ready: None, share=share)
        for _ in range(watches)
    ]
    await asyncio.gather(*(w.probe_once() for w in watchers))  # as StaticRuntime.start does
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    await asyncio.sleep(period)  # past every watch's random first wait at the ready pace
    start = received
    await asyncio.sleep(seconds)
    counted = received - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    server.close()
    return counted / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=1000)
    parser.add_argument("--period", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    for share in (True, False):
        rate = uvloop.run(probes_per_second(args.watches, args.period, args.seconds, share))
        label = "shared" if share else "one per watch"
        print(f"{args.watches} watches of one server, {label}: {rate:.1f} probes/s")


if __name__ == "__main__":
    main()
