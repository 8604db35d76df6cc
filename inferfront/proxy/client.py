"""The client side of the proxy: one `ClientConnection` per accepted TCP connection.

It parses requests with llhttp (httptools) with no leniency turned on, and runs them one at a
time in arrival order: pipelined requests wait in `exchanges` (bounded: reading pauses once
PIPELINE_DEPTH requests wait for their answers).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools

from inferfront.proxy.exchange import DONE, HEAD, Exchange, RequestRejected

if TYPE_CHECKING:
    from inferfront.proxy.server import Proxy


# Requests a client may send ahead of their answers before reading pauses.
PIPELINE_DEPTH = 4


class ClientConnection(asyncio.Protocol):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.endpoints = proxy.endpoints
        self.limits = proxy.limits
        self.ids = proxy.ids
        self.writes = proxy.writes
        self.retries = proxy.retries
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.exchanges: deque[Exchange] = deque()
        self.parsing: Exchange | None = None  # the exchange the parser is filling
        self.peer_ip = b"unknown"
        self.peer = ""
        self.write_paused = False
        self.feeding = False  # inside parser.feed_data: upstream writes wait for its end
        self.data = b""  # the read being parsed
        self.closed = False
        self.parse_failed = False
        # Reasons to stop reading from the client, each a flag (reading resumes when none hold).
        self.reading_paused_for_body = False  # a queued request's body is buffered past the bound
        self._paused_for_upstream = False  # the replica is not taking the body as fast
        self._paused_for_answer = False  # a complete request waits for its answer
        self._reading = True

    # ======================================================================================
    # asyncio.Protocol
    # ======================================================================================

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode()
            self.peer = f"{peer[0]}:{peer[1]}"
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.parse_failed or self.closed:
            return
        parsing = self.parsing
        in_head = parsing is not None and not parsing.method
        in_chunks = parsing is not None and parsing.chunked_in and parsing.method != b""
        if in_chunks:
            body_before, chunks_before = parsing.body_received, parsing.chunks  # type: ignore[union-attr]
        self.feeding = True
        self.data = data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_parsing()  # the exchange was already marked for a 501 and close
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
        finally:
            self.feeding = False
            self.data = b""
        if parsing is not None and parsing is self.parsing and not self.parse_failed:
            # llhttp buffers an unfinished field without limit, and accepts any amount of
            # chunk extensions: bound both here.
            if in_head and not parsing.method:
                self._bound_unfinished_head(parsing, len(data))
            elif in_chunks:
                framing = len(data) - (parsing.body_received - body_before)
                self._bound_chunk_framing(parsing, framing - 32 * (parsing.chunks - chunks_before))
        head = self.exchanges[0] if self.exchanges else None
        if head is not None and head.state != HEAD:
            head.flush_upstream()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        exchanges = list(self.exchanges)
        self.exchanges.clear()
        for exchange in exchanges:
            exchange.client_lost()

    def _bound_unfinished_head(self, exchange: Exchange, size: int) -> None:
        exchange.unfinished_head += size
        limits = self.limits
        if exchange.unfinished_head > limits.max_request_line_bytes + limits.max_header_bytes:
            self._stop_parsing()
            exchange.reject = (431, "The request's header section is too large.")
            exchange.close_after = True
            if self.exchanges and self.exchanges[0] is exchange:
                exchange.start()

    def _bound_chunk_framing(self, exchange: Exchange, overhead: int) -> None:
        if overhead <= 0:
            return
        exchange.chunk_overhead += overhead
        if exchange.chunk_overhead > self.limits.max_header_bytes:
            self._stop_parsing()
            exchange.fail_request(400, "Too much chunk framing (extensions) for the data sent.")

    def eof_received(self) -> bool:
        # A FIN cannot tell close() from shutdown(SHUT_WR); clients that give up close, so
        # take it as the client leaving and free its slots now (nginx does the same).
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchanges:
            # Writes are made at the end of a loop turn, after the exchange looked at
            # write_paused: stop reading the answer from here.
            self.exchanges[0].client_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchanges:
            self.exchanges[0].client_write_resumed()

    # ======================================================================================
    # httptools callbacks
    # ======================================================================================

    def on_message_begin(self) -> None:
        if self.parse_failed:
            raise _Halt  # a rejected request closes the connection: parse nothing after it
        exchange = Exchange(self)
        self.parsing = exchange
        self.exchanges.append(exchange)

    def on_url(self, url: bytes) -> None:
        self.parsing.on_url(url)  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.parsing.on_header(name, value)  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        exchange = self.parsing
        exchange.on_headers_complete(self.parser)  # type: ignore[union-attr]
        if exchange.http10 and exchange.reject is None and not self._says_http(exchange.url):  # type: ignore[union-attr]
            exchange.reject = (505, "Only HTTP/1.0 and HTTP/1.1 are supported.")  # type: ignore[union-attr]
            exchange.close_after = True  # type: ignore[union-attr]
        if exchange.reject is not None and exchange.close_after:  # type: ignore[union-attr]
            self._stop_parsing()
        if self.exchanges[0] is exchange:
            exchange.start()  # type: ignore[union-attr]

    def on_chunk_header(self) -> None:
        self.parsing.chunks += 1  # type: ignore[union-attr]

    def _says_http(self, url: bytes) -> bool:
        """llhttp reports `GET / RTSP/1.0` as version 1.0 without the protocol's name: look
        at the request line in this read (best effort: a line split across reads passes)."""
        data = self.data
        at = data.find(b" " + url + b" ")
        if at < 0:
            return True
        rest = data[at + len(url) + 2 :].lstrip(b" ")
        return rest.startswith(b"HTTP/")

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange.state == DONE:  # type: ignore[union-attr]
            if exchange.close_after:  # type: ignore[union-attr]
                raise _Halt  # answered already and closing: the rest is not wanted
            return  # answered early (e.g. an error); the body is read and dropped
        exchange.on_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        exchange = self.parsing
        self.parsing = None
        exchange.on_message_complete()  # type: ignore[union-attr]
        if len(self.exchanges) >= PIPELINE_DEPTH and exchange.state != DONE:  # type: ignore[union-attr]
            # Requests pipelined ahead of their answers: read no more until one is answered.
            # (Not paused for the usual one-at-a-time client: pausing and resuming reading
            # costs two epoll_ctl calls per request.)
            self._paused_for_answer = True
            self._update_reading()

    # ======================================================================================
    # Parse failures: answer in order, then close; never parse another byte
    # ======================================================================================

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if isinstance(cause, _Halt):
            return
        self._stop_parsing()
        exchange = self.parsing
        self.parsing = None
        if isinstance(cause, RequestRejected):
            status, message = cause.status, cause.message
        elif isinstance(cause, BaseException):
            raise cause  # our own bug inside a callback: let the protocol's handler answer 500
        else:
            status, message = 400, f"Malformed request: {exc}."
        if exchange is None:
            # The bytes after a complete request were bad (e.g. data after Connection: close):
            # answer what came before, then close.
            if self.exchanges:
                self.exchanges[-1].close_after = True
            else:
                self._close()
            return
        exchange.close_after = True
        if exchange.state == HEAD:
            exchange.reject = (status, message)
            if self.exchanges[0] is exchange:
                exchange.start()
        else:
            exchange.fail_request(status, message)

    def _stop_parsing(self) -> None:
        self.parse_failed = True
        if self.transport is not None and self._reading:
            self._reading = False
            self.transport.pause_reading()

    # ======================================================================================
    # Used by exchanges
    # ======================================================================================

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writes.write(self.transport, data)  # type: ignore[arg-type]

    def exchange_done(self, exchange: Exchange, status: int, abort: bool) -> None:
        self.proxy.record(exchange, status)
        if not self.exchanges or self.exchanges[0] is not exchange:
            return  # connection already gone
        self.exchanges.popleft()
        if abort:
            self._abort()
            return
        if exchange.close_after:
            self._stop_parsing()  # not one more byte of this connection is a request
            self._close()
            return
        self._paused_for_answer = False
        self.reading_paused_for_body = False
        self._paused_for_upstream = False
        if self.exchanges:
            following = self.exchanges[0]
            if following.state == HEAD and (following.method or following.reject):
                following.start()
                return
        if self.parse_failed and not self.exchanges:
            self._close()
            return
        self._update_reading()

    def pause_for_body(self) -> None:
        self.reading_paused_for_body = True
        self._update_reading()

    def resume_body_reading(self) -> None:
        self.reading_paused_for_body = False
        self._update_reading()

    def pause_for_upstream(self) -> None:
        self._paused_for_upstream = True
        self._update_reading()

    def resume_for_upstream(self) -> None:
        self._paused_for_upstream = False
        self._update_reading()

    def _update_reading(self) -> None:
        want = not (
            self.parse_failed
            or self.closed
            or self.reading_paused_for_body
            or self._paused_for_upstream
            or self._paused_for_answer
        )
        if want != self._reading and self.transport is not None:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.writes.flush()  # the held answer first
            self.transport.close()  # after what is buffered is written

    def _abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.writes.flush()  # what the client was sent of the answer still goes out
            self.transport.abort()


class _Halt(Exception):
    """Stops llhttp mid-buffer once the connection is known to close."""
