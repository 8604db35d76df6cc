"""A front-end stand-in for the membership tests: joins a state directory and elects keys.

    python -m tests.cluster_member --state-dir D --id m0 --keys ep/d0,ep/d1 [--wait-members 3]

Prints one JSON object per line (flushed), `t` being time.monotonic() (one clock for every
process on the machine, so the test can measure failover across processes):

    {"event": "joined", "id": ..., "t": ...}
    {"event": "gain" | "loss", "key": ..., "t": ...}
    {"event": "settled", "t": ...}       after SETTLE_TICKS election ticks

Before electing it waits (up to --wait-timeout) to see --wait-members live members, so that
instances started together split the keys instead of the first one taking them all. SIGTERM
resigns every lease and leaves; the process also exits when its parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

from inferfront.cluster import Elector, LocalMembership, Member

SETTLE_TICKS = 5
PARENT_POLL_S = 0.5


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def wait_for_members(membership: LocalMembership, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(membership.members()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        await membership.refresh()


async def watch_parent(stop: asyncio.Event) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_POLL_S)
    stop.set()


async def elect(args: argparse.Namespace) -> None:
    member = Member(args.id, f"127.0.0.1:{args.port}", time.time())
    membership = LocalMembership(Path(args.state_dir), member)
    await membership.join()
    emit("joined", id=args.id, pid=os.getpid())
    await wait_for_members(membership, args.wait_members, args.wait_timeout)
    elector = Elector(
        membership,
        args.keys.split(","),
        on_gain=lambda key: emit("gain", key=key),
        on_loss=lambda key: emit("loss", key=key),
        grace_s=args.grace,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = loop.create_task(watch_parent(stop))
    ticks = 0
    while not stop.is_set():
        await elector.tick()
        ticks += 1
        if ticks == SETTLE_TICKS:
            emit("settled")
        # Pacing, not synchronisation: the election period, cut short by a stop request.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.interval)
    watcher.cancel()
    await elector.resign()
    await membership.leave()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--keys", required=True, help="comma-separated lease keys")
    parser.add_argument("--port", type=int, default=0, help="advertised only, never bound")
    parser.add_argument("--interval", type=float, default=0.2, help="election tick, seconds")
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--wait-members", type=int, default=1)
    parser.add_argument("--wait-timeout", type=float, default=10.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(elect(parse_args(argv)))


if __name__ == "__main__":
    main()
