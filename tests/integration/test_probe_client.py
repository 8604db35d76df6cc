"""The probe client against real loopback servers: one connection per probe, closed by the
probe; the first answer's status line decides, and no answer can hold a probe past its need."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

from inferfront.runtime import probes
from inferfront.runtime.probe_client import SharedProbes, probe_http
from inferfront.runtime.probes import ProbeSpec, ReadinessWatch
from tests.helpers import async_wait_until

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nHealthy"
CLOSE = None  # script answer: close the connection without answering
HANG = b""  # script answer: read on, never answer
HOLD_OPEN = b"\x00hold"  # appended to an answer: send what comes before, then keep the connection


class ScriptedServer:
    """Answers the n-th request on the c-th connection with script(c, n) (both from 0) and
    records every request it reads, by connection."""

    def __init__(self, script: Callable[[int, int], bytes | None]) -> None:
        self.script = script
        self.requests: list[list[bytes]] = []
        self.server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self.open_connections = 0
        self.all_closed = asyncio.Event()  # set whenever no connection is open

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def probe(self, timeout: float = 2.0) -> bool:
        return await probe_http("127.0.0.1", self.port, "/health", timeout)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        seen: list[bytes] = []
        self.requests.append(seen)
        index = len(self.requests) - 1
        self.open_connections += 1
        self.all_closed.clear()
        try:
            while True:
                try:
                    seen.append(await reader.readuntil(b"\r\n\r\n"))
                except asyncio.IncompleteReadError:
                    return
                answer = self.script(index, len(seen) - 1)
                if answer is CLOSE:
                    return
                if answer == HANG:
                    await reader.read()
                    return
                hold = answer.endswith(HOLD_OPEN)
                writer.write(answer.removesuffix(HOLD_OPEN))
                await writer.drain()
                if hold:
                    await reader.read()  # until the client closes
                    return
        finally:
            writer.close()
            self.open_connections -= 1
            if not self.open_connections:
                self.all_closed.set()


async def test_each_probe_opens_its_own_connection_and_asks_for_it_to_close() -> None:
    # Kept connections would hold one of the replica's connection slots between probes.
    async with ScriptedServer(lambda c, n: OK) as server:
        assert [await server.probe() for _ in range(3)] == [True] * 3
        await asyncio.wait_for(server.all_closed.wait(), 5.0)
    assert [len(seen) for seen in server.requests] == [1, 1, 1]
    first = server.requests[0][0]
    assert first.startswith(b"GET /health HTTP/1.1\r\n") and b"Connection: close\r\n" in first


async def test_answers_whose_body_is_not_read_still_count_and_do_not_hold_the_probe() -> None:
    # The replica keeps the connection open after these heads; the probe must not wait for the
    # rest (its timeout is far above the bound below).
    heads = {
        "to eof": b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n",
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        "large": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000,
        "unhealthy": b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n",
    }
    for name, head in heads.items():
        async with ScriptedServer(lambda c, n, h=head: h + HOLD_OPEN) as server:
            result = await asyncio.wait_for(server.probe(timeout=60.0), 10.0)
        assert result is (name != "unhealthy"), name


async def test_a_good_status_line_counts_when_its_small_body_stalls_past_the_timeout() -> None:
    # A small body of known length is waited for (closing on unread data would make the
    # replica's kernel send a reset); when it stalls, the timeout ends the probe, and the
    # status line already read decides.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 10
    async with ScriptedServer(lambda c, n: answer + HOLD_OPEN) as server:
        assert await server.probe(timeout=0.3) is True


async def test_only_the_first_answer_counts() -> None:
    extra = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    async with ScriptedServer(lambda c, n: OK + extra) as server:
        assert await server.probe() is True
    async with ScriptedServer(lambda c, n: extra + OK) as server:
        assert await server.probe() is False


async def test_garbage_silence_and_a_closed_connection_are_failures() -> None:
    async with ScriptedServer(lambda c, n: b"garbage\r\n\r\n") as server:
        assert await server.probe() is False
    async with ScriptedServer(lambda c, n: HANG) as server:
        assert await server.probe(timeout=0.3) is False
    async with ScriptedServer(lambda c, n: CLOSE) as server:
        assert await server.probe() is False


# -- watches of the same target share probes --------------------------------------------------


def watch(server: ScriptedServer, share: bool = True, path: str = "/health") -> ReadinessWatch:
    spec = ProbeSpec(path=path, period=10.0)
    return ReadinessWatch(
        "127.0.0.1", server.port, spec, 0.1, on_change=lambda ready: None, share=share
    )


@pytest.fixture
def results_kept_long(monkeypatch: pytest.MonkeyPatch) -> None:
    # Results are shared for at most a second; a stalled test machine must not end the sharing
    # between two calls the test makes back to back.
    monkeypatch.setattr(probes, "SHARED_RESULT_MAX_AGE_S", 60.0)


@pytest.mark.usefixtures("results_kept_long")
async def test_watches_of_one_server_share_its_probes() -> None:
    # Three deployments listing the same server: one probe between them, at start and later.
    async with ScriptedServer(lambda c, n: OK) as server:
        watches = [watch(server) for _ in range(3)]
        await asyncio.gather(*(w.probe_once() for w in watches))
        assert all(w.ready for w in watches)
        for w in watches:
            await w.probe_once()
    assert len(server.requests) == 1


@pytest.mark.usefixtures("results_kept_long")
async def test_after_a_reported_failure_the_next_probe_is_its_own() -> None:
    await a_reported_failure_makes_the_next_probe_its_own()


@pytest.mark.usefixtures("results_kept_long")
def test_after_a_reported_failure_the_next_probe_is_its_own_on_uvloop() -> None:
    # The router's loop: its clock moves in whole milliseconds, so the failed watch's probe
    # often starts at the same reading as the shared one it must not take.
    uvloop.run(a_reported_failure_makes_the_next_probe_its_own())


async def a_reported_failure_makes_the_next_probe_its_own() -> None:
    # A result from before the proxy saw connects fail must not bring the replica back.
    async with ScriptedServer(lambda c, n: OK) as server:
        first, second = watch(server), watch(server)
        await first.probe_once()
        await second.probe_once()
        assert len(server.requests) == 1
        assert first.report_failure() is True
        await first.probe_once()
        assert len(server.requests) == 2 and first.ready
        await second.probe_once()  # the other still takes the newest shared result
    assert len(server.requests) == 2


@pytest.mark.usefixtures("results_kept_long")
async def test_unshared_watches_and_other_paths_probe_for_themselves() -> None:
    async with ScriptedServer(lambda c, n: OK) as server:
        for w in (watch(server, share=False), watch(server, share=False)):
            await w.probe_once()
        assert len(server.requests) == 2
        for w in (watch(server, path="/a"), watch(server, path="/b")):
            await w.probe_once()
        assert len(server.requests) == 4


@pytest.mark.usefixtures("results_kept_long")
async def test_when_the_shared_probe_is_cancelled_the_waiter_probes_itself() -> None:
    async with ScriptedServer(lambda c, n: HANG if c == 0 else OK) as server:
        owner, waiter = watch(server), watch(server)
        owner_probe = asyncio.create_task(owner.probe_once())
        await async_wait_until(lambda: server.requests and server.requests[0], 5.0)
        # The waiter runs first (tasks start in order) and waits for the owner's result; then
        # the owner is cancelled before it has one.
        waiter_probe = asyncio.create_task(waiter.probe_once())
        owner_probe.cancel()
        await asyncio.wait_for(waiter_probe, 5.0)
        assert waiter.ready and not owner.ready
    assert len(server.requests) == 2


async def test_results_nobody_asked_for_lately_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with ScriptedServer(lambda c, n: OK) as one, ScriptedServer(lambda c, n: OK) as two:
        shared = SharedProbes()
        await shared.probe("127.0.0.1", one.port, "/health", 2.0, 1.0)
        await shared.probe("127.0.0.1", two.port, "/health", 2.0, 1.0)
        assert shared.remembered() == 2  # both younger than a minute
        monkeypatch.setattr(SharedProbes, "_FORGET_AFTER_S", 0.0)
        # A new probe drops every finished one that started before it (the oldest first).
        await shared.probe("127.0.0.1", one.port, "/other", 2.0, 1.0)
        assert shared.remembered() == 1
