"""Child processes, loopback ports, file-descriptor limits and memory readings for the benchmarks.

Everything a benchmark starts goes through `Children`, which stops it again on every way out:
normal return, exception, Ctrl-C, SIGTERM (turned into SystemExit) and interpreter exit (atexit).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child between fork and exec should only call into it.
_LIBC = ctypes.CDLL(None, use_errno=True)


class HarnessError(RuntimeError):
    """The benchmark could not set something up; the message says what and how to fix it."""


def _own_group_and_die_with_parent() -> None:
    # A process group of its own lets stop() reach the child's children too (nginx workers, router
    # helpers); PDEATHSIG covers the one exit no finally sees: the benchmark being SIGKILLed.
    os.setsid()
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One started server process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, max_lines: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-max_lines:])


@dataclass
class Children:
    """Starts server processes and guarantees they are stopped."""

    stop_timeout_s: float = 15.0
    _running: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        atexit.register(self.stop_all)

    def start(self, name: str, argv: Sequence[str], log_path: Path) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_own_group_and_die_with_parent,
            )
        child = Child(name, popen, log_path)
        self._running.append(child)
        return child

    def stop(self, child: Child) -> None:
        if child in self._running:
            self._running.remove(child)
        _signal_group(child.pid, signal.SIGTERM)
        try:
            child.popen.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()
        # Whatever the leader left behind in its group (a worker, a helper) goes too.
        _signal_group(child.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for child in reversed(list(self._running)):
            self.stop(child)


def _signal_group(group_id: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group_id, signum)


def exit_cleanly_on_termination_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so that finally blocks stop the children."""

    def raise_system_exit(signum: int, _frame: object) -> None:
        print(f"[bench] {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_system_exit)


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    give_up: Callable[[], str | None] = lambda: None,
    poll_interval_s: float = 0.05,
) -> None:
    """Poll `condition` until it holds; raise HarnessError after the deadline or when `give_up`
    returns a reason (e.g. the process being waited for has exited)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        reason = give_up()
        if reason is not None:
            raise HarnessError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{what}: not done after {timeout_s:.0f} s")
        time.sleep(poll_interval_s)


@dataclass
class PortAllocator:
    """Hands out free 127.0.0.1 ports, counting up from `base`, never the same one twice.

    The default base sits below Linux's ephemeral range (32768+) so that the load generators'
    outgoing connections never take a port a server is about to listen on.
    """

    base: int = 20000
    _next: int = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.base

    def take(self, count: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < count:
            if self._next > 65535:
                raise HarnessError(f"ran out of free ports above {self.base}")
            if port_is_free(self._next):
                ports.append(self._next)
            self._next += 1
        return ports

    def take_one(self) -> int:
        return self.take(1)[0]


def port_is_free(port: int) -> bool:
    # SO_REUSEADDR as nginx and asyncio servers use it: a TIME_WAIT left by an earlier run is fine.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def raise_open_files_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it) and return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        wanted = hard
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft


def process_tree(root_pid: int) -> list[int]:
    """`root_pid` and all its descendants that are alive now."""
    children_of: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields after the last ')' are safe.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children_of.setdefault(parent, []).append(int(entry))
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children_of.get(pid, []))
    return tree


def cpu_seconds(root_pid: int | None) -> float:
    """User + system CPU time used so far by `root_pid` and its live descendants (0 for None).

    Per-request CPU is the steadiest figure on a noisy machine: a neighbour's load slows a
    process down but hardly changes the work it does per request."""
    if root_pid is None:
        return 0.0
    ticks = 0
    for pid in process_tree(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def tcp_segments_sent() -> int:
    """TCP segments this network namespace has sent so far (Tcp OutSegs of /proc/net/snmp).

    Over loopback every segment is sent and received here, so its growth per request shows
    the packets a request costs: 4 when each answer's ACK rides on the next request, more when
    connections sit idle long enough for the kernel to send ACKs of their own."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = (line for line in lines if line[0] == "Tcp:")
    return int(values[names.index("OutSegs")])


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def open_fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cpu_busy_fraction(window_s: float = 1.0) -> float:
    """Share of all CPUs' time spent on something other than idle over `window_s`, from
    /proc/stat: how much other work would compete with the benchmark."""

    def totals() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle  # guest time is already counted in user

    total_before, idle_before = totals()
    time.sleep(window_s)  # the measuring window itself, not a wait for some condition
    total_after, idle_after = totals()
    elapsed = total_after - total_before
    return 0.0 if elapsed <= 0 else 1 - (idle_after - idle_before) / elapsed
