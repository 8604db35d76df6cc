"""Deployments listing the same server share one readiness watch (real loopback servers)."""

from __future__ import annotations

import asyncio
from typing import Any

from inferfront.runtime.probes import ProbeSpec
from inferfront.runtime.server_watches import REPORTED_FAILURE, ServerWatches, WatchMembership
from tests.helpers import async_wait_until
from tests.integration.test_probe_client import OK, ScriptedServer

FAST = ProbeSpec(path="/health", period=0.05, timeout=2.0, failure_threshold=1)
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
WAIT = 10.0


class Member:
    """One deployment's replica of the server: its membership and the changes it was told."""

    def __init__(self, server: ScriptedServer, spec: ProbeSpec = FAST) -> None:
        self.changes: list[tuple[bool, str]] = []
        self.membership: WatchMembership = ServerWatches.for_running_loop().join(
            "127.0.0.1", server.port, spec, 0.05, self._changed
        )
        self.running: asyncio.Task[None] | None = None

    def _changed(self, ready: bool, why: str) -> None:
        self.changes.append((ready, why))

    def run(self) -> None:
        self.running = asyncio.create_task(self.membership.run())

    async def stop(self) -> None:
        """As the runtime stops: cancel its part in the probing, then leave (a task cancelled
        before its first step never runs its own way out)."""
        if self.running is not None:
            self.running.cancel()
            await asyncio.gather(self.running, return_exceptions=True)
        self.membership.leave()


def watch_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().endswith("-watch")]


class Switchable:
    """A server script: healthy until `healthy` is set False."""

    def __init__(self) -> None:
        self.healthy = True

    def __call__(self, connection: int, request: int) -> bytes:
        return OK if self.healthy else UNAVAILABLE


async def test_deployments_of_one_server_share_one_watch_and_hear_its_changes() -> None:
    health = Switchable()
    async with ScriptedServer(health) as server:
        members = [Member(server) for _ in range(3)]
        assert ServerWatches.for_running_loop().watched_servers() == 1
        await asyncio.gather(*(m.membership.probe_once() for m in members))
        assert len(server.requests) == 1  # one first probe for the three
        assert all(m.changes == [(True, "")] for m in members)
        for member in members:
            member.run()
        await async_wait_until(lambda: len(watch_tasks()) == 1, WAIT)
        health.healthy = False
        await async_wait_until(lambda: all(len(m.changes) == 2 for m in members), WAIT)
        reason = "readiness probe failed 1 times in a row"
        assert all(m.changes[1] == (False, reason) for m in members)
        for member in members:
            await member.stop()


async def test_a_member_joining_later_takes_the_current_verdict_without_a_probe() -> None:
    async with ScriptedServer(lambda c, n: OK) as server:
        first = Member(server)
        await first.membership.probe_once()
        later = Member(server)
        await later.membership.probe_once()
        assert later.changes == [(True, "")] and later.membership.ready
        assert len(server.requests) == 1
        first.membership.leave()
        later.membership.leave()


async def test_a_reported_failure_takes_the_server_out_for_every_member_until_it_answers() -> None:
    async with ScriptedServer(lambda c, n: OK) as server:
        reporter, other = Member(server), Member(server)
        await asyncio.gather(reporter.membership.probe_once(), other.membership.probe_once())
        reporter.run()
        other.run()
        assert reporter.membership.report_failure() is True
        assert not reporter.membership.ready
        # The reporter updates its own replica; the others are told, with the reason.
        assert reporter.changes == [(True, "")]
        assert other.changes == [(True, ""), (False, REPORTED_FAILURE)]
        assert reporter.membership.report_failure() is False  # already out: nobody told again
        assert len(other.changes) == 2
        # The watch is back at the start-up pace: the next probe that answers returns both.
        await async_wait_until(lambda: len(reporter.changes) == 2, WAIT)
        assert reporter.changes[-1] == (True, "") and other.changes[-1] == (True, "")
        await reporter.stop()
        await other.stop()


async def test_the_last_member_leaving_stops_the_watch() -> None:
    async with ScriptedServer(lambda c, n: OK) as server:
        watches = ServerWatches.for_running_loop()
        members = [Member(server), Member(server)]
        await asyncio.gather(*(m.membership.probe_once() for m in members))
        for member in members:
            member.run()
        await async_wait_until(lambda: len(watch_tasks()) == 1, WAIT)
        await members[0].stop()
        assert watches.watched_servers() == 1 and len(watch_tasks()) == 1
        await members[1].stop()
        assert watches.watched_servers() == 0
        await async_wait_until(lambda: watch_tasks() == [], WAIT)
        # A new member starts a new watch (whose first probe may take a result just shared).
        again = Member(server)
        await again.membership.probe_once()
        assert again.changes == [(True, "")] and watches.watched_servers() == 1
        again.membership.leave()


async def test_other_servers_and_other_probe_settings_get_watches_of_their_own() -> None:
    async with ScriptedServer(lambda c, n: OK) as one, ScriptedServer(lambda c, n: OK) as two:
        members = [Member(one), Member(two), Member(one, ProbeSpec(path="/other", period=0.05))]
        assert ServerWatches.for_running_loop().watched_servers() == 3
        for member in members:
            member.membership.leave()
        assert ServerWatches.for_running_loop().watched_servers() == 0
