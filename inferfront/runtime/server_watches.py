"""One readiness watch per server for every deployment that lists it.

Deployments whose `urls` name the same server (one multi-model server behind many endpoints) see
the same answers, so one watch probes the server and tells each of them about a change. A router
with 1,000 such deployments then takes one timer turn per probe period instead of 1,000: each
turn of a watch wakes a task and arms a timer, and 100 turns a second cost the proxy about 1.6 us
per request at saturation (measured, 1,000 endpoints on one server, against probes disabled).

Sharing the watch shares its verdict too: when the proxy reports connect failures to the server
for one deployment, every deployment of that server stops routing there until a probe answers
again (the server refused them all alike).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from inferfront.runtime.loop_local import LoopLocal
from inferfront.runtime.probes import ProbeSpec, ReadinessWatch

OnChange = Callable[[bool, str], None]  # (ready, why it changed)

REPORTED_FAILURE = "the proxy reported connect failures"


class ServerWatches(LoopLocal):
    """The shared watches of one event loop, by server and probe settings."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, int, ProbeSpec, float], _WatchGroup] = {}

    def join(
        self, host: str, port: int, spec: ProbeSpec, startup_poll_s: float, on_change: OnChange
    ) -> WatchMembership:
        """A membership in the watch of host:port with these settings (started on first use)."""
        key = (host, port, spec, startup_poll_s)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _WatchGroup(host, port, spec, startup_poll_s)
        membership = WatchMembership(group, on_change, lambda: self._left(key, group))
        group.members[membership] = None
        return membership

    def watched_servers(self) -> int:
        return len(self._groups)

    def _left(self, key: tuple[str, int, ProbeSpec, float], group: _WatchGroup) -> None:
        if not group.members:
            group.stop()
            if self._groups.get(key) is group:
                del self._groups[key]


class _WatchGroup:
    """One server's watch and the deployments' memberships it reports to."""

    def __init__(self, host: str, port: int, spec: ProbeSpec, startup_poll_s: float) -> None:
        self.name = f"{host}:{port}-watch"
        self.spec = spec
        self.watch = ReadinessWatch(
            host, port, spec, startup_poll_s, on_change=self._changed, share=True
        )
        # Insertion-ordered, removal in O(1): 1,000 deployments may leave one server's watch.
        self.members: dict[WatchMembership, None] = {}
        self.first_probe: asyncio.Task[None] | None = None
        self.probing: asyncio.Task[None] | None = None

    def _changed(self, ready: bool) -> None:
        threshold = self.spec.failure_threshold
        reason = "" if ready else f"readiness probe failed {threshold} times in a row"
        for member in list(self.members):
            member.on_change(ready, reason)

    def start_probing(self) -> None:
        if self.probing is None:
            loop = asyncio.get_running_loop()
            self.probing = loop.create_task(self.watch.run(), name=self.name)

    def stop(self) -> None:
        for task in (self.first_probe, self.probing):
            if task is not None:
                task.cancel()


class WatchMembership:
    """What one deployment's replica holds: the shared verdict, its first probe, its part in
    the ongoing probing (`run`, until cancelled) and the proxy's failure reports."""

    def __init__(
        self, group: _WatchGroup, on_change: OnChange, on_leave: Callable[[], None]
    ) -> None:
        self._group = group
        self.on_change = on_change
        self._on_leave = on_leave
        self._joined = True

    @property
    def ready(self) -> bool:
        return self._group.watch.ready

    async def probe_once(self) -> None:
        """The first verdict: the server's first probe (one for every member waiting on it),
        or, for a member joining later, the verdict the watch already has."""
        group = self._group
        if group.first_probe is None:
            group.first_probe = asyncio.get_running_loop().create_task(group.watch.probe_once())
        elif group.first_probe.done():
            if group.watch.ready:
                self.on_change(True, "")
            return
        # Shielded: a member that stops waiting must not cancel the others' probe.
        await asyncio.shield(group.first_probe)

    async def run(self) -> None:
        """Take part in the probing until cancelled, then leave the watch."""
        self._group.start_probing()
        try:
            await asyncio.get_running_loop().create_future()  # only cancellation ends it
        finally:
            self.leave()

    def report_failure(self) -> bool:
        """Out of routing at once, for every member (counting starts over and the watch goes
        back to the start-up pace); True if the server was ready until now. The caller
        updates its own replica; the others hear it through `on_change`."""
        was_ready = self._group.watch.report_failure()
        if was_ready:
            for member in list(self._group.members):
                if member is not self:
                    member.on_change(False, REPORTED_FAILURE)
        return was_ready

    def leave(self) -> None:
        if self._joined:
            self._joined = False
            del self._group.members[self]
            self._on_leave()
