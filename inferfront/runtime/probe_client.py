"""The HTTP client behind health probes: one GET, judged by its status line.

A small asyncio protocol rather than asyncio streams or a client library: a router watching
1,000 replicas probes 100 times a second. `ProbeClient` also keeps its connection between
probes (as Envoy's health checks do by default): on loopback, opening and closing a TCP
connection costs the router several times the probe itself.
"""

from __future__ import annotations

import asyncio

import httptools

_MAX_POLITE_BODY = 64 * 1024  # probe bodies larger than this are not read, and not reused


def _request(host: str, port: int, path: str, keep_alive: bool) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        "User-Agent: inferfront-probe\r\n"
        "Accept: */*\r\n" + ("" if keep_alive else "Connection: close\r\n") + "\r\n"
    ).encode("latin-1")


def _healthy(status: int | None) -> bool:
    return status is not None and 200 <= status < 400


async def probe_http(host: str, port: int, path: str, timeout: float) -> bool:
    """GET http://host:port{path} once on a new connection; True for a 200-399 status line
    within `timeout` seconds. Any error is a failure."""
    client = ProbeClient(host, port, path, timeout, keep_alive=False)
    try:
        return await client.probe()
    finally:
        client.close()


class ProbeClient:
    """Probes one target, reusing the connection while the target keeps it open.

    A kept connection the target closed meanwhile is not a failure: a probe that gets no byte
    of answer on a reused connection is sent again once on a new one. `fresh_connection()`
    makes the next probe connect anew (the proxy saw connects fail: a kept connection would
    hide exactly that).
    """

    def __init__(
        self, host: str, port: int, path: str, timeout: float, keep_alive: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.keep_alive = keep_alive
        self._request = _request(host, port, path, keep_alive)
        self._conn: _ProbeConnection | None = None
        self.connections_opened = 0  # for tests and the curious: reuse shows as a low count

    async def probe(self) -> bool:
        """One probe: True for a 200-399 status line within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._conn
                if conn is not None and conn.usable:
                    status = await conn.exchange(self._request)
                    if status is not None or conn.answered:
                        return self._keep_or_drop(conn, status)
                    self._drop()  # closed by the target while idle: not the target's failure
                conn = await self._connect()
                return self._keep_or_drop(conn, await conn.exchange(self._request))
        except (OSError, TimeoutError):
            # The status stays as far as it got: a slow body after a good status line is fine.
            conn = self._conn
            self._drop()
            return _healthy(conn.status if conn is not None else None)

    def fresh_connection(self) -> None:
        """Close the kept connection, if any: the next probe opens its own."""
        self._drop()

    def close(self) -> None:
        self._drop()

    async def _connect(self) -> _ProbeConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_ProbeConnection, self.host, self.port)
        self._conn = conn
        self.connections_opened += 1
        return conn

    def _keep_or_drop(self, conn: _ProbeConnection, status: int | None) -> bool:
        if not (self.keep_alive and conn.usable):
            self._drop()
        return _healthy(status)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _ProbeConnection(asyncio.Protocol):
    """One connection to a probe target: sends a probe request, reads the status line, then
    the headers and a small Content-Length body, so the answer ends cleanly and the connection
    can carry the next probe. Never waits for a body of unknown or large size (a target that
    streams would hold the probe until its timeout): the answer counts, the connection is
    closed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._done: asyncio.Future[int | None] | None = None
        self.status: int | None = None
        self.answered = False  # some byte of the current probe's answer arrived
        self._content_length: int | None = None
        self._headers_done = False
        self._reusable = False  # the last answer ended cleanly with keep-alive
        self._closed = False

    @property
    def usable(self) -> bool:
        """Idle, open and in step: it may carry the next probe."""
        transport = self.transport
        return (
            self._reusable
            and not self._closed
            and transport is not None
            and (not transport.is_closing())
        )

    async def exchange(self, request: bytes) -> int | None:
        """Send one probe request; the answer's status, or None when there was none."""
        assert self.transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self.status = None
        self.answered = False
        self._content_length = None
        self._headers_done = False
        self._reusable = False
        self.transport.write(request)
        return await self._done

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            self._closed = True  # bytes nobody asked for: out of step, never reuse
            self._finish()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._closed = True
            self._finish()  # garbage: no status unless a good status line came first
            return
        if self._headers_done and not self._done.done():
            # Headers read, message not over (a bodiless answer completes in the same feed):
            # wait only for a small body of known length.
            length = self._content_length
            if length is None or length > _MAX_POLITE_BODY:
                self._closed = True  # the body is not read: the connection cannot be reused
                self._finish()

    def eof_received(self) -> bool | None:
        self._closed = True
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._finish()

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done is None or self._done.done():
            self._closed = True  # a second answer to one request: out of step, never reuse

    def on_status(self, _reason: bytes) -> None:
        self.status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length" and value.strip().isdigit():
            self._content_length = int(value)

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_message_complete(self) -> None:
        self._reusable = self._parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(self.status)
