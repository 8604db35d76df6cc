"""A supervisor and a tiny front-end worker for the supervisor's integration tests.

    python -m tests.servers.supervised supervise --config C --state-dir D --workers N
    python -m tests.servers.supervised worker --state-dir D --index I --deployment KEY ...

`supervise` runs `run_supervisor` (the code path `inferfront serve --workers N` uses) with
workers that are this module's `worker`. A worker applies replica events through a
`SupervisorLink` to recorder objects and prints each callback as a JSON line on stdout:
{"worker", "pid", "event", ...}. Both listen for test commands (one JSON line in, one out) on
`<state_dir>/ctl-sup.sock` and `<state_dir>/ctl-w<index>.sock`:

  supervisor: {"op": "workers"} -> {"workers": [...]}, {"op": "replicas"} -> {"replicas": {...}}
  worker:     {"op": "state"} -> {"replicas", "runtimes"}, {"op": "scale_to", "deployment",
              "count"} -> {"ok"}, {"op": "set_inflight", "deployment", "name", "count"},
              {"op": "report_failure", "deployment", "name"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from inferfront.config import load_config
from inferfront.supervisor import RemoteRuntime, Supervisor, SupervisorLink, run_supervisor

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def emit(**fields: Any) -> None:
    """One JSON line on stdout, written at once (lines from several workers share the pipe)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def serve_control(path: Path, handle: Handler) -> asyncio.AbstractServer:
    path.unlink(missing_ok=True)  # left by a killed predecessor

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await handle(json.loads(line))
                except Exception as exc:
                    answer = {"error": repr(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(session, path=str(path))


# --- supervisor ---------------------------------------------------------------------------


async def supervise(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    state_dir = Path(args.state_dir)
    keys = [f"{e.name}/{d.name}" for e in config.endpoints for d in e.deployments]

    def worker_argv(index: int) -> list[str]:
        deployments = [arg for key in keys for arg in ("--deployment", key)]
        return [sys.executable, "-m", "tests.servers.supervised", "worker",
                "--state-dir", str(state_dir), "--index", str(index), *deployments]  # fmt: skip

    async def handle(request: dict[str, Any], supervisor: Supervisor) -> dict[str, Any]:
        if request["op"] == "workers":
            return {"workers": supervisor.workers_info()}
        if request["op"] == "replicas":
            return {"replicas": supervisor.replica_states()}
        raise ValueError(f"unknown op {request['op']!r}")

    servers: list[asyncio.AbstractServer] = []  # referenced: a collected server closes

    async def started(supervisor: Supervisor) -> None:
        control = await serve_control(state_dir / "ctl-sup.sock", lambda r: handle(r, supervisor))
        servers.append(control)
        emit(event="supervisor_started", pid=os.getpid())

    await run_supervisor(
        config,
        workers=args.workers,
        state_dir=state_dir,
        worker_argv=worker_argv,
        on_started=started,
    )
    emit(event="supervisor_stopped", pid=os.getpid())


# --- worker -------------------------------------------------------------------------------


class Recorder:
    """Stands in for a worker's DeploymentState: prints each callback, serves set in-flight
    counts (what the link reports for draining replicas)."""

    def __init__(self, index: int, key: str) -> None:
        self.index = index
        self.key = key
        self.inflight: dict[str, int] = {}

    def _emit(self, event: str, **fields: Any) -> None:
        emit(worker=self.index, pid=os.getpid(), event=event, deployment=self.key, **fields)

    def replica_added(self, name: str, host: str, port: int) -> None:
        self._emit("added", name=name, host=host, port=port)

    def replica_ready(self, name: str, ready: bool) -> None:
        self._emit("ready", name=name, ready=ready)

    def replica_draining(self, name: str) -> None:
        self._emit("draining", name=name)

    def replica_inflight(self, name: str) -> int:
        return self.inflight.get(name, 0)

    def replica_removed(self, name: str) -> None:
        self._emit("removed", name=name)


async def work(args: argparse.Namespace) -> None:
    index = args.index
    recorders = {key: Recorder(index, key) for key in args.deployment}
    link: SupervisorLink

    def snapshot_applied() -> None:
        emit(worker=index, pid=os.getpid(), event="snapshot", replicas=replica_view(link))

    link = SupervisorLink(args.state_dir, recorders, on_snapshot=snapshot_applied)
    runtimes = {key: RemoteRuntime(link, key) for key in recorders}

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "state":
            counts = {
                k: {"current": r.current, "starting": r.starting} for k, r in runtimes.items()
            }
            return {"replicas": replica_view(link), "runtimes": counts}
        key = request["deployment"]
        if op == "scale_to":
            return {"ok": await link.scale_to(key, int(request["count"]))}
        if op == "set_inflight":
            recorders[key].inflight[request["name"]] = int(request["count"])
            return {"ok": True}
        if op == "report_failure":
            runtimes[key].report_failure(request["name"])
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await link.connect()
    control = await serve_control(Path(args.state_dir) / f"ctl-w{index}.sock", handle)
    await stop.wait()
    emit(worker=index, pid=os.getpid(), event="stopping")
    control.close()
    await link.close()


def replica_view(link: SupervisorLink) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        key: {name: record.to_wire() for name, record in records.items()}
        for key, records in link.replicas.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sup = commands.add_parser("supervise")
    sup.add_argument("--config", required=True)
    sup.add_argument("--state-dir", required=True)
    sup.add_argument("--workers", type=int, default=2)
    sup.set_defaults(run=supervise)
    worker = commands.add_parser("worker")
    worker.add_argument("--state-dir", required=True)
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--deployment", action="append", default=[])
    worker.set_defaults(run=work)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {args.command} %(process)d %(levelname)s %(name)s: %(message)s",
    )
    import uvloop

    uvloop.run(args.run(args))


if __name__ == "__main__":
    main()
