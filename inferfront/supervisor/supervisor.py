"""The supervising parent of `inferfront serve --workers N`.

It owns the replicas (the runtimes run here, so replicas outlive any front-end worker), streams
their events to the workers over the channel (channel.py), applies what workers ask for
(scale_to, report_failure), and keeps N worker processes alive.

Decisions worth knowing:
- A worker that exits while the supervisor is not stopping is restarted: at once after a worker
  that ran `STABLE_UPTIME_S`, else after a backoff doubling from `restart_backoff[0]` to
  `restart_backoff[1]` (a worker that cannot start must not spin).
- Workers lead their own session (a Ctrl-C on the terminal reaches only the supervisor, which
  then stops them in order) and get PR_SET_PDEATHSIG=SIGKILL, like replicas: a SIGKILLed
  supervisor leaves no process behind.
- Stopping: SIGTERM the workers, wait for them (bounded by drain_timeout_s + 5 s, then SIGKILL),
  and only then stop the runtimes, so no worker ever forwards to a replica being stopped.
- Drain-before-stop counts requests in flight across workers: each worker reports its count for
  a draining replica. A worker that has not reported since the replica turned draining counts as
  busy (1), so a drain never ends before every connected worker has answered; a worker's counts
  vanish with its connection. The drain stays bounded by the runtime's drain deadline.
- `scale_to` requests coalesce per deployment: one is applied at a time and the latest pending
  count is applied next; a request carrying "seq" is answered ("scaled") once a count at least
  as recent as it has been applied, after the events that application caused.
- A worker whose connection cannot keep up (`MAX_BUFFERED_BYTES` unsent) is disconnected; it
  reconnects and reconciles from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Private helpers reused on purpose: workers must die with the supervisor exactly as replicas do.
from inferfront.runtime.local import _describe_exit, _die_with_parent
from inferfront.supervisor import channel
from inferfront.supervisor.channel import ReplicaRecord

if TYPE_CHECKING:
    from inferfront.config import Config
    from inferfront.runtime.base import ReplicaRuntime

log = logging.getLogger("inferfront.supervisor")

STABLE_UPTIME_S = 10.0  # a worker up this long: its next exit restarts it at once
STOP_GRACE_S = 5.0  # beyond drain_timeout_s, before workers get SIGKILL
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
_MAX_STREAK = 30
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def next_worker_restart(
    streak: int, uptime: float, backoff: tuple[float, float]
) -> tuple[int, float]:
    """(new streak, delay before restarting) after a worker exited (pure; no clock)."""
    if uptime >= STABLE_UPTIME_S:
        streak = 0
    if streak == 0:
        return 1, 0.0
    delay = min(backoff[0] * 2 ** min(streak - 1, _MAX_STREAK), backoff[1])
    return streak + 1, delay


class DeploymentEvents:
    """The supervisor's side of `ReplicaEvents` for one deployment: records each replica's state
    and broadcasts every change to the workers. `endpoint` and `name` are what `make_runtime`
    reads from the object it is given."""

    def __init__(self, supervisor: Supervisor, endpoint: str, name: str) -> None:
        self.supervisor = supervisor
        self.endpoint = endpoint
        self.name = name
        self.key = channel.deployment_key(endpoint, name)
        self.records: dict[str, ReplicaRecord] = {}

    def replica_added(self, name: str, host: str, port: int) -> None:
        self.records[name] = ReplicaRecord(name, host, port)
        self.supervisor._broadcast(channel.added(self.key, name, host, port))

    def replica_ready(self, name: str, ready: bool) -> None:
        record = self.records.get(name)
        if record is None or record.draining:
            return
        record.ready = ready
        self.supervisor._broadcast(channel.ready(self.key, name, ready))

    def replica_draining(self, name: str) -> None:
        record = self.records.get(name)
        if record is None or record.draining:
            return
        record.draining = True
        self.supervisor._expect_inflight_reports(self.key, name)
        self.supervisor._broadcast(channel.draining(self.key, name))

    def replica_inflight(self, name: str) -> int:
        return self.supervisor.replica_inflight(self.key, name)

    def replica_removed(self, name: str) -> None:
        if self.records.pop(name, None) is None:
            return
        self.supervisor._forget_inflight(self.key, name)
        self.supervisor._broadcast(channel.removed(self.key, name))


class _WorkerConnection:
    """One connected worker: where events go, and its in-flight counts."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int | None) -> None:
        self.writer = writer
        self.pid = pid
        self.inflight: dict[tuple[str, str], int] = {}
        self.awaiting: set[tuple[str, str]] = set()  # draining replicas it has not reported on
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.writer.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            log.warning(
                "worker pid %s does not keep up with replica events: disconnecting", self.pid
            )
            self.close()
            return
        self.writer.write(data)

    def close(self) -> None:
        self.closed = True
        self.writer.close()


@dataclass
class _WorkerSlot:
    """Worker `index`: its current process and history."""

    index: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    streak: int = 0
    started_at: float = 0.0  # wall clock, for people
    launched_at: float = 0.0  # loop time
    last_exit: str | None = None
    task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class _ScaleQueue:
    """Pending scale_to requests of one deployment: only the latest count matters."""

    count: int | None = None
    answer_to: list[tuple[_WorkerConnection, int]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Supervisor:
    """Runs the replica runtimes and `workers` front-end worker processes."""

    def __init__(
        self,
        config: Config,
        *,
        workers: int,
        state_dir: Path,
        worker_argv: Callable[[int], list[str]],
        restart_backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config = config
        self.state_dir = Path(state_dir)
        self.socket_path = channel.socket_path(self.state_dir)
        self.drain_timeout_s = config.server.drain_timeout_s
        self._worker_argv = worker_argv
        self._backoff = restart_backoff
        self._slots = [_WorkerSlot(index) for index in range(workers)]
        self.events: dict[str, DeploymentEvents] = {}
        self.runtimes: dict[str, ReplicaRuntime] = {}
        self._connections: set[_WorkerConnection] = set()
        self._scale_queues: dict[str, _ScaleQueue] = {}
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None

    # --- public ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the socket, start the replica runtimes, then spawn the workers. Raises
        (after stopping whatever it started) if a runtime or a worker cannot start."""
        try:
            await self._listen()
            await self._start_runtimes()
            for slot in self._slots:
                await self._spawn(slot)
        except BaseException:
            await self.stop()
            raise
        for slot in self._slots:
            slot.task = asyncio.create_task(self._supervise(slot), name=f"worker-{slot.index}")

    def request_stop(self) -> None:
        """Ask `run_until_stopped` to stop (safe from a signal handler)."""
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        """Stop on SIGTERM or SIGINT (or `request_stop()`), then return once all is stopped."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def stop(self) -> None:
        """Stop the workers, then the replicas, then the socket. Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop_all())
        await asyncio.shield(self._stop_task)

    def workers_info(self) -> list[dict[str, Any]]:
        """One entry per worker index, for /admin/v1/cluster."""
        connected = {conn.pid for conn in self._connections if not conn.closed}
        return [
            {
                "index": slot.index,
                "pid": slot.process.pid if slot.process is not None else None,
                "restarts": slot.restarts,
                "started_at": slot.started_at,
                "alive": slot.alive,
                "connected": slot.alive and _pid(slot) in connected,
                "last_exit": slot.last_exit,
            }
            for slot in self._slots
        ]

    def replica_states(self) -> dict[str, list[dict[str, Any]]]:
        """Every replica per deployment key: the channel's record, plus pid, state, restarts and
        started_at where the runtime knows them, plus in-flight requests over all workers."""
        states: dict[str, list[dict[str, Any]]] = {}
        for key, events in self.events.items():
            infos = _runtime_infos(self.runtimes.get(key))
            states[key] = [
                {
                    **record.to_wire(),
                    **infos.get(record.name, {}),
                    "inflight": self.replica_inflight(key, record.name),
                }
                for record in events.records.values()
            ]
        return states

    def replica_inflight(self, key: str, name: str) -> int:
        """Requests in flight on a replica over every connected worker (at least 1 while a
        worker still owes its report on a draining replica)."""
        replica = (key, name)
        total = 0
        owed = False
        for conn in self._connections:
            total += conn.inflight.get(replica, 0)
            owed = owed or replica in conn.awaiting
        return max(total, 1) if owed else total

    # --- starting -------------------------------------------------------------------------

    async def _listen(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await _remove_stale_socket(self.socket_path)
        self._server = await asyncio.start_unix_server(
            self._serve_worker, path=str(self.socket_path), limit=channel.REQUEST_LINE_LIMIT
        )
        os.chmod(self.socket_path, 0o600)  # only this user's processes may join

    async def _start_runtimes(self) -> None:
        # Imported here: the app module will import this package to run in supervisor mode.
        from inferfront.app import make_runtime

        for endpoint in self.config.endpoints:
            for deployment in endpoint.deployments:
                events = DeploymentEvents(self, endpoint.name, deployment.name)
                self.events[events.key] = events
                self.runtimes[events.key] = make_runtime(deployment, events, self.drain_timeout_s)
        await asyncio.gather(*(runtime.start() for runtime in self.runtimes.values()))

    # --- the channel ----------------------------------------------------------------------

    async def _serve_worker(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _WorkerConnection(writer, _peer_pid(writer))
        try:
            if self._stop_task is not None:
                return
            # Snapshot and registration in one step, so no event falls between them.
            conn.send(channel.encode(self._snapshot()))
            self._connections.add(conn)
            for key, events in self.events.items():
                conn.awaiting.update((key, r.name) for r in events.records.values() if r.draining)
            log.info("worker pid %s connected", conn.pid)
            await self._read_requests(reader, conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(conn)
            conn.close()
            self._handlers.discard(task)
            log.info("worker pid %s disconnected", conn.pid)

    async def _read_requests(self, reader: asyncio.StreamReader, conn: _WorkerConnection) -> None:
        while not conn.closed:
            try:
                message = await channel.read_message(reader)
            except (channel.ChannelError, ValueError) as exc:
                log.warning("worker pid %s: ignoring a bad message: %s", conn.pid, exc)
                continue
            if message is None:
                return
            try:
                self._apply(conn, message)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("worker pid %s: ignoring %r: %s", conn.pid, message, exc)

    def _apply(self, conn: _WorkerConnection, message: channel.Message) -> None:
        kind = message["type"]
        key = str(message["deployment"])
        runtime = self.runtimes.get(key)
        if runtime is None:
            raise KeyError(f"unknown deployment {key!r}")
        if kind == "inflight":
            replica = (key, str(message["name"]))
            conn.inflight[replica] = max(int(message["count"]), 0)
            conn.awaiting.discard(replica)
        elif kind == "report_failure":
            runtime.report_failure(str(message["name"]))
        elif kind == "scale_to":
            seq = message.get("seq")
            self._queue_scale(key, int(message["count"]), conn, None if seq is None else int(seq))
        else:
            raise ValueError(f"unknown message type {kind!r}")

    def _snapshot(self) -> channel.Message:
        return channel.snapshot(
            {key: list(events.records.values()) for key, events in self.events.items()}
        )

    def _broadcast(self, message: channel.Message) -> None:
        data = channel.encode(message)
        for conn in list(self._connections):
            conn.send(data)

    def _expect_inflight_reports(self, key: str, name: str) -> None:
        for conn in self._connections:
            conn.awaiting.add((key, name))

    def _forget_inflight(self, key: str, name: str) -> None:
        for conn in self._connections:
            conn.inflight.pop((key, name), None)
            conn.awaiting.discard((key, name))

    # --- scaling --------------------------------------------------------------------------

    def _queue_scale(self, key: str, count: int, conn: _WorkerConnection, seq: int | None) -> None:
        if count < 0:
            raise ValueError("replica count must not be negative")
        queue = self._scale_queues.setdefault(key, _ScaleQueue())
        queue.count = count
        if seq is not None:
            queue.answer_to.append((conn, seq))
        if queue.task is None or queue.task.done():
            queue.task = asyncio.create_task(self._apply_scales(key, queue), name=f"scale-{key}")

    async def _apply_scales(self, key: str, queue: _ScaleQueue) -> None:
        runtime = self.runtimes[key]
        while queue.count is not None and self._stop_task is None:
            count, answer_to = queue.count, queue.answer_to
            queue.count, queue.answer_to = None, []
            log.info("deployment %s: scale to %d (asked by a worker)", key, count)
            try:
                await runtime.scale_to(count)
            except Exception:
                log.exception("deployment %s: scale_to(%d) failed", key, count)
            for conn, seq in answer_to:
                conn.send(channel.encode(channel.scaled(key, count, seq)))

    # --- workers --------------------------------------------------------------------------

    async def _spawn(self, slot: _WorkerSlot) -> None:
        argv = self._worker_argv(slot.index)
        slot.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches only the supervisor, which stops in order
            preexec_fn=_die_with_parent(os.getpid()),
        )
        slot.started_at = time.time()
        slot.launched_at = asyncio.get_running_loop().time()
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    async def _supervise(self, slot: _WorkerSlot) -> None:
        """Wait for the worker to exit; restart it unless the supervisor is stopping."""
        loop = asyncio.get_running_loop()
        while True:
            if slot.process is not None:
                if self._stop_task is not None:
                    _signal(slot.process, signal.SIGTERM)  # spawned while stop began
                returncode = await slot.process.wait()
                slot.last_exit = _describe_exit(returncode)
                uptime = loop.time() - slot.launched_at
            else:
                uptime = 0.0
            if self._stop_task is not None:
                return
            slot.streak, delay = next_worker_restart(slot.streak, uptime, self._backoff)
            log.warning(
                "worker %d exited (%s) after %.1f s: restarting in %.2f s",
                slot.index,
                slot.last_exit,
                uptime,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stop_task is not None or self._stopping.is_set():
                return
            slot.restarts += 1
            try:
                await self._spawn(slot)
            except OSError as exc:
                log.error("worker %d: cannot start: %s", slot.index, exc)
                slot.process = None
                slot.last_exit = f"cannot start: {exc}"

    # --- stopping -------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        self._stopping.set()
        await self._stop_workers(self.drain_timeout_s + STOP_GRACE_S)
        # Let a scale_to in progress finish (never cancel a launch half-way: its process could
        # escape); the loop applies nothing more once stopping.
        scaling = [q.task for q in self._scale_queues.values() if q.task is not None]
        await asyncio.gather(*scaling, return_exceptions=True)
        runtimes = list(self.runtimes.values())
        results = await asyncio.gather(
            *(runtime.stop(self.drain_timeout_s) for runtime in runtimes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.error("stopping a runtime failed: %r", result)
        await self._close_channel()

    async def _stop_workers(self, timeout: float) -> None:
        waits: list[asyncio.Future[Any]] = []
        for slot in self._slots:
            if slot.process is not None:
                _signal(slot.process, signal.SIGTERM)
            if slot.task is not None:
                waits.append(slot.task)
            elif slot.process is not None:  # start() failed before supervising began
                waits.append(asyncio.ensure_future(slot.process.wait()))
        if waits:
            _, late = await asyncio.wait(waits, timeout=timeout)
            if late:
                log.warning(
                    "%d worker(s) still running %.0f s after SIGTERM: SIGKILL", len(late), timeout
                )
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                _signal(slot.process, signal.SIGKILL)
                await slot.process.wait()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _close_channel(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is None:
            return  # never listened: the socket file, if any, is not ours
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self.socket_path.unlink(missing_ok=True)


async def run_supervisor(
    config: Config,
    *,
    workers: int,
    state_dir: Path,
    worker_argv: Callable[[int], list[str]],
    announce: Callable[[str], None] | None = None,
    on_started: Callable[[Supervisor], Awaitable[None]] | None = None,
) -> None:
    """The whole life of a supervisor: start, wait for SIGTERM/SIGINT, stop. Signals are
    handled from the start, so one arriving during start-up still stops everything in order.
    `on_started(supervisor)` runs once everything is up (e.g. to serve its admin view)."""
    supervisor = Supervisor(config, workers=workers, state_dir=state_dir, worker_argv=worker_argv)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    try:
        await supervisor.start()
        if on_started is not None:
            await on_started(supervisor)
        if announce is not None:
            pids = ", ".join(str(w["pid"]) for w in supervisor.workers_info())
            announce(f"inferfront: supervising {workers} workers (pids {pids})")
        await supervisor.run_until_stopped()
    finally:
        await supervisor.stop()


# --- helpers ------------------------------------------------------------------------------


async def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead supervisor; refuse to take over a live one's."""
    if not path.exists():
        return
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    writer.close()
    raise RuntimeError(f"another supervisor is running on {path}")


def _peer_pid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        pid, _, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except (AttributeError, OSError, struct.error):
        return None
    return pid


def _runtime_infos(runtime: object) -> dict[str, dict[str, Any]]:
    replicas = getattr(runtime, "replicas", None)
    if replicas is None:
        return {}
    return {
        info.name: {
            "pid": info.pid,
            "state": info.state,
            "restarts": info.restarts,
            "started_at": info.started_at,
        }
        for info in replicas()
    }


def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def _pid(slot: _WorkerSlot) -> int | None:
    return slot.process.pid if slot.process is not None else None
