"""Mirrored traffic: a copy of a live request sent to the mirror deployment, answer discarded.

A copy never slows, fails or counts against the client's request: it only takes a slot that is
free at once (never queues), it holds at most `max_body` bytes of the body (a larger body is not
mirrored), and whatever happens to it is counted on the mirror deployment only. Towards its
replica connection it behaves as an `Exchange` does: the connection goes back to the pool, and
the slot is given back, only once the read that completed the answer is known to hold nothing
more (`end_answer`), so a replica that answers twice never reaches anyone else.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferfront.endpoints import DeploymentState
    from inferfront.proxy.client import ClientConnection
    from inferfront.proxy.exchange import Exchange
    from inferfront.proxy.upstream import UpstreamConnection
    from inferfront.routing.slots import Replica


class MirrorSender:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int) -> None:
        self.loop = loop
        self.max_body = max_body
        # Copies not sent (no free slot, body too large); sent ones are counted on the mirror
        # deployment's own requests_total.
        self.skipped = 0

    def start(self, exchange: Exchange, target: DeploymentState) -> None:
        if exchange.content_length and exchange.content_length > self.max_body:
            self.skipped += 1
            return
        exchange.mirror_copy = MirrorCopy(self, exchange, target)


class MirrorCopy:
    """Collects the client's body, then replays the request once against the mirror."""

    __slots__ = (
        "body",
        "bytes_out",
        "client",
        "conn",
        "deployment",
        "head",
        "is_head",
        "replica",
        "resp_started",
        "sender",
        "size",
        "status",
        "t0",
        "timer",
    )

    def __init__(self, sender: MirrorSender, exchange: Exchange, target: DeploymentState) -> None:
        self.sender = sender
        # The live request's client connection: its limits bound the copy's answer too.
        self.client: ClientConnection = exchange.client
        self.deployment = target
        self.head = exchange.upstream_head
        self.is_head = exchange.is_head
        self.body: list[bytes] | None = []
        self.size = 0
        self.replica: Replica | None = None
        self.conn: UpstreamConnection | None = None
        self.resp_started = False
        self.status = 0
        self.bytes_out = 0  # body bytes of the answer read (and dropped)
        self.t0 = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- fed by the live exchange -----------------------------------------------------------

    def feed(self, framed: bytes) -> None:
        body = self.body
        if body is None:
            return
        self.size += len(framed)
        if self.size > self.sender.max_body:
            self.body = None
            self.sender.skipped += 1
            return
        body.append(framed)

    def request_complete(self) -> None:
        """The client's request is complete: send the copy if a slot is free right now."""
        if self.body is None:
            return
        replica = self.deployment.slots.try_acquire()
        if replica is None:
            self.sender.skipped += 1
            return
        pool = replica.pool  # type: ignore[attr-defined]  # tables hold PooledReplica (endpoints.py)
        if pool is None:
            self.deployment.slots.release(replica)
            return
        self.replica = replica
        loop = self.sender.loop
        self.t0 = loop.time()
        self.timer = loop.call_at(self.t0 + self.deployment.timeout_s, self._on_deadline)
        conn = pool.take_idle()
        if conn is not None:
            self._send(conn)
        else:
            pool.connect(self, self._connected)  # type: ignore[arg-type]

    def _connected(self, conn: UpstreamConnection | None, why: str) -> None:
        if conn is None:
            if self.replica is not None:  # the same rule as live requests: stop routing there
                self.deployment.connect_failed(self.replica, refused="refused" in why.lower())
            self._end(502)
        elif self.replica is None:  # timed out while connecting
            conn.pool.release(conn)
        else:
            self._send(conn)

    def _on_deadline(self) -> None:
        self.timer = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abort()
        self._end(504)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.begin(self)
        conn.transport.write(b"".join([self.head, *(self.body or ())]))  # type: ignore[union-attr]
        self.body = None

    def _end(self, status: int) -> None:
        replica = self.replica
        if replica is None:
            return
        self.replica = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deployment.slots.release(replica)
        elapsed = self.sender.loop.time() - self.t0
        self.deployment.stats.record(status, 0.0, elapsed, elapsed)

    # -- UpstreamConnection callbacks: the answer is read and dropped ------------------------

    def upstream_headers_complete(
        self, status: int, head: list[bytes], content_length: int | None
    ) -> None:
        if status >= 200:
            self.resp_started = True
            self.status = status
            if self.is_head:
                # As for a live HEAD request: llhttp would wait for a body that never comes.
                conn = self.conn
                if conn is not None:
                    conn.reusable = False
                self.upstream_message_complete()

    def upstream_body(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)

    def upstream_message_complete(self) -> bool:
        if not self.resp_started:
            return False  # the end of a 1xx interim answer
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.exchange = None
            if conn.reusable:
                # As Exchange._finish_upstream: the rest of the read may show the replica out
                # of step; the connection calls end_answer() once it is known to be empty.
                conn.finished = self
                return True
            conn.abort()
        self.end_answer()
        return True

    def end_answer(self) -> None:
        """The answer is complete and the connection settled: give the slot back, count it."""
        self._end(self.status)

    def flush_to_client(self) -> None:
        pass

    def upstream_lost(self) -> None:
        conn = self.conn
        self.conn = None
        if self.resp_started and conn is not None and conn.eof_ends_answer:
            self._end(self.status)  # framed by neither length nor chunking: the close ends it
            return
        self._end(502)

    def upstream_failed(self, why: str) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abort()
        self._end(502)

    def upstream_write_paused(self) -> None:
        pass

    def upstream_write_resumed(self) -> None:
        pass
