"""Health probes sent over the data plane's idle keep-alive connections.

A probe on a new connection costs a connect, an accept on the replica and a close: 114-122 us
of CPU against 23-25 on a kept connection (`python -m bench.probes`, server included). With 1,000
replicas and the default 10 s period that is 100 new connections a second, which had cost a
saturated router 1.7-3 us per request (alternating wrk runs against the same router with
probing turned off). The replica sees nothing new: no extra connection is held (the probe
borrows one that is idle and gives it back), as with Envoy's `reuse_connection` health checks.

Towards its connection a probe behaves as an `Exchange` does: the status decides at once, a
small body of known length is read to its end and the connection goes back to the pool once
the read that ended the answer holds nothing more; any other body, a timeout or a broken answer
closes the connection instead.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from inferfront.runtime.probe_client import PROBE_BODY_LIMIT

if TYPE_CHECKING:
    from inferfront.config import Limits
    from inferfront.proxy.upstream import UpstreamConnection, UpstreamPools


class _Limits:
    """What `UpstreamConnection` reads from an exchange's client: the router's limits."""

    __slots__ = ("limits",)

    def __init__(self, limits: Limits) -> None:
        self.limits = limits


class PoolProbe:
    """One probe on a borrowed connection. `status` resolves to the answer's status code, to 0
    when no answer came within the timeout, or to None when the connection failed before an
    answer began (the caller may then probe on a new connection); cancelling it closes the
    connection."""

    __slots__ = ("bytes_out", "client", "conn", "deadline", "keep", "resp_started", "status")

    def __init__(
        self, conn: UpstreamConnection, limits: Limits, request: bytes, timeout: float
    ) -> None:
        loop = conn.pool.loop
        self.client = _Limits(limits)
        self.conn: UpstreamConnection | None = conn
        self.status: asyncio.Future[int | None] = loop.create_future()
        self.status.add_done_callback(self._status_done)
        # The whole answer, body included, within the probe's timeout, or the connection goes.
        self.deadline = loop.call_later(timeout, self._expire)
        self.resp_started = False
        self.bytes_out = 0
        self.keep = False
        conn.begin(self)
        conn.transport.write(request)  # type: ignore[union-attr]

    def _status_done(self, status: asyncio.Future[int | None]) -> None:
        if status.cancelled():
            self._drop()

    def _expire(self) -> None:
        self._settle(0)  # no status in time: a failed probe, not one to try again
        self._drop()

    def _drop(self) -> None:
        """Close the connection: it is out of step or no longer wanted."""
        self.deadline.cancel()
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abort()  # a borrowed connection is in no idle list; connection_lost forgets it

    def _settle(self, status: int | None) -> None:
        if not self.status.done():
            self.status.set_result(status)

    # -- UpstreamConnection callbacks -------------------------------------------------------

    def upstream_headers_complete(
        self, status: int, head: list[bytes], content_length: int | None
    ) -> None:
        if status < 200:
            return  # an interim answer: the real one follows
        self.resp_started = True
        self._settle(status)
        self.keep = content_length is not None and content_length <= PROBE_BODY_LIMIT
        if not self.keep:
            self._drop()  # a long or open-ended body is not worth reading for a probe

    def upstream_body(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)

    def upstream_message_complete(self) -> bool:
        if not self.resp_started:
            return False
        self.deadline.cancel()
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.exchange = None
            if conn.reusable and self.keep:
                conn.finished = self  # back to the pool once the read is known to be empty
                return True
            conn.abort()
        return True

    def end_answer(self) -> None:
        pass  # the connection is back in its pool; nothing else to give back

    def flush_to_client(self) -> None:
        pass

    def upstream_lost(self) -> None:
        self.deadline.cancel()
        self.conn = None
        self._settle(None)

    def upstream_failed(self, why: str) -> None:
        self._drop()
        self._settle(None)

    def upstream_write_paused(self) -> None:
        pass

    def upstream_write_resumed(self) -> None:
        pass


def probe_on_idle_connection(
    pools: UpstreamPools, limits: Limits, host: str, port: int, request: bytes, timeout: float
) -> asyncio.Future[int | None] | None:
    """Send `request` on an idle pooled connection to host:port: the future of its status
    (see `PoolProbe`), or None when no connection to it is idle."""
    pool = pools.by_address.get(f"{host}:{port}")
    conn = pool.take_idle() if pool is not None else None
    if conn is None:
        return None
    return PoolProbe(conn, limits, request, timeout).status
