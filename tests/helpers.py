"""Helpers shared by the test suites: ports, polling with deadlines, model server processes,
stand-in replicas served from a thread, replica timelines and raw HTTP response collection.

Import from here (`from tests.helpers import wait_until`); `tests/conftest.py` re-exports them and
provides the `model_server` fixture built on `start_model_server`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 10.0

T = TypeVar("T")


def _ports_the_kernel_never_picks() -> list[int]:
    """Ports outside the ephemeral range: a bind to port 0 or an outgoing connection's local port
    never lands there, so a port found free stays free until the test's own server binds it."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    ports = [*range(max(1024, low - 12000), low), *range(high + 1, 65536)]
    random.shuffle(ports)  # concurrent test runs on one host start at different places
    return ports


_unclaimed_ports: list[int] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, that no other call in this process has handed out and
    that the kernel does not hand out on its own (see _ports_the_kernel_never_picks)."""
    if not _unclaimed_ports:
        _unclaimed_ports.extend(_ports_the_kernel_never_picks())
    while _unclaimed_ports:
        port = _unclaimed_ports.pop()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left outside the kernel's ephemeral range")


def _describe(predicate: Callable[..., Any], message: str | None) -> str:
    return message or getattr(predicate, "__name__", repr(predicate))


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition not met within {timeout:.1f}s: {_describe(predicate, message)} "
                f"(last value {result!r})"
            )
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """`wait_until` for async tests; `predicate` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition not met within {timeout:.1f}s: {_describe(predicate, message)} "
                f"(last value {result!r})"
            )
        await asyncio.sleep(interval)


class ModelServerHandle:
    """A running `tests.servers.model_server` process."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{port}"

    def __repr__(self) -> str:
        return f"ModelServerHandle(name={self.name!r}, port={self.port}, pid={self.pid})"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def stats(self, history: bool = True) -> dict[str, Any]:
        """GET /stats; `history=False` leaves out the (possibly long) timeline and event times."""
        params = {} if history else {"history": "0"}
        response = httpx.get(f"{self.url}/stats", params=params, timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        return response.json()

    async def astats(self, history: bool = True) -> dict[str, Any]:
        params = {} if history else {"history": "0"}
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            response = await client.get(f"{self.url}/stats", params=params)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/stats/reset", timeout=HTTP_TIMEOUT).raise_for_status()

    def set_health(self, status: int) -> None:
        """Make `GET /` answer `status` from now on (200 restores readiness)."""
        response = httpx.post(
            f"{self.url}/control/health", params={"status": status}, timeout=HTTP_TIMEOUT
        )
        response.raise_for_status()

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to end on its own (e.g. after `?mode=exit`); its exit code."""
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the replica dies with no chance to answer anything."""
        if self.is_alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT."""
        stop_process(self.process)


def read_ready_port(process: subprocess.Popen[bytes], deadline: float) -> int:
    """Read a server's stdout until `READY <port>`; error if it dies or `deadline` (monotonic)
    passes first. Works for any process started with stdout=PIPE that prints that line."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    buffered = b""
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while b"\n" not in buffered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"model server printed no READY line in time: {buffered!r}")
            if not selector.select(timeout=remaining):
                continue
            data = os.read(descriptor, 4096)
            if not data:
                code = process.wait(timeout=STOP_TIMEOUT)
                raise RuntimeError(f"model server exited with {code} before READY: {buffered!r}")
            buffered += data
    line = buffered.split(b"\n", 1)[0].decode().strip()
    word, _, port = line.partition(" ")
    if word != "READY" or not port.isdigit():
        raise RuntimeError(f"unexpected first line from the model server: {line!r}")
    return int(port)


def _launch(name: str, extra_args: Sequence[str]) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "tests.servers.model_server",
        "--port",
        "0",
        "--name",
        name,
        "--exit-with-parent",
        *extra_args,
    ]
    # stderr is inherited so a traceback lands in pytest's captured output of the failing test.
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, SIGKILL after `timeout`, close its stdout pipe; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    code = process.wait(timeout=timeout)
    if process.stdout is not None:
        process.stdout.close()
    return code


def _discard(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    stop_process(process)


def start_model_servers(
    names: Sequence[str],
    extra_args: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT,
) -> list[ModelServerHandle]:
    """Launch several model servers at once (start-up overlaps) and wait for all to be READY.

    The caller must stop them. If one fails to start, all are killed before the error propagates.
    """
    processes = [_launch(name, extra_args) for name in names]
    deadline = time.monotonic() + ready_timeout
    try:
        ports = [read_ready_port(process, deadline) for process in processes]
    except BaseException:
        for process in processes:
            _discard(process)
        raise
    return [
        ModelServerHandle(name, process, port)
        for name, process, port in zip(names, processes, ports, strict=True)
    ]


def start_model_server(
    name: str = "r0",
    extra_args: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT,
) -> ModelServerHandle:
    """Launch one model server on a free port and wait for its READY line. Caller must stop it."""
    return start_model_servers([name], extra_args, ready_timeout)[0]


def stop_servers(servers: Iterable[ModelServerHandle]) -> None:
    """SIGTERM every model server first, then wait for each: they exit in parallel."""
    servers = list(servers)
    for server in servers:
        if server.is_alive():
            server.process.terminate()
    for server in servers:
        server.stop()


# -- stand-in replicas in a thread ------------------------------------------------------------


class ThreadedReplica:
    """A replica served from a thread of the test process on a real loopback socket.

    It passes the router's readiness probe (`GET /` answers 200 `Healthy`); every other request
    is counted in `received` and then given to `handle`, where a subclass puts its one behaviour.
    `close()` stops the server.
    """

    def __init__(self) -> None:
        self.received = 0
        handler = type("Handler", (_ThreadedReplicaHandler,), {"replica": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        """Deal with one request other than the readiness probe (runs in the server's thread)."""
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ThreadedReplicaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    replica: ThreadedReplica  # set on the handler class made for each replica

    def do_GET(self) -> None:
        if self.path == "/":  # the readiness probe
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"Healthy")
        else:
            self._hand_over()

    def do_POST(self) -> None:
        self._hand_over()

    def _hand_over(self) -> None:
        self.replica.received += 1
        self.replica.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


# -- replica timelines ------------------------------------------------------------------------


def underused_spans(
    timeline: list[list[float]], limit: int, start: float, end: float
) -> list[tuple[float, float]]:
    """Spans within [start, end] in which a replica had fewer than `limit` requests in flight."""
    events = sorted(
        [(s, 1) for s, _ in timeline] + [(e, -1) for _, e in timeline],
        key=lambda event: (event[0], -event[1]),
    )
    spans: list[tuple[float, float]] = []
    inflight = 0
    below_since: float | None = start
    for moment, change in events:
        if moment > end:
            break
        inflight += change
        if inflight < limit and below_since is None:
            below_since = max(moment, start)
        elif inflight >= limit and below_since is not None:
            if moment > below_since:
                spans.append((below_since, moment))
            below_since = None
    if below_since is not None and below_since < end:
        spans.append((below_since, end))
    return spans


def peak_concurrency(timeline: list[list[float]]) -> int:
    """The most requests a replica held at once, from its own [start, end] timeline."""
    events = sorted(
        [(s, 1) for s, _ in timeline] + [(e, -1) for _, e in timeline],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    peak = current = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


# -- raw HTTP responses -----------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False


class ResponseCollector:
    """httptools (llhttp) parser callbacks that collect every response read, in order.

    The status is the caller's to fill in (`parser.get_status_code()`): the callbacks do not
    see the parser.
    """

    def __init__(self) -> None:
        self.responses: list[RawResponse] = []

    def on_message_begin(self) -> None:
        self.responses.append(RawResponse())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True
