"""The supervisor and its replica-event channel, with real processes on real sockets.

Most tests run `python -m tests.servers.supervised supervise` (the code path of
`inferfront serve --workers N`) with 2 workers and a command deployment of 2 model-server
replicas, read what the workers print, and ask the supervisor and the workers for their state
over their control sockets. One test plays the supervisor's side of the protocol itself, to
drive a worker's link through a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inferfront.config import Config
from inferfront.supervisor import RemoteRuntime, Supervisor, SupervisorLink, channel
from inferfront.supervisor.supervisor import next_worker_restart
from tests.helpers import REPO_ROOT, async_wait_until, free_port, wait_until

KEY = "sup-test/blue"
MODEL_SERVER = ["python", "-m", "tests.servers.model_server", "--port", "{port}", "--name"]
SUPERVISE = [sys.executable, "-m", "tests.servers.supervised", "supervise"]
WAIT = 20.0  # deadline for conditions polled below (never a sleep)
STOP_WAIT = 30.0


# --- processes ----------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    """Exited (a zombie counts: it runs nothing, and its parent may be a non-reaping init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def pids_running_with(token: str) -> list[int]:
    """Live processes whose command line contains `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if token.encode() in (entry / "cmdline").read_bytes():
                pid = int(entry.name)
                if not process_gone(pid):
                    found.append(pid)
    return found


class Cluster:
    """A supervisor process with its workers and replicas."""

    def __init__(self, workers: int, replicas: int, drain_timeout_s: float) -> None:
        self.worker_count = workers
        self.token = uuid.uuid4().hex[:12]  # in every replica's command line: finds orphans
        # Short, so the unix socket paths fit in sun_path whatever pytest's tmp_path would be.
        self.state_dir = Path(tempfile.mkdtemp(prefix="ifsv-", dir="/tmp"))
        config = self.state_dir / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "server": {"drain_timeout_s": drain_timeout_s},
                    "endpoints": [
                        {
                            "name": "sup-test",
                            "auth_mode": "none",
                            "deployments": [
                                {
                                    "name": "blue",
                                    "command": [*MODEL_SERVER, f"r{self.token}"],
                                    "cwd": str(REPO_ROOT),
                                    "instance_count": replicas,
                                }
                            ],
                        }
                    ],
                }
            )
        )
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [
                *SUPERVISE,
                *("--config", str(config), "--state-dir", str(self.state_dir)),
                *("--workers", str(workers)),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                with self._lock:
                    self.lines.append(line)

    def printed(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self.lines if predicate(line)]

    # --- control sockets ---

    def ask(self, who: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request on `ctl-<who>.sock` ("sup", "w0", "w1")."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(self.state_dir / f"ctl-{who}.sock"))
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError(f"ctl-{who} closed without answering")
                answer += data
        reply = json.loads(answer)
        assert "error" not in reply, reply
        return reply

    def try_ask(self, who: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """`ask`, or None while that process is not listening (yet, or any more)."""
        try:
            return self.ask(who, request)
        except (FileNotFoundError, ConnectionRefusedError):
            return None

    def replicas(self) -> dict[str, dict[str, Any]]:
        """The supervisor's replicas of the test deployment, by name."""
        reply = self.ask("sup", {"op": "replicas"})
        return {r["name"]: r for r in reply["replicas"][KEY]}

    def workers(self) -> list[dict[str, Any]]:
        return self.ask("sup", {"op": "workers"})["workers"]

    def worker_view(self, index: int) -> dict[str, Any] | None:
        """{"replicas": {name: record}, "current", "starting"} as worker `index` sees it."""
        reply = self.try_ask(f"w{index}", {"op": "state"})
        if reply is None:
            return None
        return {"replicas": reply["replicas"][KEY], **reply["runtimes"][KEY]}

    # --- waiting ---

    def wait_ready(self, count: int) -> dict[str, dict[str, Any]]:
        """Until the supervisor has `count` ready replicas and nothing else; returns them."""

        def settled() -> dict[str, dict[str, Any]] | None:
            if self.try_ask("sup", {"op": "workers"}) is None:
                return None
            replicas = self.replicas()
            ready = all(r["ready"] and not r["draining"] for r in replicas.values())
            return replicas if len(replicas) == count and ready else None

        return wait_until(settled, WAIT, message=f"{count} ready replicas")

    def wait_started(self, count: int) -> dict[str, dict[str, Any]]:
        """Until `count` replicas are ready and every worker sees them; returns them."""
        replicas = self.wait_ready(count)
        for index in range(self.worker_count):
            self.wait_worker_sees(index, replicas)
        return replicas

    def wait_worker_sees(self, index: int, replicas: dict[str, dict[str, Any]]) -> None:
        """Until worker `index` sees exactly these replicas (same addresses, ready)."""
        wanted = {name: (r["host"], r["port"]) for name, r in replicas.items()}

        def matches() -> bool:
            view = self.worker_view(index)
            if view is None:
                return False
            seen = {n: (r["host"], r["port"]) for n, r in view["replicas"].items() if r["ready"]}
            return seen == wanted and view["current"] == len(wanted) and view["starting"] == 0

        wait_until(matches, WAIT, message=f"worker {index} sees {sorted(wanted)}")

    def stop(self) -> None:
        """Teardown: SIGTERM, SIGKILL if need be; then no process of this cluster may remain."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_WAIT)
        self._reader.join(timeout=STOP_WAIT)
        for pid in pids_running_with(self.token):  # only if a test already failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def start(workers: int = 2, replicas: int = 2, drain_timeout_s: float = 20.0) -> Cluster:
        made.append(Cluster(workers, replicas, drain_timeout_s))
        return made[-1]

    try:
        yield start
    finally:
        for each in made:
            each.stop()


# --- through the supervisor process -------------------------------------------------------


def test_a_killed_worker_is_restarted_and_replicas_keep_running(cluster) -> None:
    c = cluster(workers=2, replicas=2)
    replicas = c.wait_started(2)
    replica_pids = {name: r["pid"] for name, r in replicas.items()}
    before = c.workers()
    assert [w["restarts"] for w in before] == [0, 0]
    wait_until(lambda: all(w["connected"] for w in c.workers()), WAIT, message="both connected")
    killed = before[0]["pid"]

    os.kill(killed, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        first = c.workers()[0]
        replaced = first["pid"] != killed and first["alive"] and first["connected"]
        return first if replaced else None

    first = wait_until(restarted, WAIT, message="worker 0 replaced")
    assert first["restarts"] == 1
    assert "SIGKILL" in first["last_exit"]
    c.wait_worker_sees(0, replicas)
    # The new worker learnt the replicas from a snapshot, with their readiness.
    snapshot = c.printed(lambda line: line["event"] == "snapshot" and line["pid"] == first["pid"])
    assert len(snapshot) == 1
    assert {n: r["ready"] for n, r in snapshot[0]["replicas"][KEY].items()} == {
        name: True for name in replicas
    }
    # Nothing else moved: same replica processes, same other worker.
    after = c.replicas()
    assert {name: r["pid"] for name, r in after.items()} == replica_pids
    assert not any(process_gone(pid) for pid in replica_pids.values())
    assert c.workers()[1]["pid"] == before[1]["pid"]
    assert c.workers()[1]["restarts"] == 0


def test_scale_to_from_a_worker_and_drain_counts_every_worker(cluster) -> None:
    c = cluster(workers=2, replicas=2)
    c.wait_started(2)

    assert c.ask("w1", {"op": "scale_to", "deployment": KEY, "count": 3}) == {"ok": True}
    replicas = c.wait_started(3)

    # Worker 0 has 2 requests on every replica: the one scaled away must wait for them.
    for name in replicas:
        c.ask("w0", {"op": "set_inflight", "deployment": KEY, "name": name, "count": 2})
    assert c.ask("w0", {"op": "scale_to", "deployment": KEY, "count": 2}) == {"ok": True}
    # The answer comes after the draining event, so the supervisor already shows it.
    draining = [name for name, r in c.replicas().items() if r["draining"]]
    assert len(draining) == 1
    victim = draining[0]
    victim_pid = replicas[victim]["pid"]
    wait_until(lambda: c.replicas()[victim]["inflight"] == 2, WAIT, message="worker 0 reported 2")
    for index in (0, 1):
        wait_until(
            lambda i=index: (v := c.worker_view(i)) and v["replicas"][victim]["draining"],
            WAIT,
            message=f"worker {index} sees {victim} draining",
        )
        view = c.worker_view(index)
        assert view is not None and view["current"] == 2
    assert not process_gone(victim_pid)  # held by worker 0's requests

    c.ask("w0", {"op": "set_inflight", "deployment": KEY, "name": victim, "count": 0})
    wait_until(lambda: victim not in c.replicas(), WAIT, message=f"{victim} removed")
    wait_until(lambda: process_gone(victim_pid), WAIT, message=f"{victim} stopped")
    c.wait_started(2)

    # A worker's counts vanish with it: killing the busy worker ends the next drain.
    assert c.ask("w1", {"op": "scale_to", "deployment": KEY, "count": 1}) == {"ok": True}
    victim = next(name for name, r in c.replicas().items() if r["draining"])
    wait_until(lambda: c.replicas()[victim]["inflight"] == 2, WAIT, message="reported 2")
    os.kill(c.workers()[0]["pid"], signal.SIGKILL)
    wait_until(lambda: victim not in c.replicas(), WAIT, message=f"{victim} removed")
    assert len(c.wait_ready(1)) == 1


def test_sigterm_stops_every_worker_and_replica(cluster) -> None:
    c = cluster(workers=2, replicas=2)
    replicas = c.wait_started(2)
    worker_pids = [w["pid"] for w in c.workers()]
    replica_pids = [r["pid"] for r in replicas.values()]
    assert sorted(pids_running_with(c.token)) == sorted(replica_pids)

    c.process.send_signal(signal.SIGTERM)

    assert c.process.wait(timeout=STOP_WAIT) == 0
    for pid in worker_pids + replica_pids:
        assert process_gone(pid), pid  # the supervisor waited for each of its children
    assert pids_running_with(c.token) == []
    assert not (c.state_dir / channel.SOCKET_NAME).exists()
    # Workers stopped (SIGTERM) before the replicas: each said so, none was restarted.
    c._reader.join(timeout=STOP_WAIT)
    assert sorted(line["worker"] for line in c.printed(lambda x: x["event"] == "stopping")) == [
        0,
        1,
    ]
    assert c.printed(lambda line: line["event"] == "supervisor_stopped")


def test_a_sigkilled_supervisor_leaves_no_process_behind(cluster) -> None:
    c = cluster(workers=2, replicas=2)
    replicas = c.wait_started(2)
    pids = [w["pid"] for w in c.workers()] + [r["pid"] for r in replicas.values()]

    c.process.send_signal(signal.SIGKILL)
    c.process.wait(timeout=STOP_WAIT)

    for pid in pids:
        wait_until(lambda p=pid: process_gone(p), WAIT, message=f"pid {pid} gone")
    assert pids_running_with(c.token) == []


# --- the worker's link, against a supervisor played by the test ----------------------------


class Recorder:
    """A worker deployment's side of ReplicaEvents, recording the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.inflight: dict[str, int] = {}

    def replica_added(self, name: str, host: str, port: int) -> None:
        self.calls.append(("added", name, port))

    def replica_ready(self, name: str, ready: bool) -> None:
        self.calls.append(("ready", name, ready))

    def replica_draining(self, name: str) -> None:
        self.calls.append(("draining", name))

    def replica_inflight(self, name: str) -> int:
        return self.inflight.get(name, 0)

    def replica_removed(self, name: str) -> None:
        self.calls.append(("removed", name))


class PlayedSupervisor:
    """The supervisor's end of the channel, driven step by step by a test."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.connections.put((reader, writer))


def record(name: str, port: int, ready: bool, draining: bool = False) -> channel.ReplicaRecord:
    return channel.ReplicaRecord(name, "127.0.0.1", port, ready, draining)


async def receive(reader: asyncio.StreamReader) -> channel.Message:
    message = await asyncio.wait_for(channel.read_message(reader), WAIT)
    assert message is not None
    return message


async def test_link_applies_events_and_reconciles_after_a_reconnect() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="ifln-", dir="/tmp"))
    played = PlayedSupervisor()
    server = await asyncio.start_unix_server(
        played.accept, path=str(channel.socket_path(state_dir))
    )
    recorder = Recorder()
    link = SupervisorLink(state_dir, {KEY: recorder})
    runtime = RemoteRuntime(link, KEY)
    try:
        connecting = asyncio.create_task(link.connect())
        reader, writer = await asyncio.wait_for(played.connections.get(), WAIT)
        first = {KEY: [record("a", 1001, True), record("b", 1002, False)], "other/x": []}
        writer.write(channel.encode(channel.snapshot(first)))
        await connecting  # returns once the snapshot is applied
        assert recorder.calls == [("added", "a", 1001), ("ready", "a", True), ("added", "b", 1002)]
        assert (runtime.current, runtime.starting) == (2, 1)

        # Draining: this worker reports its count at once, then each change down to zero.
        recorder.inflight["a"] = 3
        writer.write(channel.encode(channel.draining(KEY, "a")))
        assert await receive(reader) == channel.inflight(KEY, "a", 3)
        assert (runtime.current, runtime.starting) == (1, 1)
        recorder.inflight["a"] = 0
        assert await receive(reader) == channel.inflight(KEY, "a", 0)

        # scale_to returns once the supervisor answers, after the events sent before it.
        scaling = asyncio.create_task(runtime.scale_to(3))
        request = await receive(reader)
        assert (request["type"], request["deployment"], request["count"]) == ("scale_to", KEY, 3)
        writer.write(channel.encode(channel.added(KEY, "c", "127.0.0.1", 1003)))
        writer.write(channel.encode(channel.scaled(KEY, 3, request["seq"])))
        await asyncio.wait_for(scaling, WAIT)
        assert recorder.calls[-1] == ("added", "c", 1003)
        runtime.report_failure("b")
        assert await receive(reader) == channel.report_failure(KEY, "b")

        # The connection drops; the link reconnects and reconciles with the new snapshot.
        recorder.calls.clear()
        writer.close()
        reader, writer = await asyncio.wait_for(played.connections.get(), WAIT)
        second = {KEY: [record("b", 1002, True), record("d", 1004, False)]}
        writer.write(channel.encode(channel.snapshot(second)))
        await async_wait_until(lambda: link.snapshots == 2, WAIT, message="second snapshot")
        assert sorted(recorder.calls) == sorted(
            [("removed", "a"), ("removed", "c"), ("ready", "b", True), ("added", "d", 1004)]
        )
        assert set(link.replicas[KEY]) == {"b", "d"}
        assert (runtime.current, runtime.starting) == (2, 1)
    finally:
        await link.close()
        server.close()
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_scale_to_while_disconnected_returns_false() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="ifln-", dir="/tmp"))
    link = SupervisorLink(state_dir, {KEY: Recorder()})
    try:
        assert await link.scale_to(KEY, 2) is False
        with pytest.raises(ConnectionError):
            await link.connect(timeout=0.2)  # nobody listens
    finally:
        await link.close()
        shutil.rmtree(state_dir, ignore_errors=True)


def test_worker_restart_backoff() -> None:
    backoff = (0.5, 4.0)
    streak, delay = next_worker_restart(0, uptime=0.1, backoff=backoff)
    assert delay == 0.0  # the first exit restarts at once
    delays = []
    for _ in range(5):
        streak, delay = next_worker_restart(streak, uptime=0.1, backoff=backoff)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert next_worker_restart(streak, uptime=60.0, backoff=backoff) == (1, 0.0)  # was stable


# --- the Supervisor object in this process ------------------------------------------------


def static_config(state_dir: Path, port: int, command: list[str] | None = None) -> Config:
    """One deployment: a `urls` replica nobody serves (refused at once), or a `command`."""
    source = {"command": command} if command else {"urls": [f"http://127.0.0.1:{port}"]}
    deployment = {"name": "blue", **source}
    return Config.model_validate(
        {
            "server": {"drain_timeout_s": 1.0},
            "endpoints": [{"name": "sup-test", "auth_mode": "none", "deployments": [deployment]}],
            "base_dir": state_dir,
        }
    )


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ifsp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_a_worker_that_keeps_exiting_is_restarted_with_backoff(state_dir: Path) -> None:
    supervisor = Supervisor(
        static_config(state_dir, free_port()),
        workers=2,
        state_dir=state_dir,
        worker_argv=lambda index: [sys.executable, "-c", f"raise SystemExit({index + 3})"],
        restart_backoff=(0.01, 0.05),
    )
    try:
        await supervisor.start()
        await async_wait_until(
            lambda: all(w["restarts"] >= 3 for w in supervisor.workers_info()),
            WAIT,
            message="each worker restarted 3 times",
        )
        exits = [w["last_exit"] for w in supervisor.workers_info()]
        assert exits == ["exit code 3", "exit code 4"]
        assert list(supervisor.replica_states()) == [KEY]
    finally:
        await supervisor.stop()
    assert not any(w["alive"] for w in supervisor.workers_info())
    assert not channel.socket_path(state_dir).exists()


async def test_start_fails_cleanly_when_a_replica_cannot_launch(state_dir: Path) -> None:
    command = [str(state_dir / "no-such-program"), "--port", "{port}"]
    supervisor = Supervisor(
        static_config(state_dir, 0, command),
        workers=1,
        state_dir=state_dir,
        worker_argv=lambda index: [sys.executable, "-c", "raise SystemExit(0)"],
    )
    with pytest.raises(OSError):
        await supervisor.start()
    assert supervisor.workers_info()[0]["pid"] is None  # no worker was started
    assert not channel.socket_path(state_dir).exists()


async def test_a_second_supervisor_does_not_take_a_live_socket(state_dir: Path) -> None:
    config = static_config(state_dir, free_port())
    sleeper = [sys.executable, "-c", "import signal; signal.pause()"]
    first = Supervisor(config, workers=1, state_dir=state_dir, worker_argv=lambda i: sleeper)
    second = Supervisor(config, workers=1, state_dir=state_dir, worker_argv=lambda i: sleeper)
    try:
        await first.start()
        with pytest.raises(RuntimeError, match="another supervisor"):
            await second.start()
        assert channel.socket_path(state_dir).exists()
        assert first.workers_info()[0]["alive"]
    finally:
        await first.stop()
    assert not first.workers_info()[0]["alive"]  # SIGTERM ends a worker that only waits
