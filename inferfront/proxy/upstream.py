"""Connections to replicas: a keep-alive pool per replica address, and the response side.

An `UpstreamConnection` carries one request at a time for its `Exchange`; the exchange writes the
request and receives the parsed response through the callbacks below. When the response completes
on a reusable connection it goes back to its pool's idle list (LIFO, so hot connections stay hot).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from inferfront.proxy.http import HOP_BY_HOP

# Response fields never forwarded as the replica sent them: hop-by-hop and framing fields, and
# the ids and deployment name the router sets itself.
RESPONSE_DROP = HOP_BY_HOP | {
    b"x-request-id",
    b"x-ms-request-id",
    b"azureml-model-deployment",
    b"x-ms-client-request-id",
}

if TYPE_CHECKING:
    from inferfront.proxy.exchange import Exchange


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "content_length",
        "exchange",
        "head",
        "parser",
        "pool",
        "reusable",
        "transport",
        "write_paused",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reusable = True
        self.write_paused = False
        # The response head as it will be forwarded: hop-by-hop and framing fields dropped.
        # Kept here rather than in the exchange: one Python call per header, not two.
        self.head: list[bytes] = []
        self.content_length: int | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes from an idle replica connection: the replica broke framing. Never reuse it.
            self.reusable = False
            self.transport.close()  # type: ignore[union-attr]
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.reusable = False
            exchange.upstream_failed("replica answered with a protocol upgrade")
        except httptools.HttpParserError as exc:
            self.reusable = False
            exchange.upstream_failed(f"replica sent a malformed response: {exc}")
        else:
            exchange.flush_to_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        exchange = self.exchange
        self.pool.forget(self)
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()

    # -- httptools callbacks (response) -----------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname in RESPONSE_DROP:
            if lname == b"content-length":
                self.content_length = int(value)  # llhttp has validated it
            return
        self.head += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        if not parser.should_keep_alive():
            self.reusable = False
        head, content_length = self.head, self.content_length
        self.head = []
        self.content_length = None
        self.exchange.upstream_headers_complete(  # type: ignore[union-attr]
            parser.get_status_code(), head, content_length
        )

    def on_body(self, body: bytes) -> None:
        self.exchange.upstream_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        # The exchange detaches this connection (and pools it) when its response is complete.
        if self.exchange is not None:
            self.exchange.upstream_message_complete()

    # -- used by the exchange ---------------------------------------------------------------

    def abort(self) -> None:
        """Drop the exchange and the connection (timeout, client gone, broken response)."""
        self.exchange = None
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one replica address."""

    __slots__ = ("_connecting", "host", "idle", "loop", "max_idle", "port")

    def __init__(self, host: str, port: int, max_idle: int = 256) -> None:
        self.host = host
        self.port = port
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.loop = asyncio.get_event_loop()

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def connect(
        self, exchange: Exchange, on_done: Callable[[UpstreamConnection | None, str], None]
    ) -> asyncio.Task:
        """Open a new connection for `exchange`; calls on_done(conn, "") or on_done(None, why)."""

        async def open_connection() -> None:
            try:
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
            except OSError as exc:
                on_done(None, exc.strerror or str(exc))
            else:
                on_done(conn, "")

        return self.loop.create_task(open_connection())

    def release(self, conn: UpstreamConnection) -> None:
        if (
            conn.reusable
            and not conn.write_paused
            and len(self.idle) < self.max_idle
            and conn.transport is not None
            and not conn.transport.is_closing()
        ):
            self.idle.append(conn)  # llhttp resets itself for the next keep-alive response
        elif conn.transport is not None:
            conn.transport.close()

    def forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


class UpstreamPools:
    """One pool per replica address for the whole process: deployments (and endpoints) that
    share a replica share its warm connections instead of each opening their own."""

    def __init__(self) -> None:
        self.by_address: dict[str, UpstreamPool] = {}
        self._users: dict[str, int] = {}

    def attach(self, host: str, port: int) -> None:
        address = f"{host}:{port}"
        if address not in self.by_address:
            self.by_address[address] = UpstreamPool(host, port)
        self._users[address] = self._users.get(address, 0) + 1

    def detach(self, address: str) -> None:
        users = self._users.get(address, 0) - 1
        if users > 0:
            self._users[address] = users
            return
        self._users.pop(address, None)
        pool = self.by_address.pop(address, None)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        for pool in self.by_address.values():
            pool.close()
