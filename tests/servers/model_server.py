"""A controllable model server: the upstream for integration tests and benchmarks.

Run from the repository root:

    python -m tests.servers.model_server --port 0 --name r0

It prints `READY <port>` (flushed) once listening. Written directly on asyncio + uvloop + the
llhttp parser (httptools) with HTTP/1.1 keep-alive, so it stays far faster than the router in
front of it and benchmarks measure the router, not this server.

Routes (query parameters are optional and combine: the delay applies first, then the mode):

- `GET /` (or HEAD): the health status set by `POST /control/health?status=S` (200 `Healthy`).
- `GET /stats`: JSON counters (`?history=0` omits the timeline); `POST /stats/reset` resets them.
- Anything else is a scoring request: the body is hashed as it streams in, then the answer is JSON
  `{"replica", "path", "query", "method", "bytes", "sha256", "headers"}`.
  `delay_ms=D`, `status=S`, `size=N` (N pattern bytes, see `download_body`), `chunked=1`,
  `mode=crash_mid|close_before|hang|sse|exit`, `events=N` and `interval_ms=I` for `mode=sse`.

A scoring request is in flight from its parsed head until its answer is fully written or its
connection is lost; the peak and a bounded (start, end) wall-time timeline are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import time
import traceback
from collections import deque
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs

import httptools
import uvloop

PIECE_SIZE = 64 * 1024
# A 64 KiB block that is a whole number of 0..255 runs, so byte i of any download is i % 256.
PATTERN_BLOCK = bytes(range(256)) * (PIECE_SIZE // 256)
HISTORY_LIMIT = 100_000
DEFAULT_SSE_EVENTS = 5
DEFAULT_SSE_INTERVAL_MS = 50
CRASH_DECLARED_LENGTH = 100_000
CRASH_SENT_BYTES = 10
EXIT_CODE_ON_REQUEST = 3
PARENT_POLL_SECONDS = 0.5

# Request kinds, decided from the method and path once the head is parsed.
SCORE = "score"
HEALTH = "health"
STATS = "stats"
STATS_RESET = "stats_reset"
CONTROL_HEALTH = "control_health"
IGNORED = "ignored"


def download_body(size: int) -> bytes:
    """The exact body `?size=N` answers with (for tests to compare or hash)."""
    runs = -(-size // 256)
    return (bytes(range(256)) * runs)[:size]


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def response_head(
    status: int,
    headers: list[tuple[str, str]],
    keep_alive: bool,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def status_has_body(status: int) -> bool:
    return status not in (204, 304)


class ServerState:
    """Counters shared by every connection of the process."""

    def __init__(self, name: str, fixed_response: bool) -> None:
        self.name = name
        self.fixed_response = fixed_response
        self.health_status = 200
        self.inflight = 0
        self.peak_inflight = 0
        self.requests = 0
        self.completed = 0
        self.health_checks = 0
        # Health checks that came on a connection after another request (a kept connection).
        self.health_checks_on_kept = 0
        self.timeline: deque[tuple[float, float]] = deque(maxlen=HISTORY_LIMIT)
        self.sse_events: deque[float] = deque(maxlen=HISTORY_LIMIT)

    def request_started(self) -> float:
        self.requests += 1
        self.inflight += 1
        if self.inflight > self.peak_inflight:
            self.peak_inflight = self.inflight
        return time.time()

    def request_ended(self, started: float, completed: bool) -> None:
        self.inflight -= 1
        self.timeline.append((started, time.time()))
        if completed:
            self.completed += 1

    def reset(self) -> None:
        # Requests still in flight stay counted in `inflight`, so the peak restarts from there.
        self.peak_inflight = self.inflight
        self.requests = 0
        self.completed = 0
        self.health_checks = 0
        self.health_checks_on_kept = 0
        self.timeline.clear()
        self.sse_events.clear()

    def snapshot(self, history: bool = True) -> dict[str, Any]:
        counters = {
            "name": self.name,
            "inflight": self.inflight,
            "peak_inflight": self.peak_inflight,
            "requests": self.requests,
            "completed": self.completed,
            "health_checks": self.health_checks,
            "health_checks_on_kept": self.health_checks_on_kept,
            "health_status": self.health_status,
        }
        if history:
            counters["timeline"] = [list(span) for span in self.timeline]
            counters["sse_events"] = list(self.sse_events)
        return counters


class BadOption(ValueError):
    """A query parameter that cannot be honoured (answered with 400)."""


class Request:
    __slots__ = (
        "_options",
        "body_bytes",
        "ended",
        "hasher",
        "headers",
        "keep_alive",
        "kind",
        "method",
        "path",
        "query",
        "started",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        kind: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.keep_alive = keep_alive
        self.kind = kind
        self.started = 0.0
        self.ended = False
        self.body_bytes = 0
        self.hasher: Any = None
        self._options: dict[str, str] | None = None

    @property
    def options(self) -> dict[str, str]:
        if self._options is None:
            parsed = parse_qs(self.query, keep_blank_values=True)
            self._options = {key: values[-1] for key, values in parsed.items()}
        return self._options

    def int_option(self, name: str, default: int, low: int = 0, high: int = 1 << 40) -> int:
        raw = self.options.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadOption(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise BadOption(f"{name} must be between {low} and {high}, got {value}")
        return value

    def header_dict(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for raw_name, raw_value in self.headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip()
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        return merged


def classify(method: str, path: str) -> str:
    if path == "/" and method in ("GET", "HEAD"):
        return HEALTH
    if path == "/stats":
        return STATS
    if path == "/stats/reset":
        return STATS_RESET
    if path == "/control/health":
        return CONTROL_HEALTH
    return SCORE


class ModelServerProtocol(asyncio.Protocol):
    """One client connection. Requests on it are answered strictly in order (pipelining safe)."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url_parts: list[bytes] = []
        self._header_list: list[tuple[bytes, bytes]] = []
        self._current: Request | None = None
        self._pending: deque[Request] = deque()
        # Scoring requests started here and not yet ended (the connection dying ends them).
        self._unfinished: set[Request] = set()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._requests_read = 0  # on this connection
        self._can_write = asyncio.Event()
        self._can_write.set()

    # --- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject_bad_request("upgrade is not supported")
        except httptools.HttpParserError as error:
            self._reject_bad_request(str(error))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()
        for request in list(self._unfinished):
            self._finish(request, completed=False)
        self._pending.clear()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # --- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url_parts = []
        self._header_list = []

    def on_url(self, url: bytes) -> None:
        # llhttp may deliver the URL in several pieces when it spans reads.
        self._url_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        target = b"".join(self._url_parts).decode("latin-1")
        path, _, query = target.partition("?")
        method = self._parser.get_method().decode("latin-1")
        kind = IGNORED if self._closing else classify(method, path)
        if kind == HEALTH and self._requests_read:
            self._state.health_checks_on_kept += 1
        self._requests_read += 1
        request = Request(
            method, path, query, self._header_list, self._parser.should_keep_alive(), kind
        )
        if kind == SCORE:
            request.started = self._state.request_started()
            self._unfinished.add(request)
            if not self._state.fixed_response:
                request.hasher = hashlib.sha256()
        self._current = request

    def on_body(self, body: bytes) -> None:
        request = self._current
        if request is None:
            return
        request.body_bytes += len(body)
        if request.hasher is not None:
            request.hasher.update(body)

    def on_message_complete(self) -> None:
        request = self._current
        self._current = None
        if request is not None:
            self._dispatch(request)

    # --- ordering ------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> None:
        if self._closing:
            self._finish(request, completed=False)
            return
        if self._worker is None:
            # Fast path: nothing queued on this connection, answer without creating a task.
            if self._answer_now(request):
                return
            self._pending.appendleft(request)
        else:
            self._pending.append(request)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._serve_pending())

    async def _serve_pending(self) -> None:
        try:
            while self._pending and not self._closing:
                request = self._pending.popleft()
                if not self._answer_now(request):
                    await self._answer_later(request)
        except Exception:
            # A bug here must not leave the client waiting forever: report it and hang up.
            traceback.print_exc()
            self._close()
        finally:
            self._worker = None

    # --- answering -----------------------------------------------------------------------

    def _answer_now(self, request: Request) -> bool:
        """Answer at once if nothing needs awaiting; return False to defer to `_answer_later`."""
        try:
            return self._answer_now_or_raise(request)
        except BadOption as error:
            self._write_json(request, 400, {"error": str(error)})
            return True

    def _answer_now_or_raise(self, request: Request) -> bool:
        kind = request.kind
        if kind == HEALTH:
            self._answer_health(request)
        elif kind == STATS:
            # `?history=0` leaves out the timeline and event times (cheap to poll under load).
            history = request.options.get("history") != "0"
            self._write_json(request, 200, self._state.snapshot(history))
        elif kind == STATS_RESET:
            self._answer_stats_reset(request)
        elif kind == CONTROL_HEALTH:
            self._answer_control_health(request)
        elif kind == IGNORED:
            self._finish(request, completed=False)
        elif self._state.fixed_response:
            self._write_fixed_response(request)
        else:
            return self._answer_score_now(request)
        return True

    def _answer_score_now(self, request: Request) -> bool:
        delay_ms = request.int_option("delay_ms", 0, high=24 * 3600 * 1000)
        mode = request.options.get("mode", "")
        size = request.int_option("size", -1, low=-1)
        validate_score_options(request)
        if delay_ms > 0 or mode in ("hang", "sse") or size > PIECE_SIZE:
            return False
        self._run_mode(request, mode)
        return True

    async def _answer_later(self, request: Request) -> None:
        mode = request.options.get("mode", "")
        delay_ms = request.int_option("delay_ms", 0)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        if mode == "hang":
            # Never answer; the connection closing cancels this task.
            await asyncio.get_running_loop().create_future()
        elif mode == "sse":
            await self._stream_sse(request)
        elif mode == "" and request.int_option("size", -1, low=-1) >= 0:
            await self._stream_download(request)
        else:
            self._run_mode(request, mode)

    def _run_mode(self, request: Request, mode: str) -> None:
        if mode == "exit":
            os._exit(EXIT_CODE_ON_REQUEST)
        elif mode == "close_before":
            self._close()
        elif mode == "crash_mid":
            self._crash_mid_answer(request)
        elif request.int_option("size", -1, low=-1) >= 0:
            self._write_small_download(request)
        else:
            self._write_score_answer(request)

    def _answer_health(self, request: Request) -> None:
        self._state.health_checks += 1
        status = self._state.health_status
        body = b"Healthy" if status == 200 else b"Unhealthy"
        self._write_body(request, status, "text/plain; charset=utf-8", body)

    def _answer_stats_reset(self, request: Request) -> None:
        if request.method != "POST":
            self._write_json(request, 405, {"error": "POST /stats/reset"})
            return
        self._state.reset()
        self._write_json(request, 200, {"reset": True})

    def _answer_control_health(self, request: Request) -> None:
        status = request.int_option("status", 200, low=200, high=599)
        self._state.health_status = status
        self._write_json(request, 200, {"health_status": status})

    def _write_score_answer(self, request: Request) -> None:
        status = request.int_option("status", 200, low=200, high=599)
        payload = {
            "replica": self._state.name,
            "path": request.path,
            "query": request.query,
            "method": request.method,
            "bytes": request.body_bytes,
            "sha256": request.hasher.hexdigest(),
            "headers": request.header_dict(),
        }
        body = json.dumps(payload).encode()
        if request.options.get("chunked") == "1" and status_has_body(status):
            self._write_chunked_json(request, status, body)
        else:
            self._write_body(request, status, "application/json", body)

    def _write_chunked_json(self, request: Request, status: int, body: bytes) -> None:
        headers = [*self._base_headers("application/json"), ("Transfer-Encoding", "chunked")]
        middle = len(body) // 2
        # Two chunks, so a client really has to reassemble the body.
        parts = [response_head(status, headers, request.keep_alive)]
        if request.method != "HEAD":
            parts += [chunk(body[:middle]), chunk(body[middle:]), LAST_CHUNK]
        self._transport_write(b"".join(parts))
        self._after_answer(request)

    def _write_small_download(self, request: Request) -> None:
        status = request.int_option("status", 200, low=200, high=599)
        size = request.int_option("size", 0)
        body = PATTERN_BLOCK[:size]
        if request.options.get("chunked") == "1":
            headers = self._base_headers("application/octet-stream")
            headers.append(("Transfer-Encoding", "chunked"))
            parts = [response_head(status, headers, request.keep_alive)]
            if request.method != "HEAD":
                parts += [chunk(body), LAST_CHUNK] if body else [LAST_CHUNK]
            self._transport_write(b"".join(parts))
            self._after_answer(request)
        else:
            self._write_body(request, status, "application/octet-stream", body)

    async def _stream_download(self, request: Request) -> None:
        status = request.int_option("status", 200, low=200, high=599)
        size = request.int_option("size", 0)
        chunked = request.options.get("chunked") == "1"
        headers = self._base_headers("application/octet-stream")
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
        headers.append(framing)
        self._transport_write(response_head(status, headers, request.keep_alive))
        remaining = size if request.method != "HEAD" else 0
        while remaining > 0:
            piece = PATTERN_BLOCK[: min(remaining, PIECE_SIZE)]
            self._transport_write(chunk(piece) if chunked else piece)
            remaining -= len(piece)
            await self._writable()
        if chunked and request.method != "HEAD":
            self._transport_write(LAST_CHUNK)
        self._after_answer(request)

    async def _stream_sse(self, request: Request) -> None:
        events = request.int_option("events", DEFAULT_SSE_EVENTS, high=1_000_000)
        interval_ms = request.int_option("interval_ms", DEFAULT_SSE_INTERVAL_MS, high=3600 * 1000)
        status = request.int_option("status", 200, low=200, high=599)
        headers = self._base_headers("text/event-stream")
        headers += [("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")]
        self._transport_write(response_head(status, headers, request.keep_alive))
        for index in range(events):
            if index > 0:
                await asyncio.sleep(interval_ms / 1000)
            self._transport_write(chunk(b'data: {"i": %d}\n\n' % index))
            self._state.sse_events.append(time.time())
            await self._writable()
        self._transport_write(LAST_CHUNK)
        self._after_answer(request)

    def _crash_mid_answer(self, request: Request) -> None:
        headers = self._base_headers("application/octet-stream")
        headers.append(("Content-Length", str(CRASH_DECLARED_LENGTH)))
        head = response_head(200, headers, keep_alive=True)
        self._transport_write(head + PATTERN_BLOCK[:CRASH_SENT_BYTES])
        # The request stays in flight until the connection is really gone (connection_lost).
        self._close()

    def _write_fixed_response(self, request: Request) -> None:
        self._transport_write(fixed_response_bytes(self._state.name, request.keep_alive))
        self._after_answer(request)

    # --- writing helpers -----------------------------------------------------------------

    def _base_headers(self, content_type: str) -> list[tuple[str, str]]:
        return [("Content-Type", content_type), ("x-replica", self._state.name)]

    def _write_json(self, request: Request, status: int, payload: Any) -> None:
        self._write_body(request, status, "application/json", json.dumps(payload).encode())

    def _write_body(self, request: Request, status: int, content_type: str, body: bytes) -> None:
        headers = self._base_headers(content_type)
        if status_has_body(status):
            headers.append(("Content-Length", str(len(body))))
        head = response_head(status, headers, request.keep_alive)
        send_body = request.method != "HEAD" and status_has_body(status)
        self._transport_write(head + body if send_body else head)
        self._after_answer(request)

    def _after_answer(self, request: Request) -> None:
        self._finish(request, completed=True)
        if not request.keep_alive:
            self._close()

    def _finish(self, request: Request, completed: bool) -> None:
        if request.ended:
            return
        request.ended = True
        if request.kind == SCORE:
            self._unfinished.discard(request)
            self._state.request_ended(request.started, completed)

    def _transport_write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def _writable(self) -> None:
        # A lost connection cancels the worker task, which ends this wait too.
        if not self._can_write.is_set():
            await self._can_write.wait()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _reject_bad_request(self, reason: str) -> None:
        # Answering now would overtake an answer still being produced; then just close.
        if self._worker is None and self._transport is not None:
            body = json.dumps({"error": f"bad request: {reason}"}).encode()
            headers = self._base_headers("application/json")
            headers.append(("Content-Length", str(len(body))))
            self._transport_write(response_head(400, headers, keep_alive=False) + body)
        self._close()


def validate_score_options(request: Request) -> None:
    """Reject unknown modes and bad numbers before anything is sent (answered with 400)."""
    mode = request.options.get("mode", "")
    if mode not in ("", "crash_mid", "close_before", "hang", "sse", "exit"):
        raise BadOption(f"unknown mode {mode!r}")
    request.int_option("status", 200, low=200, high=599)
    request.int_option("events", DEFAULT_SSE_EVENTS, high=1_000_000)
    request.int_option("interval_ms", DEFAULT_SSE_INTERVAL_MS, high=3600 * 1000)


_FIXED_CACHE: dict[tuple[str, bool], bytes] = {}


def fixed_response_bytes(name: str, keep_alive: bool) -> bytes:
    key = (name, keep_alive)
    cached = _FIXED_CACHE.get(key)
    if cached is None:
        body = b'{"ok":true}'
        headers = [
            ("Content-Type", "application/json"),
            ("x-replica", name),
            ("Content-Length", str(len(body))),
        ]
        cached = _FIXED_CACHE[key] = response_head(200, headers, keep_alive) + body
    return cached


async def watch_parent(stop: asyncio.Event) -> None:
    """Stop when the launching process dies, so a killed test run leaves no orphan behind."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL_SECONDS)


async def serve(args: argparse.Namespace) -> None:
    state = ServerState(args.name, args.fixed_response)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ModelServerProtocol(state),
        host=args.host,
        port=args.port,
        reuse_address=True,
        backlog=2048,
    )
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = loop.create_task(watch_parent(stop)) if args.exit_with_parent else None
    print(f"READY {port}", flush=True)
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Controllable model server for tests.")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="model", help="replica name echoed in answers")
    parser.add_argument(
        "--fixed-response",
        action="store_true",
        help='answer every non-control request at once with {"ok":true} (benchmarks)',
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when the launching process dies",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    uvloop.run(serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
