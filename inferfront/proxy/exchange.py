"""One request's journey: parsed head -> routing decision -> replica -> response streamed back.

Callback-driven on purpose: no task, future or coroutine per request on the fast path (a free slot
and an idle pooled connection). The client side (`ClientConnection`) feeds request events in, the
upstream side (`UpstreamConnection`) feeds response events in, and the routing table grants a slot
either at once or later through `grant()` when the request had to queue.

States: HEAD (parsing) -> QUEUED (waiting for a slot) -> CONNECTING -> UPSTREAM (request sent,
response streaming) -> DONE. Any state can end early with an error answer or an abort.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING

from inferfront.proxy import http
from inferfront.proxy.ids import clean_client_request_id, valid_request_id
from inferfront.proxy.routes import resolve
from inferfront.routing.slots import QueueFull, Replica

if TYPE_CHECKING:
    from inferfront.endpoints import DeploymentState, EndpointState
    from inferfront.proxy.client import ClientConnection
    from inferfront.proxy.mirror import MirrorCopy
    from inferfront.proxy.upstream import UpstreamConnection

HEAD, QUEUED, CONNECTING, UPSTREAM, DONE = range(5)

# While a request waits for a slot its body is held; past this, stop reading from the client.
BUFFER_WHILE_WAITING = 1 << 20

_CHUNKED = b"transfer-encoding: chunked\r\n"
_JSON = b"content-type: application/json\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_NO_BODY_STATUS = frozenset({204, 304})


class RequestRejected(Exception):
    """Raised from parser callbacks to stop parsing: answer `status`, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Exchange:
    __slots__ = (
        "active",
        "attempts",
        "authorization",
        "body_complete",
        "body_received",
        "body_sent_upstream",
        "bytes_out",
        "chunk_overhead",
        "chunked_in",
        "chunked_out",
        "chunks",
        "client",
        "client_id",
        "close_after",
        "connection_tokens",
        "content_length",
        "decided_by",
        "deployment",
        "endpoint",
        "expect_continue",
        "field_count",
        "forwarded_for",
        "header_bytes",
        "headers",
        "host",
        "host_count",
        "http10",
        "is_head",
        "method",
        "mirror_copy",
        "out",
        "pending",
        "pin",
        "queue_timer",
        "reject",
        "replay",
        "replica",
        "replica_name",
        "request_id",
        "resp_head_sent",
        "resp_started",
        "resp_status",
        "state",
        "t_granted",
        "t_start",
        "t_upstream_done",
        "ticket",
        "unfinished_head",
        "upconn",
        "upstream_head",
        "url",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.state = HEAD
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.field_count = 0  # every header field, forwarded or dropped
        self.unfinished_head = 0  # bytes read while this head was incomplete
        self.chunks = 0  # chunk headers seen in a chunked body
        self.chunk_overhead = 0  # framing bytes beyond the data (extensions): bounded
        self.connection_tokens: frozenset[bytes] = frozenset()
        self.host: bytes | None = None
        self.host_count = 0
        self.authorization: bytes | None = None
        self.pin: bytes | None = None
        self.request_id: str = ""
        self.client_id: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.content_length: int | None = None
        self.chunked_in = False
        self.expect_continue = False
        self.reject: tuple[int, str] | None = None
        self.body_received = 0
        self.body_complete = False
        self.body_sent_upstream = False
        self.pending: list[bytes] = []  # body bytes not yet written upstream (while waiting)
        self.replay: list[bytes] | None = []  # copy of the body for retries; None once too big
        self.out: list[bytes] = []  # response bytes to write to the client after this parse round
        self.close_after = False
        self.endpoint: EndpointState | None = None
        self.deployment: DeploymentState | None = None
        self.replica: Replica | None = None
        self.replica_name: str | None = None
        self.mirror_copy: MirrorCopy | None = None
        self.upconn: UpstreamConnection | None = None
        self.upstream_head = b""
        self.queue_timer: asyncio.TimerHandle | None = None
        self.attempts = 0
        self.ticket = 0  # a cluster broker's number for this request while it waits
        self.decided_by: str | None = None  # the coordinator that granted the slot, if remote
        self.active = False  # Waiter protocol: True while queued
        self.resp_started = False
        self.resp_head_sent = False
        self.resp_status = 0
        self.chunked_out = False
        self.bytes_out = 0
        self.t_start = 0.0
        self.t_granted = 0.0
        self.t_upstream_done = 0.0
        self.http10 = False
        self.is_head = False
        self.method = b""

    # ======================================================================================
    # Request head, fed by the client parser
    # ======================================================================================

    def on_url(self, part: bytes) -> None:
        self.url += part
        if len(self.url) > self.client.limits.max_request_line_bytes:
            raise RequestRejected(414, "The request URL is too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.client.limits
        self.header_bytes += len(name) + len(value) + 4
        self.field_count += 1
        if self.header_bytes > limits.max_header_bytes or self.field_count > limits.max_headers:
            raise RequestRejected(431, "The request's header section is too large.")
        lname = name.lower()
        if lname.startswith(b"proxy"):
            return  # Proxy (httpoxy) and Proxy-*: meant for proxies, never for the model
        if lname in _SPECIAL:
            self._special_header(lname, value)
            return
        self.headers.append((name, value))

    def _special_header(self, lname: bytes, value: bytes) -> None:
        if lname == b"host":
            self.host = value.strip()
            self.host_count += 1
            self.headers.append((b"Host", self.host))
        elif lname == b"authorization":
            self.authorization = value.strip()  # checked by the router, never forwarded
        elif lname == b"content-length":
            self.content_length = int(value)  # llhttp has validated digits and uniqueness
        elif lname == b"transfer-encoding":
            self._transfer_encoding(value)
        elif lname == b"expect":
            self.expect_continue = value.strip().lower() == b"100-continue"
        elif lname == b"azureml-model-deployment":
            self.pin = value.strip()
            self.headers.append((b"azureml-model-deployment", self.pin))
        elif lname == b"x-request-id":
            value = value.strip()
            if valid_request_id(value):
                self.request_id = value.decode()
        elif lname == b"x-ms-client-request-id":
            self.client_id = clean_client_request_id(value.strip())
        elif lname == b"x-forwarded-for":
            self.forwarded_for = value.strip()
        elif lname == b"connection":
            # Fields the client names here are for this hop only (RFC 9110 7.6.1).
            tokens = {t.strip().lower() for t in value.split(b",")} - {b"host", b""}
            self.connection_tokens = self.connection_tokens | tokens
        # other special names (hop-by-hop, smuggling aliases, ids we set) are dropped

    def _transfer_encoding(self, value: bytes) -> None:
        # llhttp only accepts a request whose last coding is chunked; anything before it would
        # have to be decoded by someone downstream, which nobody here does.
        if value.strip().lower() != b"chunked":
            self.reject = (501, "Only the 'chunked' transfer coding is supported.")
        self.chunked_in = True

    def on_headers_complete(self, parser) -> None:
        client = self.client
        self.method = parser.get_method()
        self.is_head = self.method == b"HEAD"
        version = parser.get_http_version()
        self.http10 = version == "1.0"
        self.close_after = not parser.should_keep_alive()
        self.t_start = perf_counter()
        if not self.request_id:
            self.request_id = client.ids.new()
        if self.http10:
            self.expect_continue = False  # no 1xx answers to HTTP/1.0 (RFC 9110 15.2)
        if self.reject is not None:
            self.close_after = True
            return
        if version not in ("1.1", "1.0"):
            self._reject_and_close(505, "Only HTTP/1.0 and HTTP/1.1 are supported.")
        elif self.method == b"CONNECT" or parser.should_upgrade():
            self._reject_and_close(501, "Protocol upgrades and CONNECT are not supported.")
        elif self.host_count > 1 or (self.host_count == 0 and not self.http10):
            self._reject_and_close(400, "A request needs exactly one Host header.")
        elif self.chunked_in and self.http10:
            self._reject_and_close(400, "Transfer-Encoding is not allowed on HTTP/1.0.")
        elif self.content_length is not None and self.content_length > client.limits.max_body_bytes:
            self._reject_and_close(413, "The request body is larger than this router accepts.")
        if self.reject is not None:
            self.close_after = True

    def _reject_and_close(self, status: int, message: str) -> None:
        self.reject = (status, message)
        self.close_after = True

    # ======================================================================================
    # Starting: the exchange is at the head of its connection's pipeline
    # ======================================================================================

    def start(self) -> None:
        if self.reject is not None:
            status, message = self.reject
            self.close_after = True
            self.respond_error(status, message)
            return
        client = self.client
        route = resolve(client.endpoints, self.url, self.host)
        if route is None:
            self.respond_error(404, http.NO_ROUTE_MESSAGE)
            return
        endpoint, path, query = route
        self.endpoint = endpoint
        if not endpoint.authorized(self.authorization):
            self.respond_error(401, "Missing or invalid key: send 'Authorization: Bearer <key>'.")
            return
        if self.pin is not None:
            deployment = endpoint.deployments.get(self.pin)
            if deployment is None:
                self.respond_error(
                    404, f"Deployment '{self.pin.decode(errors='replace')}' not found."
                )
                return
        else:
            deployment = endpoint.pick()
            if deployment is None:
                self.respond_error(404, http.NO_ROUTE_MESSAGE)
                return
        self.deployment = deployment
        self.upstream_head = self._build_upstream_head(
            (deployment.scoring_route if path is None else path) + query
        )
        loop = client.loop
        # The whole-request deadline: a sweep (Proxy) fires it; no timer object per request.
        deployment.deadlines[self] = self.t_start + deployment.timeout_s
        if self.pin is None and endpoint.mirror is not None:
            client.proxy.mirror(self, endpoint)
            self._send_mirror()  # the body may be complete already
        replica = deployment.slots.try_acquire()
        if replica is not None:
            self.t_granted = self.t_start
            self._use(replica)
            return
        self.active = True
        self.state = QUEUED
        try:
            deployment.slots.enqueue(self)  # may grant at once
        except QueueFull:
            self.active = False
            self.respond_error(
                429, "Too many requests are pending for this deployment; retry later."
            )
            return
        if self.state != QUEUED:
            return
        if deployment.slots.ready_count or not deployment.scales_from_zero:
            self.queue_timer = loop.call_later(deployment.queue_wait_s, self._on_queue_timeout)
        else:
            # No replica is ready yet (scaling from zero, or all starting): wait for one,
            # bounded by the request timeout rather than the queue wait.
            deployment.queued_at_coordinator()

    def _build_upstream_head(self, target: bytes) -> bytes:
        client = self.client
        parts = [self.method, b" ", target, b" HTTP/1.1\r\n"]
        hop_only = self.connection_tokens
        for name, value in self.headers:
            if hop_only and name.lower() in hop_only:
                continue
            parts += (name, b": ", value, b"\r\n")
        peer = client.peer_ip
        xff = self.forwarded_for + b", " + peer if self.forwarded_for else peer
        parts += (
            b"X-Forwarded-For: ",
            xff,
            b"\r\nX-Forwarded-Proto: http\r\n",
            b"x-request-id: ",
            self.request_id.encode(),
            b"\r\n",
        )
        if self.host:
            parts += (b"X-Forwarded-Host: ", self.host, b"\r\n")
        if self.client_id:
            parts += (b"x-ms-client-request-id: ", self.client_id, b"\r\n")
        if self.chunked_in:
            parts.append(_CHUNKED)
        elif self.content_length is not None:
            parts.append(b"content-length: %d\r\n" % self.content_length)
        parts.append(b"\r\n")
        return b"".join(parts)

    # ======================================================================================
    # Slot and connection
    # ======================================================================================

    def grant(self, replica: Replica) -> None:
        """Waiter protocol: the routing table hands this queued request a slot."""
        if self.queue_timer is not None:
            self.queue_timer.cancel()
            self.queue_timer = None
        self.t_granted = perf_counter()
        self._use(replica)
        self.flush_upstream()

    def _use(self, replica: Replica) -> None:
        self.replica = replica
        self.replica_name = replica.name
        self.attempts += 1
        pool = replica.pool  # type: ignore[attr-defined]  # tables hold PooledReplica (endpoints.py)
        if pool is None:  # replica removed between grant and use
            self._retry_or_fail(502, "The replica went away.")
            return
        conn = pool.take_idle()
        if conn is not None:
            self._attach(conn)
            if not self.client.feeding:  # inside a read, the client flushes once at its end
                self.flush_upstream()
        else:
            self.state = CONNECTING
            pool.connect(self, self._connected)

    def _connected(self, conn: UpstreamConnection | None, why: str) -> None:
        if self.state != CONNECTING:  # gave up meanwhile (timeout, client gone)
            if conn is not None:
                conn.pool.release(conn)
            return
        if conn is None:
            self.deployment.connect_failed(self.replica, refused="refused" in why.lower())  # type: ignore[union-attr, arg-type]
            self._retry_or_fail(502, f"Could not connect to the replica: {why}.")
            return
        self.deployment.connect_succeeded(self.replica)  # type: ignore[union-attr, arg-type]
        self._attach(conn)
        self.flush_upstream()

    def _attach(self, conn: UpstreamConnection) -> None:
        self.state = UPSTREAM
        self.upconn = conn
        conn.begin(self)
        pending = self.pending
        pending.insert(0, self.upstream_head)
        if self.body_complete and self.chunked_in:
            pending.append(b"0\r\n\r\n")
        if self.expect_continue and not self.body_complete and not self.body_received:
            self.out.append(http.CONTINUE_100)
        if self.client.reading_paused_for_body:
            self.client.resume_body_reading()

    def flush_upstream(self) -> None:
        """Write what the client sent since the last round to the replica in one write (held
        to the end of the loop turn; a replica slower than the client pauses the client
        through the connection's pause_writing, `upstream_write_paused`)."""
        pending = self.pending
        if pending and self.state == UPSTREAM:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self.client.writes.write(self.upconn.transport, data)  # type: ignore[union-attr]
            self.body_sent_upstream = self.body_sent_upstream or bool(self.body_received)
        if self.out:
            self.flush_to_client()

    # ======================================================================================
    # Request body, fed by the client parser
    # ======================================================================================

    def on_body(self, chunk: bytes) -> None:
        size = len(chunk)
        self.body_received += size
        if self.body_received > self.client.limits.max_body_bytes:
            raise RequestRejected(413, "The request body is larger than this router accepts.")
        replay = self.replay
        if replay is not None:
            if self.body_received <= self.client.limits.replay_buffer_bytes:
                replay.append(chunk)
            else:
                self.replay = None
        if self.chunked_in:
            framed = (b"%x\r\n" % size, chunk, b"\r\n")
            self.pending += framed
            if self.mirror_copy is not None:
                self.mirror_copy.feed(b"".join(framed))
        else:
            self.pending.append(chunk)
            if self.mirror_copy is not None:
                self.mirror_copy.feed(chunk)
        if self.state != UPSTREAM and self.body_received > BUFFER_WHILE_WAITING:
            self.client.pause_for_body()

    def on_message_complete(self) -> None:
        self.body_complete = True
        if self.chunked_in and self.state == UPSTREAM:
            self.pending.append(b"0\r\n\r\n")
        self._send_mirror()

    def _send_mirror(self) -> None:
        copy = self.mirror_copy
        if copy is not None and self.body_complete:
            self.mirror_copy = None
            if self.chunked_in:
                copy.feed(b"0\r\n\r\n")
            copy.request_complete()

    # ======================================================================================
    # Response, fed by the upstream parser
    # ======================================================================================

    def upstream_headers_complete(
        self, status: int, head: list[bytes], content_length: int | None
    ) -> None:
        """The replica's answer head (`head`: the fields to forward, already filtered)."""
        if status < 200:
            return  # 1xx interim answers are the replica's business (we never forward Expect)
        self.resp_started = True
        self.resp_status = status
        parts = [http.status_line(status)]
        parts += head
        parts += (
            b"x-request-id: ",
            self.request_id.encode(),
            b"\r\nx-ms-request-id: ",
            self.request_id.encode(),
            b"\r\nazureml-model-deployment: ",
            self.deployment.name_bytes,
            b"\r\n",  # type: ignore[union-attr]
        )
        if self.client_id is not None:
            parts += (b"x-ms-client-request-id: ", self.client_id, b"\r\n")
        if content_length is not None and status != 204:  # a 204 has no length (RFC 9110 8.6)
            parts.append(b"content-length: %d\r\n" % content_length)
        elif status in _NO_BODY_STATUS or self.is_head:
            pass
        elif not self.http10:
            self.chunked_out = True
            parts.append(_CHUNKED)
        else:
            self.close_after = True  # HTTP/1.0 client, body of unknown length: EOF ends it
        if not self.body_complete:
            # Answered before the whole request was read: the rest of it cannot be told from
            # a next request, so the client connection ends with this answer (said up front).
            self.close_after = True
        if self.close_after:
            parts.append(_CLOSE)
        elif self.http10:
            parts.append(_KEEP_ALIVE)
        parts.append(b"\r\n")
        self.out += parts
        if self.is_head:
            # llhttp would wait for a body a HEAD answer never has; finish now, drop the conn.
            self.upconn.reusable = False  # type: ignore[union-attr]
            self._finish_upstream()

    def upstream_body(self, chunk: bytes) -> None:
        if not self.resp_started:
            return
        self.bytes_out += len(chunk)
        if self.chunked_out:
            self.out += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        else:
            self.out.append(chunk)

    def upstream_message_complete(self) -> bool:
        """The response is complete. True when the connection can serve another request."""
        if not self.resp_started:
            return False  # the end of a 1xx interim answer
        if self.state != UPSTREAM:
            return False
        if self.chunked_out:
            self.out.append(b"0\r\n\r\n")
        if not self.body_complete:
            # The replica answered before reading the whole request: that connection is out of
            # step, and so is the client's.
            self.upconn.reusable = False  # type: ignore[union-attr]
            self.close_after = True
        self._finish_upstream()
        return True

    def _finish_upstream(self) -> None:
        """The answer is complete (called from the replica connection's parser callbacks)."""
        self.t_upstream_done = perf_counter()
        conn = self.upconn
        self.upconn = None
        if conn is not None:
            conn.exchange = None
            if conn.reusable:
                # The rest of the read being parsed may still show the replica out of step (a
                # second answer): the slot, and with it this connection, go to no one before
                # that is known. The connection calls end_answer() at the end of the read.
                conn.finished = self
                return
            conn.abort()
        self.end_answer()

    def end_answer(self) -> None:
        """Give the slot back and hand the complete answer to the client."""
        replica = self.replica  # _release_slot inlined: this runs once per request
        if replica is not None:
            self.replica = None
            self.deployment.slots.release(replica)  # type: ignore[union-attr]
        self.flush_to_client()
        self._done(self.resp_status)

    def flush_to_client(self) -> None:
        out = self.out
        if out:
            data = b"".join(out)
            out.clear()
            self.client.write(data)
            # Until the answer's head is written, a broken answer can still become a clean 502.
            self.resp_head_sent = self.resp_started
            if self.client.write_paused:
                self.client_write_paused()

    def client_write_paused(self) -> None:
        if self.upconn is not None and self.upconn.transport is not None:
            self.upconn.transport.pause_reading()

    def client_write_resumed(self) -> None:
        if self.upconn is not None and self.upconn.transport is not None:
            self.upconn.transport.resume_reading()

    def upstream_write_paused(self) -> None:
        self.client.pause_for_upstream()

    def upstream_write_resumed(self) -> None:
        self.client.resume_for_upstream()

    # ======================================================================================
    # Failures
    # ======================================================================================

    def upstream_lost(self) -> None:
        """The replica's connection closed while this exchange used it."""
        if self.state != UPSTREAM:
            return
        conn = self.upconn
        self.upconn = None
        if self.resp_started:
            self._release_slot()
            if conn is not None and conn.eof_ends_answer:
                # Framed by neither length nor chunking: the replica's close ends the answer
                # (re-framed as chunked for HTTP/1.1, close-delimited for an HTTP/1.0 client).
                if self.chunked_out:
                    self.out.append(b"0\r\n\r\n")
                self.t_upstream_done = perf_counter()
                self.flush_to_client()
                self._done(self.resp_status)
                return
            self._abort_client(502)
            return
        self._retry_or_fail(502, "The replica closed the connection without answering.")

    def upstream_failed(self, why: str) -> None:
        self._let_go()
        self._fail(502, why.rstrip(".") + ".")

    def refuse(self, status: int, message: str) -> None:
        """Waiter protocol (cluster): the coordinator turned this queued request away."""
        if self.state == QUEUED:
            self.respond_error(status, message)

    def fail_request(self, status: int, message: str) -> None:
        """The request itself turned out bad mid-body (too large, broken chunking)."""
        if self.state == DONE:
            return
        self._let_go()
        self.close_after = True
        self._fail(status, message)

    def _let_go(self) -> None:
        """Leave the queue, drop the replica connection mid-exchange, give the slot back."""
        if self.state == QUEUED:
            self.deployment.slots.cancel(self)  # type: ignore[union-attr]
        conn = self.upconn
        self.upconn = None
        if conn is not None:
            conn.abort()
        self._release_slot()

    def _fail(self, status: int, message: str) -> None:
        """Answer with an error, or cut the connection if the replica's answer has begun."""
        if self.resp_head_sent:
            self._abort_client(status)
        else:
            self.out.clear()
            self.respond_error(status, message)

    def _retry_or_fail(self, status: int, message: str) -> None:
        """Retry on another replica when nothing reached the client and the body can be replayed."""
        deployment = self.deployment
        self._release_slot()
        replayable = not self.body_sent_upstream or (self.replay is not None and self.body_complete)
        if (
            self.attempts <= self.client.retries
            and replayable
            and deployment is not None
            and deployment.slots.ready_count  # nowhere else to go: fail now, not at the deadline
        ):
            deployment.stats.retries += 1
            if self.body_sent_upstream:
                self.pending = self._replay_body()
            self.body_sent_upstream = False
            replica = deployment.slots.try_acquire(jump_queue=True)
            if replica is not None:
                self._use(replica)
                return
            self.state = QUEUED
            self.active = True
            deployment.slots.enqueue(self, front=True)  # it already waited its turn once
            if self.state == QUEUED and self.queue_timer is None:
                loop = self.client.loop
                self.queue_timer = loop.call_later(deployment.queue_wait_s, self._on_queue_timeout)
            return
        self.respond_error(status, message)

    def _replay_body(self) -> list[bytes]:
        chunks = self.replay or []
        if not self.chunked_in:
            return list(chunks)
        framed: list[bytes] = []
        for chunk in chunks:
            framed += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        return framed  # _attach adds the last-chunk marker once the body is complete

    def _on_queue_timeout(self) -> None:
        self.queue_timer = None
        if self.state == QUEUED:
            self.deployment.slots.cancel(self)  # type: ignore[union-attr]
            self.respond_error(503, "No replica became free within max_queue_wait_ms; retry later.")

    def on_deadline(self) -> None:
        """request_timeout_ms has passed (called by the proxy's deadline sweep)."""
        if self.state == DONE:
            return
        self._let_go()
        self.close_after = self.close_after or not self.body_complete
        self._fail(504, "The request took longer than request_timeout_ms.")

    def client_lost(self) -> None:
        """The client went away: give the slot back at once and drop the replica exchange."""
        if self.state == DONE:
            return
        self._let_go()
        self.t_upstream_done = perf_counter()
        self._done(499)  # nginx's code for "client closed request", logged only

    def _abort_client(self, status: int) -> None:
        """The answer already started and cannot be completed: cut the client connection."""
        self.t_upstream_done = perf_counter()
        self.close_after = True
        self.flush_to_client()
        self._done(status, abort=True)

    # ======================================================================================
    # Ending
    # ======================================================================================

    def respond_error(self, status: int, message: str) -> None:
        """Answer from the router itself (never used once a replica's answer has started)."""
        self._release_slot()
        if not self.request_id:  # refused before its head was complete
            self.request_id = self.client.ids.new()
        body = http.error_body(status, message, self.request_id)
        rid = self.request_id.encode()
        parts = [
            http.status_line(status),
            _JSON,
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: ",
            rid,
            b"\r\nx-ms-request-id: ",
            rid,
            b"\r\n",
        ]
        if self.client_id is not None:
            parts += (b"x-ms-client-request-id: ", self.client_id, b"\r\n")
        if self.deployment is not None and status != 404:
            parts += (b"azureml-model-deployment: ", self.deployment.name_bytes, b"\r\n")
        if not self.body_complete and (
            self.body_received or self.content_length or self.chunked_in
        ):
            # The rest of the body will not be read: the connection cannot carry another request.
            self.close_after = True
        if self.close_after:
            parts.append(_CLOSE)
        elif self.http10:
            parts.append(_KEEP_ALIVE)
        parts.append(b"\r\n")
        if not self.is_head:
            parts.append(body)
        self.resp_status = status
        self.out += parts
        self.bytes_out = len(body)
        self.t_upstream_done = perf_counter()
        self.flush_to_client()
        self._done(status)

    def _release_slot(self) -> None:
        replica = self.replica
        if replica is not None:
            self.replica = None
            self.deployment.slots.release(replica)  # type: ignore[union-attr]

    def _done(self, status: int, abort: bool = False) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        self.active = False
        if self.deployment is not None:
            self.deployment.deadlines.pop(self, None)
        if self.queue_timer is not None:
            self.queue_timer.cancel()
            self.queue_timer = None
        self.client.exchange_done(self, status, abort)


_SPECIAL = frozenset(
    {
        b"host",
        b"authorization",
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"azureml-model-deployment",
        b"x-request-id",
        b"x-ms-request-id",
        b"x-ms-client-request-id",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
    | http.HOP_BY_HOP
    | http.SMUGGLING_ALIASES
)
