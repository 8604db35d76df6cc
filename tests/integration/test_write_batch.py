"""The data plane's writes wait for the end of the loop turn, then go out in order (real
sockets: a socket pair per transport, the far end read without the event loop)."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from inferfront.proxy.write_batch import WriteBatch

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def run(factory: Callable[[], asyncio.AbstractEventLoop], test: Callable[[], Awaitable[None]]):
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(test())


async def transport_pair() -> tuple[asyncio.Transport, socket.socket]:
    """A transport on the running loop and the plain socket at its other end."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().create_unix_connection(
        asyncio.Protocol, sock=ours
    )
    theirs.setblocking(False)
    return transport, theirs  # type: ignore[return-value]


def waiting(sock: socket.socket) -> bool:
    """Bytes (or the end) are there to read right now."""
    return bool(select.select([sock], [], [], 0)[0])


def read(sock: socket.socket, size: int) -> bytes:
    """`size` bytes, or fewer if the other end closes (waits up to 10 s for them)."""
    got = b""
    while len(got) < size:
        if not select.select([sock], [], [], 10.0)[0]:
            break
        part = sock.recv(size - len(got))
        if not part:
            break
        got += part
    return got


async def next_turn() -> None:
    """Let the loop run what is already scheduled (the batch's flush was scheduled first)."""
    await asyncio.sleep(0)


@pytest.mark.parametrize("loop", LOOPS)
def test_writes_wait_for_the_end_of_the_turn_and_keep_their_order(loop: str) -> None:
    async def test() -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        first, first_far = await transport_pair()
        second, second_far = await transport_pair()
        batch.write(first, b"one ")
        batch.write(second, b"other")
        batch.write(first, b"two")
        assert len(batch) == 3
        assert not waiting(first_far) and not waiting(second_far)
        await next_turn()
        assert len(batch) == 0
        assert read(first_far, 7) == b"one two"
        assert read(second_far, 5) == b"other"
        batch.write(second, b" again")  # a later turn schedules its own flush
        await next_turn()
        assert read(second_far, 6) == b" again"

    run(LOOPS[loop], test)


@pytest.mark.parametrize("loop", LOOPS)
def test_flush_writes_at_once(loop: str) -> None:
    async def test() -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        transport, far = await transport_pair()
        batch.write(transport, b"answer")
        batch.flush()  # as the proxy does before it closes a client connection
        assert len(batch) == 0
        assert read(far, 6) == b"answer"  # with no loop turn in between
        await next_turn()  # the scheduled flush finds nothing left
        assert not waiting(far)

    run(LOOPS[loop], test)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_transport_closed_meanwhile_gets_nothing_and_the_others_get_theirs(loop: str) -> None:
    async def test() -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        dropped, dropped_far = await transport_pair()
        kept, kept_far = await transport_pair()
        batch.write(dropped, b"request of an exchange that gave up")
        batch.write(kept, b"kept")
        dropped.abort()
        await next_turn()
        assert read(kept_far, 4) == b"kept"
        assert read(dropped_far, 100) == b""  # the end, and none of the held bytes

    run(LOOPS[loop], test)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_failing_write_costs_the_others_nothing(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def test() -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        broken, _ = await transport_pair()
        kept, kept_far = await transport_pair()
        batch.write(broken, "not bytes")  # type: ignore[arg-type]
        batch.write(kept, b"kept")
        with caplog.at_level(logging.ERROR, logger="inferfront.proxy.write_batch"):
            await next_turn()
        assert read(kept_far, 4) == b"kept"
        assert "write to" in caplog.text and "failed" in caplog.text

    run(LOOPS[loop], test)
