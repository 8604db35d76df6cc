"""LocalProcessRuntime with real replica processes (the test model server) on loopback."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferfront.runtime import local
from inferfront.runtime.local import Lineage, LocalProcessRuntime, next_restart
from inferfront.runtime.probe_client import probe_http
from inferfront.runtime.probes import ProbeSpec
from tests.helpers import REPO_ROOT, async_wait_until

MODEL_SERVER = ["python", "-m", "tests.servers.model_server", "--port", "{port}"]
FAST_READINESS = ProbeSpec(
    path="/", initial_delay=0.0, period=0.1, timeout=2.0, success_threshold=1, failure_threshold=2
)
# Liveness that never restarts anything unless a test asks for it.
QUIET_LIVENESS = ProbeSpec(
    path="/stats?history=0", initial_delay=0.0, period=0.1, timeout=2.0, failure_threshold=1000
)
WAIT = 15.0  # generous deadline for conditions polled below (never a sleep)
LOG = logging.getLogger("tests.runtime.local")


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic()
    kind: str
    name: str
    detail: Any = None


class RecordingEvents:
    """The routing side of the seam as a real in-memory object: records every callback, serves
    in-flight counts the test sets, and notes any callback that breaks the protocol's order
    (an assert inside a callback would only fail the runtime's task, not the test)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.inflight: dict[str, int] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.ready: dict[str, bool] = {}
        self.draining: set[str] = set()
        self.gone: set[str] = set()
        self.violations: list[str] = []

    def replica_added(self, name: str, host: str, port: int) -> None:
        if name in self.addresses or name in self.gone:
            self.violations.append(f"{name} added twice")
        self.addresses[name] = (host, port)
        self.ready[name] = False
        self._record("added", name, (host, port))

    def replica_ready(self, name: str, ready: bool) -> None:
        if name not in self.addresses:
            self.violations.append(f"ready({ready}) for unknown {name}")
        elif self.ready[name] == ready:
            self.violations.append(f"ready({ready}) for {name} repeated")
        elif name in self.draining:
            self.violations.append(f"ready({ready}) for draining {name}")
        self.ready[name] = ready
        self._record("ready" if ready else "unready", name)

    def replica_draining(self, name: str) -> None:
        if name not in self.addresses or name in self.draining:
            self.violations.append(f"draining for unknown or draining {name}")
        self.draining.add(name)
        self._record("draining", name)

    def replica_inflight(self, name: str) -> int:
        return self.inflight.get(name, 0)

    def replica_removed(self, name: str) -> None:
        if name not in self.addresses:
            self.violations.append(f"removed for unknown {name}")
        self.addresses.pop(name, None)
        self.ready.pop(name, None)
        self.draining.discard(name)
        self.gone.add(name)
        self._record("removed", name)

    def _record(self, kind: str, name: str, detail: Any = None) -> None:
        self.events.append(Event(time.monotonic(), kind, name, detail))

    # --- queries for tests ---

    def names(self, kind: str) -> list[str]:
        return [e.name for e in self.events if e.kind == kind]

    def first(self, kind: str, name: str) -> Event:
        return next(e for e in self.events if e.kind == kind and e.name == name)

    def kinds_for(self, name: str) -> list[str]:
        return [e.kind for e in self.events if e.name == name]

    def ready_names(self) -> set[str]:
        return {name for name, ready in self.ready.items() if ready}

    def port(self, name: str) -> int:
        return self.first("added", name).detail[1]


Build = Callable[..., tuple[LocalProcessRuntime, RecordingEvents]]


@pytest.fixture
async def build() -> AsyncIterator[Build]:
    """Makes runtimes (model server replicas, fast probes); stops them all at teardown."""
    made: list[tuple[LocalProcessRuntime, RecordingEvents]] = []

    def make(**overrides: Any) -> tuple[LocalProcessRuntime, RecordingEvents]:
        events = RecordingEvents()
        settings: dict[str, Any] = {
            "env": None,
            "cwd": REPO_ROOT,
            "readiness": FAST_READINESS,
            "liveness": QUIET_LIVENESS,
            "initial_replicas": 1,
            "log": LOG,
            "startup_poll_s": 0.05,
            "restart_backoff": (0.05, 1.0),
            "drain_timeout_s": 30.0,
        }
        settings.update(overrides)
        command = settings.pop("command", MODEL_SERVER)
        runtime = LocalProcessRuntime("dep", command, events, **settings)
        made.append((runtime, events))
        return runtime, events

    yield make
    for runtime, events in made:
        await runtime.stop(5.0)
        assert runtime.replicas() == []
        assert not events.violations, events.violations


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (read from /proc, no psutil)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


async def set_health(port: int, status: int) -> None:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            f"http://127.0.0.1:{port}/control/health", params={"status": status}
        )
    response.raise_for_status()


def pids(runtime: LocalProcessRuntime) -> dict[str, int]:
    return {info.name: info.pid for info in runtime.replicas() if info.pid is not None}


async def test_start_launches_replicas_that_turn_ready(
    build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    runtime, events = build(initial_replicas=2)
    await runtime.start()
    assert events.names("added") == ["dep-0", "dep-1"]
    assert runtime.current == 2

    await async_wait_until(lambda: events.ready_names() == {"dep-0", "dep-1"}, WAIT)
    assert runtime.starting == 0
    infos = {info.name: info for info in runtime.replicas()}
    assert {info.state for info in infos.values()} == {"ready"}
    for name, info in infos.items():
        assert events.addresses[name] == ("127.0.0.1", info.port)
        assert await probe_http("127.0.0.1", info.port, "/", 2.0)
        assert info.pid is not None and pid_alive(info.pid)
        assert os.getsid(info.pid) == info.pid  # its own session: a terminal Ctrl-C misses it
        argv0 = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert argv0 == sys.executable  # `python` ran in the router's virtualenv
    assert infos["dep-0"].port != infos["dep-1"].port
    # The replica's own output is logged, tagged with deployment and replica.
    await async_wait_until(
        lambda: any(r.getMessage().startswith("[dep/dep-0] READY ") for r in caplog.records), WAIT
    )
    tagged = [r for r in caplog.records if r.getMessage().startswith("[dep/dep-1] READY ")]
    assert tagged and tagged[0].__dict__["replica"] == "dep-1"


async def test_killed_replica_is_removed_and_replaced_after_backoff(build: Build) -> None:
    runtime, events = build(initial_replicas=2, restart_backoff=(0.3, 5.0))
    await runtime.start()
    await async_wait_until(lambda: len(events.ready_names()) == 2, WAIT)
    victim = pids(runtime)["dep-0"]

    os.kill(victim, signal.SIGKILL)
    await async_wait_until(lambda: "dep-0" in events.gone, WAIT)
    await async_wait_until(lambda: "dep-2" in events.ready_names(), WAIT)

    # The replacement waited at least the first backoff step (a lower bound, not a speed).
    gap = events.first("added", "dep-2").at - events.first("removed", "dep-0").at
    assert gap >= 0.3 - 0.01
    assert events.kinds_for("dep-0") == ["added", "ready", "removed"]
    assert not pid_alive(victim)
    infos = {info.name: info for info in runtime.replicas()}
    assert set(infos) == {"dep-1", "dep-2"}
    assert infos["dep-2"].restarts == 1 and infos["dep-1"].restarts == 0
    assert runtime.current == 2


async def test_replica_crashing_at_once_is_retried_with_doubling_backoff(build: Build) -> None:
    runtime, events = build(
        command=["python", "-c", "import sys; sys.exit(3)", "{port}"], restart_backoff=(0.05, 0.2)
    )
    await runtime.start()
    await async_wait_until(lambda: len(events.names("added")) >= 6, WAIT)
    await runtime.stop(1.0)

    added = events.names("added")
    assert added[:6] == [f"dep-{n}" for n in range(6)]
    # First retry at once on another port (a lost port race), then 0.05, 0.1, 0.2 (capped).
    expected = [0.0, 0.05, 0.1, 0.2, 0.2]
    for n, delay in enumerate(expected):
        gap = events.first("added", f"dep-{n + 1}").at - events.first("removed", f"dep-{n}").at
        assert gap >= delay - 0.01, (n, gap)
        assert events.port(f"dep-{n + 1}") != events.port(f"dep-{n}")


def test_restart_backoff_policy() -> None:
    backoff = (0.5, 4.0)
    lineage = Lineage()
    delays = []
    for _ in range(6):
        lineage, delay = next_restart(lineage, was_ready=False, uptime=0.1, port=1, backoff=backoff)
        delays.append(delay)
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert lineage.restarts == 6

    # Up over 30 s, or ready at some point: the backoff starts over (no free port retry).
    assert next_restart(lineage, was_ready=False, uptime=31.0, port=1, backoff=backoff)[1] == 0.5
    assert next_restart(lineage, was_ready=True, uptime=1.0, port=1, backoff=backoff)[1] == 0.5
    assert (
        next_restart(lineage.after_ready(), was_ready=False, uptime=0.1, port=1, backoff=backoff)[1]
        == 0.0
    )
    # A slow crash before ever answering is no port race: it backs off.
    assert next_restart(Lineage(), was_ready=False, uptime=5.0, port=1, backoff=backoff)[1] == 0.5


async def test_readiness_failures_take_replica_out_and_success_brings_it_back(
    build: Build,
) -> None:
    runtime, events = build()
    await runtime.start()
    await async_wait_until(lambda: events.ready_names() == {"dep-0"}, WAIT)
    port = events.port("dep-0")

    await set_health(port, 503)
    await async_wait_until(lambda: events.ready.get("dep-0") is False, WAIT)
    assert runtime.replicas()[0].state == "unready"
    assert runtime.starting == 0 and runtime.current == 1

    await set_health(port, 200)
    await async_wait_until(lambda: events.ready.get("dep-0") is True, WAIT)
    assert events.kinds_for("dep-0") == ["added", "ready", "unready", "ready"]
    assert runtime.replicas()[0].state == "ready"


async def test_liveness_failures_restart_the_replica(build: Build) -> None:
    readiness = ProbeSpec(path="/stats?history=0", initial_delay=0.0, period=0.1, timeout=2.0)
    # Like Kubernetes, liveness counts from `initial_delay` after launch, ready or not: the
    # delay gives each replacement time to come up before failures count.
    liveness = ProbeSpec(path="/", initial_delay=1.0, period=0.1, timeout=2.0, failure_threshold=3)
    runtime, events = build(readiness=readiness, liveness=liveness)
    await runtime.start()
    await async_wait_until(lambda: events.ready_names() == {"dep-0"}, WAIT)
    old_pid = pids(runtime)["dep-0"]

    await set_health(events.port("dep-0"), 500)
    await async_wait_until(lambda: events.ready_names() - {"dep-0"}, WAIT)
    assert events.kinds_for("dep-0") == ["added", "ready", "draining", "removed"]
    assert events.names("added")[1] == "dep-1"
    assert not pid_alive(old_pid)
    assert runtime.replicas()[0].restarts >= 1


async def test_report_failure_takes_replica_out_until_a_probe_answers(build: Build) -> None:
    # A ready replica is probed only every 60 s, so coming back within the deadline shows
    # report_failure switched it to the start-up pace.
    readiness = ProbeSpec(path="/", initial_delay=0.0, period=60.0, timeout=2.0)
    runtime, events = build(readiness=readiness)
    await runtime.start()
    await async_wait_until(lambda: events.ready_names() == {"dep-0"}, WAIT)

    runtime.report_failure("dep-0")
    assert events.ready["dep-0"] is False  # at once, not at the next probe
    runtime.report_failure("dep-0")  # already out: no second event
    runtime.report_failure("no-such-replica")
    await async_wait_until(lambda: events.ready.get("dep-0") is True, WAIT)
    assert events.kinds_for("dep-0") == ["added", "ready", "unready", "ready"]


async def test_scale_up_then_down_drains_in_flight_requests(build: Build) -> None:
    runtime, events = build(initial_replicas=1)
    await runtime.start()
    await runtime.scale_to(3)
    assert runtime.current == 3
    assert events.names("added") == ["dep-0", "dep-1", "dep-2"]
    await async_wait_until(lambda: len(events.ready_names()) == 3, WAIT)
    assert runtime.starting == 0
    procs = pids(runtime)

    # Requests in flight as the routing table would report them: dep-1 is idle.
    events.inflight.update({"dep-0": 3, "dep-1": 0, "dep-2": 1})
    await runtime.scale_to(1)
    assert events.draining == {"dep-1", "dep-2"}  # the two least busy
    assert runtime.current == 1 and runtime.target == 1
    assert {i.name: i.state for i in runtime.replicas()}["dep-2"] == "draining"

    await async_wait_until(lambda: "dep-1" in events.gone, WAIT)
    assert not pid_alive(procs["dep-1"])
    # dep-2 still has a request in flight: not stopped, still answering.
    assert "dep-2" not in events.gone and pid_alive(procs["dep-2"])
    assert await probe_http("127.0.0.1", events.port("dep-2"), "/", 2.0)

    events.inflight["dep-2"] = 0
    await async_wait_until(lambda: "dep-2" in events.gone, WAIT)
    assert not pid_alive(procs["dep-2"])
    assert events.kinds_for("dep-2") == ["added", "ready", "draining", "removed"]
    assert events.kinds_for("dep-0") == ["added", "ready"]
    assert [i.name for i in runtime.replicas()] == ["dep-0"]
    events.inflight.clear()


async def test_scale_down_prefers_replicas_that_are_not_ready(build: Build) -> None:
    runtime, events = build(initial_replicas=2)
    await runtime.start()
    await async_wait_until(lambda: len(events.ready_names()) == 2, WAIT)
    await set_health(events.port("dep-1"), 503)
    await async_wait_until(lambda: events.ready.get("dep-1") is False, WAIT)

    events.inflight.update({"dep-0": 0, "dep-1": 2})
    await runtime.scale_to(1)
    assert events.draining == {"dep-1"}  # unready beats idle
    events.inflight["dep-1"] = 0
    await async_wait_until(lambda: "dep-1" in events.gone, WAIT)
    assert runtime.current == 1


async def test_scale_down_cancels_waiting_replacements_first(build: Build) -> None:
    runtime, events = build(initial_replicas=2, restart_backoff=(30.0, 60.0))
    await runtime.start()
    await async_wait_until(lambda: len(events.ready_names()) == 2, WAIT)
    os.kill(pids(runtime)["dep-0"], signal.SIGKILL)
    await async_wait_until(lambda: "dep-0" in events.gone, WAIT)
    assert runtime.current == 1 and runtime.target == 2  # a replacement waits on its backoff

    await runtime.scale_to(2)  # already the target: nothing new starts
    assert events.names("added") == ["dep-0", "dep-1"]
    await runtime.scale_to(1)  # the waiting replacement goes, the live replica stays
    assert runtime.target == 1 and events.draining == set()


async def test_stop_drains_then_leaves_no_process_and_is_idempotent(build: Build) -> None:
    runtime, events = build(initial_replicas=2)
    await runtime.start()
    await async_wait_until(lambda: len(events.ready_names()) == 2, WAIT)
    procs = pids(runtime)
    events.inflight["dep-0"] = 1

    stopping = asyncio.create_task(runtime.stop(30.0))
    # Both were announced as draining (the idle one may already be gone again).
    await async_wait_until(lambda: set(events.names("draining")) == {"dep-0", "dep-1"}, WAIT)
    await async_wait_until(lambda: "dep-1" in events.gone, WAIT)
    assert not stopping.done() and pid_alive(procs["dep-0"])  # waits for the request

    events.inflight["dep-0"] = 0
    await asyncio.wait_for(stopping, WAIT)
    assert not any(pid_alive(pid) for pid in procs.values())
    assert events.gone == {"dep-0", "dep-1"} and runtime.current == 0

    count = len(events.events)
    await runtime.stop(1.0)
    await runtime.scale_to(3)  # stopped: ignored, nothing restarts
    assert len(events.events) == count and runtime.replicas() == []


async def test_stop_kills_a_replica_that_ignores_sigterm(
    build: Build, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(local, "KILL_GRACE_S", 0.3)
    caplog.set_level(logging.WARNING, logger=LOG.name)
    stubborn = (
        "import http.server, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length', '0')\n"
        "        self.end_headers()\n"
        "    def log_message(self, *args): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    runtime, events = build(command=["python3", "-c", stubborn, "{port}"])
    await runtime.start()
    await async_wait_until(lambda: events.ready_names() == {"dep-0"}, WAIT)
    pid = pids(runtime)["dep-0"]

    await runtime.stop(0.0)
    assert not pid_alive(pid)
    assert any("SIGKILL" in r.getMessage() for r in caplog.records)


async def test_start_fails_loudly_for_a_command_that_cannot_run(build: Build) -> None:
    runtime, _ = build(command=["/nonexistent/model-server", "--port", "{port}"])
    with pytest.raises(FileNotFoundError):
        await runtime.start()


ROUTER_SCRIPT = """
import asyncio, logging, sys
from pathlib import Path

import uvloop

from inferfront.runtime.local import LocalProcessRuntime
from inferfront.runtime.probes import ProbeSpec


class Events:
    def replica_added(self, name, host, port): pass
    def replica_ready(self, name, ready): pass
    def replica_draining(self, name): pass
    def replica_inflight(self, name): return 0
    def replica_removed(self, name): pass


async def main():
    runtime = LocalProcessRuntime(
        "orphans", ["python", "-m", "tests.servers.model_server", "--port", "{port}"], Events(),
        env=None, cwd=Path(sys.argv[1]), readiness=ProbeSpec(initial_delay=0, period=0.1),
        liveness=ProbeSpec(), initial_replicas=2, log=logging.getLogger("router"))
    await runtime.start()
    print(" ".join(str(info.pid) for info in runtime.replicas()), flush=True)
    await asyncio.Event().wait()


uvloop.run(main())
"""


async def test_router_killed_with_sigkill_leaves_no_orphan(tmp_path: Path) -> None:
    script = tmp_path / "router.py"
    script.write_text(ROUTER_SCRIPT)
    router = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(REPO_ROOT),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert router.stdout is not None
        line = await asyncio.wait_for(router.stdout.readline(), WAIT)
        replica_pids = [int(word) for word in line.split()]
        assert len(replica_pids) == 2 and all(pid_alive(pid) for pid in replica_pids)
    finally:
        router.kill()
        await router.wait()
    await async_wait_until(lambda: not any(pid_alive(pid) for pid in replica_pids), WAIT)
