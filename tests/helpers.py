"""Helpers shared by the test suites: ports, polling with deadlines, model server processes.

Import from here (`from tests.helpers import wait_until`); `tests/conftest.py` re-exports them and
provides the `model_server` fixture built on `start_model_server`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 10.0

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel may hand it out again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
