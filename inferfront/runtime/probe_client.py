"""The HTTP client behind health probes: one GET, judged by its status line.

A probe goes over an idle keep-alive connection to the replica when the data plane has one
(`KeptConnections`: the proxy lends them, see `proxy/pool_probe.py`); otherwise, or when asked
for a new connection, it opens its own and asks the replica to close it, as the kubelet's
probes do. Borrowing holds nothing extra at the replica: a probe connection of its own, kept
between probes, would hold one of the replica's connection slots for good, and servers that
cap open connections (uvicorn's --limit-concurrency counts idle keep-alive connections) would
then answer real requests 503.

A small asyncio protocol rather than asyncio streams or a client library: a router watching
1,000 replicas probes 100 times a second, and streams cost 10-20% more CPU per probe (measured
on loopback; most of a probe's cost on a new connection is the kernel's connect and close).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

import httptools

from inferfront.runtime.loop_local import LoopLocal

# Probe answers' bodies up to this size are read to their end (so the replica sees no reset, or
# the kept connection can go back to its pool); larger or open-ended ones are not waited for.
PROBE_BODY_LIMIT = 64 * 1024


async def probe_http(
    host: str, port: int, path: str, timeout: float, *, reuse: bool = True
) -> bool:
    """GET http://host:port{path} once; True for a 200-399 status line within `timeout`
    seconds. Any error is a failure. With `reuse`, on an idle kept connection if there is
    one; a kept connection that fails before answering leaves the probe to a new one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if reuse:
        # The lent probe keeps its own deadline (its answer is 0 past `timeout`).
        answer = KeptConnections.for_running_loop().lend(host, port, path, timeout)
        if answer is not None:
            status = await answer
            if status is not None:
                return 200 <= status < 400
    return await _probe_new_connection(host, port, path, deadline - loop.time())


async def _probe_new_connection(host: str, port: int, path: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    exchange = _ProbeExchange(_request(host, port, path), loop.create_future())
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(lambda: exchange, host, port)
            await exchange.done
    except (OSError, TimeoutError):
        pass  # the status stays as far as it got: a slow body after a good status line is fine
    finally:
        if transport is not None:
            transport.close()
    status = exchange.status
    return status is not None and 200 <= status < 400


Lender = Callable[[str, int, bytes, float], "asyncio.Future[int | None] | None"]


class KeptConnections(LoopLocal):
    """Who in this event loop can send a probe on an idle keep-alive connection: the proxy
    registers a lender (host, port, request bytes, timeout) -> the future of the answer's
    status (None: the connection failed before answering; 0: no answer within the timeout), or
    None when it has no idle connection to that replica."""

    def __init__(self) -> None:
        self._lenders: list[Lender] = []

    def add(self, lender: Lender) -> None:
        self._lenders.append(lender)

    def remove(self, lender: Lender) -> None:
        if lender in self._lenders:
            self._lenders.remove(lender)

    def lend(
        self, host: str, port: int, path: str, timeout: float
    ) -> asyncio.Future[int | None] | None:
        request = _request(host, port, path, keep=True)
        for lender in self._lenders:
            answer = lender(host, port, request, timeout)
            if answer is not None:
                return answer
        return None


class SharedProbes(LoopLocal):
    """Probe results shared by everything in one event loop that probes the same target:
    deployments listing the same replica address (one multi-model server behind many
    endpoints) send one probe where each would send its own.

    A caller takes the result of a probe of the same target (host, port, path, timeout) that
    started at most `max_age_s` ago, waiting for it if it is still under way; otherwise it
    probes, and others may take its result.
    """

    _FORGET_AFTER_S = 60.0  # a target nobody probed for this long is dropped

    def __init__(self) -> None:
        # target -> (when its last probe started, that probe's result once known), oldest
        # first: forgetting looks only at the front (a router watching 1,000 replicas probes
        # 100 times a second; scanning every target per probe had cost more than the probe).
        self._recent: OrderedDict[
            tuple[str, int, str, float], tuple[float, asyncio.Future[bool]]
        ] = OrderedDict()

    async def probe(
        self,
        host: str,
        port: int,
        path: str,
        timeout: float,
        max_age_s: float,
        *,
        reuse: bool = True,
    ) -> bool:
        loop = asyncio.get_running_loop()
        target = (host, port, path, timeout)
        now = loop.time()
        recent = self._recent.get(target)
        # Strictly younger: uvloop's clock moves in milliseconds, and a max age of 0 must
        # always mean a probe of the caller's own.
        if recent is not None and now - recent[0] < max_age_s:
            result = recent[1]
            if not result.done():
                await asyncio.wait((result,))  # raises only if this caller is cancelled
            if not result.cancelled():
                return result.result()
            # Its prober was cancelled before it knew: probe here.
        result = loop.create_future()
        self._recent[target] = (now, result)
        self._recent.move_to_end(target)
        self._forget_older_than(now - self._FORGET_AFTER_S)
        try:
            ok = await probe_http(host, port, path, timeout, reuse=reuse)
        except BaseException:
            result.cancel()
            raise
        result.set_result(ok)
        return ok

    def _forget_older_than(self, started: float) -> None:
        recent = self._recent
        while recent:
            target, (when, result) = next(iter(recent.items()))
            if when >= started or not result.done():
                return
            del recent[target]

    def remembered(self) -> int:
        return len(self._recent)


def _request(host: str, port: int, path: str, keep: bool = False) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        "User-Agent: inferfront-probe\r\n"
        "Accept: */*\r\n" + ("" if keep else "Connection: close\r\n") + "\r\n"
    ).encode("latin-1")


class _ProbeExchange(asyncio.Protocol):
    """Sends the probe request and reads the answer's status line, then its headers and a
    small Content-Length body, so the replica does not see a reset for closing on unread data.
    Never waits for a body of unknown or large size: a replica that streams (or ignores
    `Connection: close`) would otherwise hold the probe until its timeout. Only the first
    answer counts."""

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request = request
        self.done = done
        self.status: int | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._content_length: int | None = None
        self._headers_done = False

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return  # past the first answer: nothing more counts
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish()  # garbage: no status unless a good status line came first
            return
        if self._headers_done and not self.done.done():
            # The head is read and the answer goes on (a bodiless one ends in the same feed):
            # wait only for a small body of known length.
            length = self._content_length
            if length is None or length > PROBE_BODY_LIMIT:
                self._finish()

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    # -- httptools callbacks --------------------------------------------------------------

    def on_status(self, _reason: bytes) -> None:
        if not self.done.done():
            self.status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length" and value.strip().isdigit():
            self._content_length = int(value)

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_message_complete(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
