"""Replicas as local processes: start, probe, restart, scale and stop them for one deployment.

Decisions worth knowing:
- Start-up readiness ignores `readiness.initial_delay`: a new replica is probed every
  `startup_poll_s` from launch and takes traffic as soon as it answers `success_threshold` times
  (waiting the Azure default of 10 s would only delay scale-out). Not-ready replicas are probed
  at that pace throughout; ready ones every `readiness.period`.
- Liveness is probed every `liveness.period` after `liveness.initial_delay`; `failure_threshold`
  consecutive failures restart the replica: it is taken out of routing, killed (no drain: it is
  hung), removed, and replaced under a new name.
- A replica that exits on its own is removed and replaced after a backoff doubling from
  `restart_backoff[0]` to `restart_backoff[1]`; the streak resets once a replica becomes ready or
  stayed up over 30 s. A replica that exits within 2 s of launch without ever answering has most
  likely lost the race for its port: its first replacement starts at once on another port.
- Replacements waiting on backoff count toward the target, so `scale_to` never over-starts
  while a crash is being replaced, and scaling down cancels waiting replacements first.
- `scale_to` returns once new replicas are launched and surplus ones are marked draining; the
  drain (bounded by `drain_timeout_s`) and the stop continue in the background, and `stop`
  waits for them. A drain that times out stops the replica with requests still in flight.
- Signals go to the replica's whole process group (each replica leads its own session), so
  worker processes a model server forks stop with it.
- Replicas die with the router, even on SIGKILL (PR_SET_PDEATHSIG), and starting one must not
  stall the event loop. A `preexec_fn` setting that signal forces a fork() of the whole router
  whose child runs Python before exec while the parent waits; uvloop's own spawn (libuv) always
  fork()s and waits for the exec. Both stall the loop for a time that grows with the router's
  memory (measured: 14 ms per replica at 325 MB). So replicas are started with subprocess.Popen
  without a preexec_fn, which uses vfork() (well under 1 ms), as
  `setpriv --pdeathsig KILL -- /bin/sh -c GUARD inferfront-replica ROUTER_PID COMMAND...`;
  the exit is watched through a pidfd and the output read through a pipe on the loop. GUARD
  runs after the signal is set and exits unless the shell's parent is still the router: a
  router that died before that has already left the child re-parented, so no orphan runs the
  command. Without a setpriv that supports `--pdeathsig` (checked once), the preexec_fn is
  used, with the same check. The program is looked up before launching, so a missing one still
  raises FileNotFoundError from `start()`.
- `env` adds to (does not replace) the router's environment; PYTHONUNBUFFERED=1 is set unless
  given, so Python replicas' log lines arrive as they are written. `{host}` in an argument is
  replaced like `{port}`.
- `start()` raises OSError if a replica cannot be launched at all (bad command: a configuration
  error); later launches (scale-up, replacements) log the error and retry with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferfront.runtime.base import ReplicaEvents
from inferfront.runtime.logs import ReplicaLog
from inferfront.runtime.ports import pick_free_port
from inferfront.runtime.probe_client import probe_http
from inferfront.runtime.probes import (
    HealthTracker,
    ProbeSpec,
    ReadinessWatch,
    ReplicaInfo,
    ReplicaState,
)

STABLE_UPTIME_S = 30.0  # up this long: a crash starts the backoff over
QUICK_EXIT_S = 2.0  # exited this soon without answering: probably lost the race for its port
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
DRAIN_POLL_S = 0.05
OUTPUT_DRAIN_S = 1.0  # after exit, wait this long for the last log lines
_MAX_STREAK = 30  # keeps 2**streak finite
_PYTHON_ALIASES = frozenset({"python", "python3"})
_PR_SET_PDEATHSIG = 1
_SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
_SHELL = "/bin/sh"
# Run by /bin/sh after setpriv set the death signal: $1 is the router's pid. A different parent
# means the router died before the signal was set; the command must not run orphaned.
_PARENT_GUARD = 'test "$PPID" = "$1" || exit 1; shift; exec "$@"'
_STREAM_LIMIT = 64 * 1024  # longest log line kept


@dataclass(frozen=True)
class Lineage:
    """What a replacement inherits from the replica it replaces."""

    restarts: int = 0
    crash_streak: int = 0  # quick crashes in a row (drives the backoff)
    port_retry_used: bool = False
    last_port: int | None = None

    def after_ready(self) -> Lineage:
        return Lineage(self.restarts, 0, False, self.last_port)


def next_restart(
    lineage: Lineage,
    *,
    was_ready: bool,
    uptime: float,
    port: int | None,
    backoff: tuple[float, float],
) -> tuple[Lineage, float]:
    """The replacement's lineage and the delay before starting it (pure; no clock)."""
    streak, port_retry_used = lineage.crash_streak, lineage.port_retry_used
    if was_ready or uptime > STABLE_UPTIME_S:
        streak, port_retry_used = 0, False
    restarts = lineage.restarts + 1
    if not was_ready and uptime < QUICK_EXIT_S and not port_retry_used:
        return Lineage(restarts, streak, True, port), 0.0
    delay = min(backoff[0] * 2 ** min(streak, _MAX_STREAK), backoff[1])
    return Lineage(restarts, streak + 1, port_retry_used, port), delay


class _Replica:
    """One running replica process and everything watching it."""

    def __init__(
        self,
        name: str,
        port: int,
        process: _ReplicaProcess,
        exited: asyncio.Event,
        lineage: Lineage,
        launched_at: float,
    ) -> None:
        self.name = name
        self.port = port
        self.process = process
        self.exited = exited
        self.lineage = lineage
        self.launched_at = launched_at  # loop time
        self.started_at = time.time()  # wall clock, for people
        self.state: ReplicaState = "starting"
        self.ever_ready = False
        self.readiness: ReadinessWatch | None = None
        self.tasks: list[asyncio.Task[None]] = []  # probe loops; cancelled on teardown
        self.pump: asyncio.Task[None] | None = None
        self.teardown: asyncio.Task[None] | None = None  # set once we are stopping it
        self.drain_deadline = float("inf")  # loop time


class LocalProcessRuntime:
    """Runs the replicas of one deployment as child processes on this machine."""

    def __init__(
        self,
        deployment_name: str,
        command: Sequence[str],
        events: ReplicaEvents,
        *,
        env: Mapping[str, str] | None,
        cwd: Path,
        readiness: ProbeSpec,
        liveness: ProbeSpec,
        initial_replicas: int,
        log: logging.Logger,
        host: str = "127.0.0.1",
        startup_poll_s: float = 0.1,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        drain_timeout_s: float = 30.0,
    ) -> None:
        if not command:
            raise ValueError(f"deployment {deployment_name!r}: empty command")
        if initial_replicas < 0:
            raise ValueError("initial_replicas must not be negative")
        self.deployment_name = deployment_name
        self._command = list(command)
        self._events = events
        self._env = _child_env(env)
        self._cwd = cwd
        self._readiness = readiness
        self._liveness = liveness
        self._initial_replicas = initial_replicas
        self._log = log
        self.host = host
        self._startup_poll_s = startup_poll_s
        self._backoff = restart_backoff
        self._drain_timeout_s = drain_timeout_s
        self._replicas: dict[str, _Replica] = {}
        self._pending: set[asyncio.Task[None]] = set()  # replacements waiting on backoff
        self._tasks: set[asyncio.Task[Any]] = set()  # every background task, for stop()
        self._lock = asyncio.Lock()  # one launch/scale decision at a time
        self._next_index = 0
        self._started = False
        self._stopped = False
        self._stop_task: asyncio.Task[None] | None = None
        setpriv_with_pdeathsig()  # the one-time check, here rather than in the first launch

    # --- ReplicaRuntime -------------------------------------------------------------------

    async def start(self) -> None:
        """Launch the initial replicas (does not wait for readiness)."""
        async with self._lock:
            if self._started or self._stopped:
                raise RuntimeError(f"deployment {self.deployment_name!r}: runtime already started")
            self._started = True
            for _ in range(self._initial_replicas):
                await self._launch(Lineage())

    async def scale_to(self, count: int) -> None:
        """Converge on `count` replicas: launch more, or start draining surplus ones."""
        if count < 0:
            raise ValueError("replica count must not be negative")
        async with self._lock:
            if self._stopped:
                self._log.info(
                    "deployment %s: stopped, ignoring scale_to(%d)", self.deployment_name, count
                )
                return
            live = self._live()
            surplus = len(live) + len(self._pending) - count
            for _ in range(-surplus):
                await self._launch_or_retry(Lineage())
            if surplus > 0:
                surplus -= self._cancel_pending(surplus)
                deadline = asyncio.get_running_loop().time() + self._drain_timeout_s
                for replica in _pick_surplus(live, surplus, self._events.replica_inflight):
                    self._begin_teardown(replica, drain=True, deadline=deadline)

    async def stop(self, timeout: float) -> None:
        """Drain every replica (bounded by `timeout`), stop it, and wait for it to exit.
        Idempotent; no restarts afterwards. Takes at most `timeout` + 5 s (SIGKILL grace)."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop_all(timeout))
        await asyncio.shield(self._stop_task)

    def report_failure(self, name: str) -> None:
        """The proxy could not connect: out of routing until a readiness probe answers."""
        replica = self._replicas.get(name)
        if replica is None or replica.teardown is not None or replica.readiness is None:
            return
        if replica.readiness.report_failure():
            self._set_unready(replica, "the proxy reported connect failures")

    @property
    def current(self) -> int:
        return len(self._live())

    @property
    def starting(self) -> int:
        """Live replicas that have not been ready yet (unready-after-ready ones not counted)."""
        return sum(1 for r in self._live() if r.state == "starting")

    @property
    def target(self) -> int:
        """What the runtime converges on: live replicas plus replacements waiting on backoff."""
        return len(self._live()) + len(self._pending)

    def replicas(self) -> list[ReplicaInfo]:
        return [
            ReplicaInfo(
                r.name, self.host, r.port, r.process.pid, r.state, r.lineage.restarts, r.started_at
            )
            for r in self._replicas.values()
        ]

    # --- launching ------------------------------------------------------------------------

    async def _launch(self, lineage: Lineage) -> _Replica:
        name = f"{self.deployment_name}-{self._next_index}"
        self._next_index += 1
        avoid = {r.port for r in self._replicas.values()}
        if lineage.last_port is not None:
            avoid.add(lineage.last_port)
        port = pick_free_port(self.host, avoid)
        process, exited = await _spawn_process(self._argv(port), self._cwd, self._env)
        replica = _Replica(name, port, process, exited, lineage, asyncio.get_running_loop().time())
        self._replicas[name] = replica
        self._log_for(replica).info("started pid %d on port %d", process.pid, port)
        self._events.replica_added(name, self.host, port)
        replica.pump = self._spawn(self._pump_output(replica), f"{name}-output")
        self._spawn(self._watch_exit(replica), f"{name}-exit")
        replica.readiness = ReadinessWatch(
            self.host,
            port,
            self._readiness,
            self._startup_poll_s,
            on_change=lambda ready: self._readiness_changed(replica, ready),
        )
        replica.tasks = [
            self._spawn(replica.readiness.run(), f"{name}-readiness"),
            self._spawn(self._liveness_loop(replica), f"{name}-liveness"),
        ]
        return replica

    async def _launch_or_retry(self, lineage: Lineage) -> None:
        try:
            await self._launch(lineage)
        except OSError as exc:
            self._log.error("deployment %s: cannot launch a replica: %s", self.deployment_name, exc)
            self._schedule_replacement(
                lineage,
                was_ready=False,
                uptime=0.0,
                port=None,
                replacing="a replica that failed to launch",
            )

    def _argv(self, port: int) -> list[str]:
        argv = [a.replace("{port}", str(port)).replace("{host}", self.host) for a in self._command]
        if argv[0] in _PYTHON_ALIASES:
            argv[0] = sys.executable  # replicas run in the router's virtualenv
        return argv

    # --- watching -------------------------------------------------------------------------

    async def _pump_output(self, replica: _Replica) -> None:
        stream = replica.process.stdout
        try:
            log = self._log_for(replica)
            while line := await self._read_line(replica, stream):
                log.info("%s", line.decode("utf-8", "replace").rstrip("\r\n"))
        finally:  # end of output, or cancelled while a grandchild holds the pipe open
            replica.process.close_output()

    async def _read_line(self, replica: _Replica, stream: asyncio.StreamReader) -> bytes:
        while True:
            try:
                return await stream.readline()
            except ValueError:  # one line over the stream limit: dropped by the reader
                self._log_for(replica).warning("<overlong output line dropped>")

    async def _watch_exit(self, replica: _Replica) -> None:
        await replica.exited.wait()
        returncode = replica.process.returncode
        if replica.teardown is not None:
            return  # we stopped it; the teardown reports the removal
        uptime = asyncio.get_running_loop().time() - replica.launched_at
        self._log_for(replica).warning(
            "exited on its own (%s) after %.1f s", _describe_exit(returncode), uptime
        )
        _cancel_all(replica.tasks)
        self._forget(replica)
        self._replace(replica, uptime)

    def _readiness_changed(self, replica: _Replica, ready: bool) -> None:
        if replica.teardown is not None:
            return
        if ready:
            self._set_ready(replica)
        else:
            self._set_unready(
                replica,
                f"readiness probe failed {self._readiness.failure_threshold} times in a row",
            )

    def _set_ready(self, replica: _Replica) -> None:
        if replica.state == "starting":
            took = asyncio.get_running_loop().time() - replica.launched_at
            self._log_for(replica).info("ready after %.1f s", took)
        else:
            self._log_for(replica).info("ready again")
        replica.state = "ready"
        replica.ever_ready = True
        replica.lineage = replica.lineage.after_ready()
        self._events.replica_ready(replica.name, True)

    def _set_unready(self, replica: _Replica, reason: str) -> None:
        if replica.state != "ready":
            return  # never announced ready: nothing to take back
        self._log_for(replica).warning("unready: %s", reason)
        replica.state = "unready"
        self._events.replica_ready(replica.name, False)

    async def _liveness_loop(self, replica: _Replica) -> None:
        spec = self._liveness
        tracker = HealthTracker(spec, healthy=True)
        await asyncio.sleep(spec.initial_delay)
        while True:
            ok = await probe_http(self.host, replica.port, spec.path, spec.timeout)
            if tracker.observe(ok) is False:
                self._restart_unresponsive(replica)
                return
            await asyncio.sleep(spec.period)

    def _restart_unresponsive(self, replica: _Replica) -> None:
        if self._stopped or replica.teardown is not None:
            return
        self._log_for(replica).warning(
            "liveness probe failed %d times in a row: restarting", self._liveness.failure_threshold
        )
        uptime = asyncio.get_running_loop().time() - replica.launched_at
        self._begin_teardown(replica, drain=False, deadline=0.0)
        # Scheduled now, not after the kill, so the target count never dips.
        self._replace(replica, uptime)

    # --- replacing ------------------------------------------------------------------------

    def _replace(self, replica: _Replica, uptime: float) -> None:
        self._schedule_replacement(
            replica.lineage,
            was_ready=replica.ever_ready,
            uptime=uptime,
            port=replica.port,
            replacing=replica.name,
        )

    def _schedule_replacement(
        self,
        lineage: Lineage,
        *,
        was_ready: bool,
        uptime: float,
        port: int | None,
        replacing: str,
    ) -> None:
        if self._stopped:
            return
        successor, delay = next_restart(
            lineage, was_ready=was_ready, uptime=uptime, port=port, backoff=self._backoff
        )
        self._log.info(
            "deployment %s: replacing %s in %.2f s (restart %d)",
            self.deployment_name,
            replacing,
            delay,
            successor.restarts,
        )
        task = self._spawn(self._replace_after(delay, successor), "replacement")
        self._pending.add(task)

    async def _replace_after(self, delay: float, lineage: Lineage) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            await asyncio.sleep(delay)
            async with self._lock:
                if self._stopped or task not in self._pending:
                    return
                self._pending.discard(task)  # before launching: the launch counts it as live
                await self._launch_or_retry(lineage)
        finally:
            self._pending.discard(task)

    def _cancel_pending(self, at_most: int) -> int:
        """Cancel up to `at_most` waiting replacements; returns how many were cancelled."""
        cancelled = list(self._pending)[:at_most]
        for task in cancelled:
            self._pending.discard(task)
            task.cancel()
        return len(cancelled)

    # --- stopping -------------------------------------------------------------------------

    def _begin_teardown(self, replica: _Replica, *, drain: bool, deadline: float) -> None:
        """Out of routing now; the wait, the kill and the removal happen in a task."""
        _cancel_all(replica.tasks)
        replica.state = "draining"
        replica.drain_deadline = deadline
        replica.teardown = self._spawn(self._teardown(replica, drain), f"{replica.name}-stop")
        self._events.replica_draining(replica.name)

    async def _teardown(self, replica: _Replica, drain: bool) -> None:
        if drain:
            await self._wait_drained(replica)
        await self._terminate(replica)
        self._forget(replica)

    async def _wait_drained(self, replica: _Replica) -> None:
        loop = asyncio.get_running_loop()
        while replica.process.returncode is None:
            inflight = self._events.replica_inflight(replica.name)
            if inflight <= 0:
                return
            if loop.time() >= replica.drain_deadline:
                self._log_for(replica).warning(
                    "drain timed out with %d requests in flight; stopping anyway", inflight
                )
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def _terminate(self, replica: _Replica) -> None:
        process = replica.process
        _signal_group(process, signal.SIGTERM)
        try:
            async with asyncio.timeout(KILL_GRACE_S):
                await replica.exited.wait()
        except TimeoutError:
            self._log_for(replica).warning(
                "still running %.0f s after SIGTERM: SIGKILL", KILL_GRACE_S
            )
            _signal_group(process, signal.SIGKILL)
            await replica.exited.wait()
        self._log_for(replica).info("stopped (%s)", _describe_exit(process.returncode))
        if replica.pump is not None:
            # A grandchild holding the pipe open must not hold up the stop.
            _, still_reading = await asyncio.wait({replica.pump}, timeout=OUTPUT_DRAIN_S)
            _cancel_all(still_reading)

    async def _stop_all(self, timeout: float) -> None:
        self._stopped = True
        deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
        async with self._lock:  # a launch in progress finishes first, so it is stopped too
            self._cancel_pending(len(self._pending))
            for replica in list(self._replicas.values()):
                if replica.teardown is None:
                    self._begin_teardown(replica, drain=True, deadline=deadline)
                else:
                    replica.drain_deadline = min(replica.drain_deadline, deadline)
            teardowns = [r.teardown for r in self._replicas.values() if r.teardown is not None]
        await asyncio.gather(*teardowns, return_exceptions=True)
        leftovers = [t for t in self._tasks if t is not asyncio.current_task()]
        _cancel_all(leftovers)
        await asyncio.gather(*leftovers, return_exceptions=True)

    def _forget(self, replica: _Replica) -> None:
        if self._replicas.pop(replica.name, None) is not None:
            self._events.replica_removed(replica.name)

    # --- helpers --------------------------------------------------------------------------

    def _live(self) -> list[_Replica]:
        return [r for r in self._replicas.values() if r.teardown is None]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{self.deployment_name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(
                "deployment %s: task %s failed",
                self.deployment_name,
                task.get_name(),
                exc_info=task.exception(),
            )

    def _log_for(self, replica: _Replica) -> ReplicaLog:
        return ReplicaLog(self._log, self.deployment_name, replica.name)


class _ReplicaProcess:
    """A replica's process as the runtime needs it: pid, returncode, its output (stdout and
    stderr in one pipe) as a StreamReader, and an event set when it exits.

    Exit is watched apart from the output pipe, which a grandchild (a model server's worker)
    may hold open long after the replica itself exited.
    """

    def __init__(self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader) -> None:
        self._popen = popen
        self.stdout = stdout
        self.exited = asyncio.Event()
        self._output: asyncio.BaseTransport | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode  # set once reaped, just before `exited`

    def send_signal(self, sig: signal.Signals) -> None:
        self._popen.send_signal(sig)  # a no-op once reaped

    def close_output(self) -> None:
        if self._output is not None:
            self._output.close()

    async def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the output pipe on the loop and watch for the exit."""
        pipe = self._popen.stdout
        assert pipe is not None
        self._output, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self.stdout, loop=loop), pipe
        )
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits instead
            threading.Thread(
                target=self._wait_in_thread, args=(loop,), name=f"wait-{self.pid}", daemon=True
            ).start()
            return
        loop.add_reader(pidfd, self._reap, loop, pidfd)

    def _reap(self, loop: asyncio.AbstractEventLoop, pidfd: int) -> None:
        """The pidfd is readable: the process has exited; reaping it does not block."""
        loop.remove_reader(pidfd)
        os.close(pidfd)
        self._popen.wait()
        self.exited.set()

    def _wait_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(self.exited.set)


async def _spawn_process(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> tuple[_ReplicaProcess, asyncio.Event]:
    """Start a replica that dies with the router (see the module docstring).

    subprocess.Popen rather than loop.subprocess_exec: uvloop spawns through libuv, which
    always fork()s and waits for the child's exec, a stall that grows with the router's
    memory; Popen without a preexec_fn uses vfork(), whatever the loop.
    """
    loop = asyncio.get_running_loop()
    launch, preexec_fn = _dying_with_router(argv, cwd, env, os.getpid())
    popen = subprocess.Popen(
        launch,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,  # a Ctrl-C to the router's terminal must not reach replicas
        preexec_fn=preexec_fn,
    )
    process = _ReplicaProcess(popen, asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop))
    try:
        await process.attach(loop)
    except BaseException:
        _kill_unwatched(popen)
        raise
    return process, process.exited


def _kill_unwatched(popen: subprocess.Popen[bytes]) -> None:
    """A process we failed to watch must not outlive the launch."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()
    if popen.stdout is not None:
        popen.stdout.close()


def _dying_with_router(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], router_pid: int
) -> tuple[list[str], Callable[[], None] | None]:
    """The argv to launch and the preexec_fn (None where setpriv does the job)."""
    setpriv = setpriv_with_pdeathsig()
    if setpriv is None:
        return list(argv), _die_with_parent(router_pid)
    _check_executable(argv[0], cwd, env)  # sh would only exit 127: fail here, like exec does
    guard = [_SHELL, "-c", _PARENT_GUARD, "inferfront-replica", str(router_pid)]
    return [setpriv, "--pdeathsig", "KILL", "--", *guard, *argv], None


@functools.cache
def setpriv_with_pdeathsig() -> str | None:
    """setpriv's path if it can launch through the parent guard here, else None.

    Checked once per process by running the whole chain on a no-op (a few ms, blocking: the
    first runtime calls it from its constructor, before any traffic).
    """
    if not sys.platform.startswith("linux") or not os.access(_SHELL, os.X_OK):
        return None
    for path in _SETPRIV_PATHS:
        if not os.access(path, os.X_OK):
            continue
        guard = [_SHELL, "-c", _PARENT_GUARD, "inferfront-replica", str(os.getpid())]
        try:
            done = subprocess.run(
                [path, "--pdeathsig", "KILL", "--", *guard, _SHELL, "-c", "exit 0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:  # an old setpriv rejects the option and exits 1
            return path
    return None


def _check_executable(program: str, cwd: Path | None, env: Mapping[str, str]) -> None:
    """Raise what exec would for a program that cannot run (found as execvp looks it up)."""
    if os.sep in program:
        path = os.path.join(cwd or os.getcwd(), program)  # an absolute program ignores cwd
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _pick_surplus(
    live: Sequence[_Replica], count: int, inflight: Callable[[str], int]
) -> list[_Replica]:
    """Replicas to stop: not ready (starting or unready) first, then the least busy; among
    equals the newest, which has the least warm state to lose."""
    if count <= 0:
        return []
    ranked = sorted(live, key=lambda r: (r.state == "ready", inflight(r.name), -r.launched_at))
    return ranked[:count]


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def _cancel_all(tasks: Sequence[asyncio.Task[Any]] | set[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()


def _signal_group(process: _ReplicaProcess, sig: signal.Signals) -> None:
    if process.returncode is not None:
        return  # reaped: its pid (and group id) may belong to someone else now
    try:
        os.killpg(process.pid, sig)  # the replica leads its own session and group
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the router: the forked child must not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(router_pid: int) -> Callable[[], None] | None:
    """A preexec_fn making the kernel SIGKILL the replica when the router dies (even by -9):
    the fallback where setpriv cannot do it (see the module docstring).

    The signal follows the *thread* that forked the child, which is the event loop's thread
    (with setpriv too: the death signal is the child's, the parent the forking thread).
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != router_pid:  # the router died before prctl took effect
            os._exit(1)

    return set_parent_death_signal
