"""Answer readers lent to kept connections for one answer at a time (proxy/upstream.py), over real
loopback connections of a real pool: kept connections hold no parser between answers, one
reader serves many connections in turn, and a reader whose parse stopped mid-answer is never
lent again."""

from __future__ import annotations

import asyncio

from inferfront.config.model import Limits
from inferfront.proxy import upstream
from inferfront.proxy.pool_probe import probe_on_idle_connection
from inferfront.proxy.upstream import UpstreamConnection
from tests.integration.test_pool_probe import Kept, scripted
from tests.integration.test_probe_client import OK

PROBE = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# Two answers to one request: the second makes the connection out of step mid-parse.
TWO_ANSWERS = OK + OK

healthy = scripted(lambda connection, request: OK)
first_answers_twice = scripted(lambda connection, request: TWO_ANSWERS if connection == 0 else OK)


def _probe_kept(kept: Kept) -> tuple[UpstreamConnection, asyncio.Future[int | None]]:
    """Send a probe on the pool's next idle connection: (that connection, the status)."""
    conn = kept.pool.idle[-1]
    status = probe_on_idle_connection(
        kept.pools, Limits(), "127.0.0.1", kept.server.port, PROBE, 5.0
    )
    assert status is not None
    return conn, status


async def test_kept_connections_take_turns_with_one_reader_and_hold_none_between_answers(
    healthy: Kept,
) -> None:
    conns = await healthy.add_idle_connections(20)
    assert all(conn.reader is None for conn in conns)
    readers = set()
    for _ in range(40):
        conn, status = _probe_kept(healthy)
        readers.add(id(conn.reader))
        assert await status == 200
        assert conn.reader is None  # given back with the answer
        healthy.pool.idle.insert(0, healthy.pool.idle.pop())  # the next probe, the next connection
    assert [len(on_connection) for on_connection in healthy.requests()] == [2] * 20
    assert len(readers) == 1  # one reader for all 20 connections, not one each
    assert sorted(map(id, healthy.pool.idle)) == sorted(map(id, conns))


async def test_answers_under_way_at_once_each_have_their_own_reader(healthy: Kept) -> None:
    await healthy.add_idle_connections(8)
    probes = [_probe_kept(healthy) for _ in range(8)]
    assert len({id(conn.reader) for conn, _ in probes}) == 8
    assert await asyncio.gather(*(status for _, status in probes)) == [200] * 8
    assert all(conn.reader is None for conn, _ in probes)


async def test_a_reader_stopped_mid_answer_goes_with_its_connection(
    first_answers_twice: Kept,
) -> None:
    kept = first_answers_twice
    await kept.add_idle_connection()
    conn, status = _probe_kept(kept)
    stopped = conn.reader
    assert await status == 200  # the first answer counts; the second put the connection out of step
    assert kept.pool.idle == []
    assert conn.transport is not None and conn.transport.is_closing()
    assert all(reader is not stopped for reader in upstream._IDLE_READERS)
    # The next answer, on another connection, is read by a clean reader (the stopped one, lent
    # again, would fail at its first byte).
    await kept.add_idle_connection()
    _, status = _probe_kept(kept)
    assert await status == 200
