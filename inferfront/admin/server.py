"""The admin port: /metrics, /healthz, /readyz and JSON views of the routing state.

A small HTTP/1.1 server on asyncio.Protocol and httptools, like the data plane, so it runs in the
same event loop as the router and reads the live routing tables without locks or copies. It is
GET-only and strict: anything else is answered with an error, and malformed or oversized requests
close the connection.

In a cluster only a deployment's coordinator holds its in-flight counts, queue and scaling state;
the app then passes `overlays`, which supplies per deployment what to show instead of this
instance's own (empty) table: the coordinator's document and where it came from.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, cast

import httptools

from inferfront.telemetry.metrics import DeploymentView, Metrics

logger = logging.getLogger(__name__)

MAX_URL_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 64 * 1024  # GET bodies are read and ignored, up to this much
IDLE_TIMEOUT_S = 60.0
# After a final response, read and discard for up to this long before closing: closing with
# unread input makes the kernel send a reset, which can destroy the response in flight.
LINGER_S = 2.0

JSON_TYPE = "application/json"


class Response:
    """A complete response: status, content type, body and any extra header lines."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = JSON_TYPE,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


Handler = Callable[[], Response | Awaitable[Response]]
# Deployment key ("endpoint/name") -> fields that replace or extend its document.
Overlays = Mapping[str, Mapping[str, Any]]


def json_response(status: int, document: object, **headers: str) -> Response:
    # default=str: a datetime or similar in an app-supplied view should not turn into a 500.
    body = json.dumps(document, separators=(",", ":"), default=str).encode() + b"\n"
    return Response(status, body, JSON_TYPE, tuple(headers.items()))


def deployments_document(
    views: Iterable[DeploymentView], overlays: Overlays | None = None
) -> dict[str, Any]:
    """GET /admin/v1/deployments: deployments grouped by endpoint, in the provider's order;
    a deployment's entry in `overlays` (by "endpoint/name") replaces or adds fields."""
    endpoints: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        document = deployment_document(view)
        if overlays:
            document.update(overlays.get(f"{view.endpoint}/{view.name}", {}))
        endpoints.setdefault(view.endpoint, []).append(document)
    return {
        "endpoints": [
            {"name": name, "deployments": deployments} for name, deployments in endpoints.items()
        ]
    }


def deployment_document(view: DeploymentView) -> dict[str, Any]:
    """One deployment's entry, from this process's table and counters."""
    table = view.table
    return {
        "name": view.name,
        "queue_length": table.queued,
        "inflight": table.inflight,
        "limit_per_replica": table.limit,
        "max_queued": table.max_queued,
        "replicas": _replica_documents(view),
        "scaling": view.scaling_snapshot(),
        "responses": {str(code): n for code, n in sorted(view.stats.responses.items())},
    }


def _replica_documents(view: DeploymentView) -> list[dict[str, Any]]:
    """Replicas in the routing table, then replicas only the lifecycle knows (e.g. starting)."""
    states = view.replica_states()
    documents = [
        {
            "name": replica.name,
            "address": replica.address,
            "state": states.get(replica.name, "ready" if replica.routable else "unready"),
            "inflight": replica.inflight,
        }
        for replica in view.table.replicas.values()
    ]
    documents.extend(
        {"name": name, "address": None, "state": state, "inflight": 0}
        for name, state in states.items()
        if name not in view.table.replicas
    )
    return documents


class AdminServer:
    """Serves the admin routes; `add_json_route` lets the app publish more read-only views."""

    def __init__(
        self,
        metrics: Metrics,
        deployments: Callable[[], Iterable[DeploymentView]],
        ready: Callable[[], tuple[bool, str] | Awaitable[tuple[bool, str]]],
        *,
        idle_timeout: float = IDLE_TIMEOUT_S,
        overlays: Callable[[], Awaitable[Overlays]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._deployments = deployments
        self._ready = ready
        self._overlays = overlays
        self.idle_timeout = idle_timeout
        self._routes: dict[str, Handler] = {
            "/metrics": self._serve_metrics,
            "/healthz": lambda: json_response(200, {"status": "ok"}),
            "/readyz": self._serve_ready,
            "/admin/v1/deployments": self._serve_deployments,
        }
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_AdminConnection] = set()
        self.port: int | None = None

    def add_json_route(self, path: str, fn: Callable[[], object]) -> None:
        """Serve GET `path` as 200 with `fn()` as JSON. `fn` may return an awaitable."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        if path in self._routes:
            raise ValueError(f"route {path} already exists")
        self._routes[path] = lambda: _json_result(fn())

    async def start(self, host: str, port: int) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AdminConnection(self), host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.close()
        await server.wait_closed()

    # -- request handling -------------------------------------------------------------------

    def respond(self, method: bytes, path: str) -> Response | Awaitable[Response]:
        handler = self._routes.get(path)
        if handler is None:
            return json_response(404, {"error": "not found", "path": path})
        if method != b"GET":
            return json_response(405, {"error": "method not allowed"}, Allow="GET")
        try:
            return handler()
        except Exception:
            logger.exception("admin route %s failed", path)
            return json_response(500, {"error": "internal error"})

    def _serve_metrics(self) -> Response:
        body, content_type = self._metrics.render()
        return Response(200, body, content_type)

    def _serve_deployments(self) -> Response | Awaitable[Response]:
        if self._overlays is None:
            return json_response(200, deployments_document(self._deployments()))
        return self._serve_deployments_with_overlays(self._overlays)

    async def _serve_deployments_with_overlays(
        self, overlays: Callable[[], Awaitable[Overlays]]
    ) -> Response:
        fetched = await overlays()
        # Views read after the await: they are then as fresh as what was fetched.
        return json_response(200, deployments_document(self._deployments(), fetched))

    def _serve_ready(self) -> Response | Awaitable[Response]:
        result = self._ready()
        if inspect.isawaitable(result):
            return _await_ready(result)
        return _ready_response(*result)


def _ready_response(ready: bool, reason: str) -> Response:
    if ready:
        return json_response(200, {"status": "ready"})
    return json_response(503, {"status": "not ready", "reason": reason})


async def _await_ready(result: Awaitable[tuple[bool, str]]) -> Response:
    return _ready_response(*await result)


def _json_result(result: object) -> Response | Awaitable[Response]:
    if inspect.isawaitable(result):
        return _await_json(result)
    return json_response(200, result)


async def _await_json(result: Awaitable[object]) -> Response:
    return json_response(200, await result)


class _Request:
    __slots__ = ("http_10", "keep_alive", "method", "path")

    def __init__(self, method: bytes, path: str, keep_alive: bool, http_10: bool) -> None:
        self.method = method
        self.path = path
        self.keep_alive = keep_alive
        self.http_10 = http_10


class _Reject(Exception):
    """A request broke a limit; answered with `status`, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _AdminConnection(asyncio.Protocol):
    """One client connection. Requests are answered strictly in order (pipelining allowed)."""

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[_Request | _Reject] = deque()
        self._task: asyncio.Task[None] | None = None  # an async handler in progress
        self._write_paused = False
        self._read_paused = False
        self._broken = False  # parse error seen or last response sent: ignore further bytes
        self._done = False  # last response sent: lingering until the client closes
        self._idle: asyncio.TimerHandle | None = None
        self._url = bytearray()
        self._header_count = 0
        self._header_bytes = 0
        self._body_bytes = 0
        self._reject: _Reject | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._server._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return  # answered for the last time; lingering until the client closes
        self._arm_idle_timer()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_Reject(400, "protocol upgrade not supported"))
        except httptools.HttpParserCallbackError:
            self._fail(self._reject or _Reject(400, "bad request"))
        except httptools.HttpParserError:
            self._fail(_Reject(400, "bad request"))
        self._process()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._process()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._header_count = 0
        self._header_bytes = 0
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            self._raise(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            self._raise(431, "request headers too large")

    def on_headers_complete(self) -> None:
        # llhttp would treat the rest of the stream as another protocol; refuse before the
        # request completes so it is never answered as a plain GET.
        if self._parser.should_upgrade():
            self._raise(400, "protocol upgrade not supported")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            self._raise(413, "request body too large")

    def on_message_complete(self) -> None:
        parser = self._parser
        path = bytes(self._url).split(b"?", 1)[0].decode("latin-1")
        self._pending.append(
            _Request(
                parser.get_method(),
                path,
                parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
            )
        )

    def _raise(self, status: int, message: str) -> None:
        # httptools wraps callback exceptions; remember which limit it was.
        self._reject = _Reject(status, message)
        raise self._reject

    # -- answering --------------------------------------------------------------------------

    def _fail(self, reject: _Reject) -> None:
        """Answer what was complete before the error, then `reject`, then close."""
        self._broken = True
        self._pending.append(reject)

    def _process(self) -> None:
        while self._pending and self._task is None and not self._write_paused:
            if self._transport is None or self._transport.is_closing():
                self._pending.clear()
                return
            item = self._pending.popleft()
            if isinstance(item, _Reject):
                self._write(json_response(item.status, {"error": item.message}), item, False)
                return
            response = self._server.respond(item.method, item.path)
            if isinstance(response, Response):
                self._write(response, item, item.keep_alive)
            else:
                self._task = self._loop.create_task(self._finish(response, item))
        self._set_reading(not self._pending and self._task is None and not self._write_paused)

    async def _finish(self, pending: Awaitable[Response], request: _Request) -> None:
        try:
            response = await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("admin route %s failed", request.path)
            response = json_response(500, {"error": "internal error"})
        self._task = None
        self._write(response, request, request.keep_alive)
        self._process()

    def _write(self, response: Response, request: _Request | _Reject, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        head = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"]
        head.append(f"Content-Type: {response.content_type}")
        head.append(f"Content-Length: {len(response.body)}")
        head.append("Cache-Control: no-store")
        head.extend(f"{name}: {value}" for name, value in response.headers)
        if not keep_alive:
            head.append("Connection: close")
        elif isinstance(request, _Request) and request.http_10:
            head.append("Connection: keep-alive")
        head_only = isinstance(request, _Request) and request.method == b"HEAD"
        body = b"" if head_only else response.body
        transport.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        if keep_alive:
            self._arm_idle_timer()
        else:
            self._finish_connection()

    def _finish_connection(self) -> None:
        """No more responses on this connection: half-close, discard input, close soon."""
        self._broken = self._done = True
        self._pending.clear()
        transport = self._transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
            self._set_reading(True)
            self._arm_idle_timer(LINGER_S)
        else:
            transport.close()

    def _set_reading(self, wanted: bool) -> None:
        """Stop reading while responses are backed up, so a client cannot queue without bound."""
        transport = self._transport
        reading = not self._read_paused
        if transport is None or transport.is_closing() or wanted == reading:
            return
        if wanted:
            transport.resume_reading()
        else:
            transport.pause_reading()
        self._read_paused = not wanted

    # -- idle connections -------------------------------------------------------------------

    def _arm_idle_timer(self, delay: float | None = None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if delay is None:
            delay = self._server.idle_timeout
        self._idle = self._loop.call_later(delay, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if not self._done and (self._task is not None or self._pending):
            self._arm_idle_timer()  # still working on this client's requests
        else:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
