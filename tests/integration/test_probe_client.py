"""The probe client against real loopback servers: it keeps its connection between probes, and
a kept connection never turns into a false answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from inferfront.runtime.probe_client import ProbeClient
from inferfront.runtime.probes import ProbeSpec, ReadinessWatch
from inferfront.runtime.static import StaticRuntime
from tests.integration.test_runtime_local import RecordingEvents

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nHealthy"
CLOSE = None  # script answer: close the connection without answering
HANG = b""  # script answer: read on, never answer


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

    def client(self, timeout: float = 2.0) -> ProbeClient:
        return ProbeClient("127.0.0.1", self.port, "/health", timeout)

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
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()
            self.open_connections -= 1
            if not self.open_connections:
                self.all_closed.set()


async def test_probes_share_one_connection_while_the_target_keeps_it() -> None:
    async with ScriptedServer(lambda c, n: OK) as server:
        client = server.client()
        assert [await client.probe() for _ in range(5)] == [True] * 5
        client.close()
    assert [len(seen) for seen in server.requests] == [5]
    assert client.connections_opened == 1
    first = server.requests[0][0]
    assert first.startswith(b"GET /health HTTP/1.1\r\n") and b"Connection: close" not in first


async def test_a_kept_connection_closed_by_the_target_is_not_a_failure() -> None:
    # Each connection answers once, then closes on the next request without answering (an
    # idle timeout racing the probe): every probe still succeeds, each retried on a new one.
    async with ScriptedServer(lambda c, n: OK if n == 0 else CLOSE) as server:
        client = server.client()
        assert [await client.probe() for _ in range(3)] == [True] * 3
        client.close()
    assert client.connections_opened == 3
    assert [len(seen) for seen in server.requests] == [2, 2, 1]


async def test_a_bad_answer_on_a_kept_connection_is_a_failure_without_a_second_try() -> None:
    answers = [OK, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", OK]
    async with ScriptedServer(lambda c, n: answers[n]) as server:
        client = server.client()
        assert [await client.probe() for _ in range(3)] == [True, False, True]
        client.close()
    assert client.connections_opened == 1


async def test_answers_that_end_the_connection_or_leave_a_body_unread_are_not_reused() -> None:
    answers = {
        "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        "to eof": b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n",
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        "large": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000,
    }
    for name, answer in answers.items():
        async with ScriptedServer(lambda c, n, a=answer: a) as server:
            client = server.client()
            assert [await client.probe() for _ in range(2)] == [True, True], name
            client.close()
        assert client.connections_opened == 2, name


async def test_a_bodiless_answer_keeps_the_connection() -> None:
    async with ScriptedServer(lambda c, n: b"HTTP/1.1 204 No Content\r\n\r\n") as server:
        client = server.client()
        assert [await client.probe() for _ in range(3)] == [True] * 3
        client.close()
    assert client.connections_opened == 1


async def test_silence_fails_the_probe_and_the_next_one_connects_anew() -> None:
    async with ScriptedServer(lambda c, n: HANG if (c, n) == (0, 1) else OK) as server:
        client = server.client(timeout=0.3)
        assert [await client.probe() for _ in range(3)] == [True, False, True]
        client.close()
    assert client.connections_opened == 2


async def test_bytes_nobody_asked_for_drop_the_connection() -> None:
    # The first answer carries a second, unrequested one (a 503 that must not count): the
    # connection is out of step.
    extra = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    async with ScriptedServer(lambda c, n: OK + extra if c == 0 else OK) as server:
        client = server.client()
        assert await client.probe()
        assert await client.probe()
        client.close()
    assert client.connections_opened == 2


async def test_a_reported_failure_makes_the_next_probe_connect_anew() -> None:
    # The proxy saw connects fail: a probe over the old connection would hide exactly that.
    async with ScriptedServer(lambda c, n: OK) as server:
        watch = ReadinessWatch(
            "127.0.0.1", server.port, ProbeSpec(path="/health"), 0.1, on_change=print
        )
        await watch.probe_once()
        await watch.probe_once()
        assert watch.ready and watch.client.connections_opened == 1
        assert watch.report_failure() is True
        await watch.probe_once()
        watch.client.close()
    assert watch.client.connections_opened == 2
    assert [len(seen) for seen in server.requests] == [2, 1]


async def test_stopping_a_static_runtime_closes_its_probe_connections() -> None:
    # start() probes each replica once and keeps the connections for the probing tasks: a
    # stop right after must close them.
    async with ScriptedServer(lambda c, n: OK) as server:
        runtime = StaticRuntime(
            "ext",
            [("127.0.0.1", server.port)] * 3,
            RecordingEvents(),
            readiness=ProbeSpec(path="/health"),
            log=logging.getLogger("tests.probe_client"),
        )
        await runtime.start()
        assert server.open_connections == 3
        await runtime.stop(1.0)
        await asyncio.wait_for(server.all_closed.wait(), 5.0)
        assert [len(seen) for seen in server.requests] == [1, 1, 1]
