"""The coordinator side: this instance decides routing for the deployments it holds the lease of.

Front-ends (other instances over TCP, this instance in-process) ask for slots, cancel and
release; the decision is the deployment's `SlotTable`, the same pure policy the single-process
router uses. Each front-end's leases (slots it holds) are tracked per connection, so a front-end
that dies gives its slots back at once.

Taking over a deployment, the coordinator rebuilds from facts, not guesses: the replica table it
already has (from the replica runtime's events) and the leases every live front-end reports in
its HELLO. Until each live member has reported (bounded by `REBUILD_TIMEOUT_S`) it grants
nothing, so a limit can never be exceeded by a slot it did not know was taken.

A retry (a request whose replica refused its connection) arrives as ACQUIRE_FRONT: it already
waited its turn once, so it may take a free slot ahead of the queue and otherwise waits at the
queue's front, exactly as `SlotTable` treats a retry in one process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from inferfront.admin.server import deployment_document
from inferfront.coordinator import protocol as p
from inferfront.routing.slots import QueueFull, Replica

if TYPE_CHECKING:
    from inferfront.endpoints import DeploymentState

log = logging.getLogger("inferfront.coordinator")

REBUILD_TIMEOUT_S = 1.5


class RemoteWaiter:
    """A front-end's queued request, as it sits in the coordinator's FIFO."""

    __slots__ = ("active", "conn", "dep", "ticket")

    def __init__(self, conn: FrontEndConnection, dep: int, ticket: int) -> None:
        self.conn = conn
        self.dep = dep
        self.ticket = ticket
        self.active = True

    def grant(self, replica: Replica) -> None:
        conn = self.conn
        conn.waiters.pop(self.ticket, None)
        if conn.closed:
            conn.service.table(self.dep).release(replica)
            return
        conn.leases[(self.dep, replica.name)] += 1
        conn.send(p.grant(self.ticket, replica.name.encode()))


class Role:
    """This instance's role for one deployment."""

    __slots__ = ("awaiting", "deadline_handle", "parked", "rebuilding")

    def __init__(self) -> None:
        self.rebuilding = True
        self.awaiting: set[str] = set()  # member ids whose HELLO is still expected
        self.parked: list[Callable[[], None]] = []  # acquires that arrived while rebuilding
        self.deadline_handle: asyncio.TimerHandle | None = None


class CoordinatorService:
    def __init__(
        self,
        instance_id: str,
        config_hash: str,
        deployments: list[DeploymentState],
    ) -> None:
        self.instance_id = instance_id
        self.config_hash = config_hash
        self.deployments = deployments
        self.roles: dict[int, Role] = {}
        self.connections: set[FrontEndConnection] = set()
        self.server: asyncio.AbstractServer | None = None
        self.since: dict[int, float] = {}

    def table(self, dep: int):
        return self.deployments[dep].table

    # -- leadership ------------------------------------------------------------------------

    def gain(self, dep: int, members: list[str], own_leases: dict[str, int], now: float) -> None:
        """This instance now holds the lease of deployment `dep`: rebuild, then coordinate."""
        role = Role()
        role.awaiting = {m for m in members if m != self.instance_id}
        self.roles[dep] = role
        self.since[dep] = now
        table = self.table(dep)
        table.reset_inflight()
        self._add_leases(dep, own_leases)
        for conn in self.connections:
            if dep in conn.reported:
                # This front-end already switched to us for `dep`; since then its leases
                # for it are kept current by its GRANTs and RELEASEs here.
                role.awaiting.discard(conn.instance)
                self._add_leases(dep, conn.leases_for(dep))
        if role.awaiting:
            loop = asyncio.get_running_loop()
            role.deadline_handle = loop.call_later(REBUILD_TIMEOUT_S, self._finish_rebuild, dep)
            log.info(
                "coordinating %s: waiting for in-flight reports from %s",
                self.deployments[dep].key,
                sorted(role.awaiting),
            )
        else:
            self._finish_rebuild(dep)

    def coordinating(self, dep: int) -> bool:
        role = self.roles.get(dep)
        return role is not None and not role.rebuilding

    def _finish_rebuild(self, dep: int) -> None:
        role = self.roles.get(dep)
        if role is None or not role.rebuilding:
            return
        if role.awaiting:
            log.warning(
                "coordinating %s: no in-flight report from %s in %.1fs; going on without",
                self.deployments[dep].key,
                sorted(role.awaiting),
                REBUILD_TIMEOUT_S,
            )
        role.rebuilding = False
        if role.deadline_handle is not None:
            role.deadline_handle.cancel()
        parked, role.parked = role.parked, []
        for resume in parked:
            resume()
        log.info("coordinating %s", self.deployments[dep].key)

    def forget_departed(self, live: set[str]) -> None:
        """A member that died while we waited for its report has nothing to report."""
        for dep, role in list(self.roles.items()):
            if role.rebuilding and role.awaiting - live:
                role.awaiting &= live
                if not role.awaiting:
                    self._finish_rebuild(dep)

    def _add_leases(self, dep: int, leases: dict[str, int]) -> None:
        table = self.table(dep)
        for name, count in leases.items():
            if count > 0:
                table.restore_inflight(name, count)

    # -- in-process front-end (this instance's own requests) -------------------------------

    def park_or_run(self, dep: int, action: Callable[[], None], front: bool = False) -> bool:
        """Run `action` now if coordinating `dep`; park it while rebuilding (a retry, `front`,
        ahead of the others, as it would stand in the queue). False if neither."""
        role = self.roles.get(dep)
        if role is None:
            return False
        if not role.rebuilding:
            action()
        elif front:
            role.parked.insert(0, action)
        else:
            role.parked.append(action)
        return True

    # -- the admin view ---------------------------------------------------------------------

    def describe(self, dep: int) -> dict | None:
        """The deployment's admin document from this coordinator's table, for another
        instance's admin view; None when this instance does not coordinate it. Response counters
        are per instance, so they stay with each instance's own view."""
        if dep not in self.roles:
            return None
        document = deployment_document(self.deployments[dep])
        document.pop("responses", None)
        return document

    # -- TCP front-ends ---------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FrontEndConnection(self), host, port)
        return self.server.sockets[0].getsockname()[1]

    def hello(self, conn: FrontEndConnection, doc: dict) -> None:
        if doc.get("config") != self.config_hash:
            log.error("front-end %s runs another configuration; refusing it", doc.get("instance"))
            conn.close()
            return
        conn.instance = str(doc.get("instance"))
        reported: dict[int, dict[str, int]] = {d: {} for d in doc.get("deployments", [])}
        for dep, name, count in doc.get("leases", []):
            conn.leases[(dep, name)] += count
            reported.setdefault(dep, {})[name] = reported.get(dep, {}).get(name, 0) + count
        for dep, leases in reported.items():
            conn.reported.add(dep)
            role = self.roles.get(dep)
            if role is None:
                continue  # counted when (if) we take the deployment over: see gain()
            # Slots a front-end holds are real whatever state we are in: count them.
            self._add_leases(dep, leases)
            if conn.instance in role.awaiting:
                role.awaiting.discard(conn.instance)
                if not role.awaiting:
                    self._finish_rebuild(dep)

    def acquire(self, conn: FrontEndConnection, ticket: int, dep: int, front: bool = False) -> None:
        if dep >= len(self.deployments) or dep not in self.roles:
            conn.send(p.reject(ticket, 503))
            return

        def run() -> None:
            if conn.closed or ticket in conn.cancelled:
                conn.cancelled.discard(ticket)
                return
            table = self.table(dep)
            replica = table.try_acquire(front)
            if replica is not None:
                conn.leases[(dep, replica.name)] += 1
                conn.send(p.grant(ticket, replica.name.encode()))
                return
            waiter = RemoteWaiter(conn, dep, ticket)
            conn.waiters[ticket] = waiter
            try:
                table.enqueue(waiter, front)
            except QueueFull:
                del conn.waiters[ticket]
                conn.send(p.reject(ticket, 429))
                return
            self.deployments[dep].queued_at_coordinator()

        self.park_or_run(dep, run, front)

    def cancel(self, conn: FrontEndConnection, ticket: int, dep: int) -> None:
        waiter = conn.waiters.pop(ticket, None)
        if waiter is not None:
            if dep in self.roles:
                self.table(dep).cancel(waiter)
        elif dep in self.roles and self.roles[dep].rebuilding:
            conn.cancelled.add(ticket)  # still parked: dropped when it runs

    def release(self, conn: FrontEndConnection, dep: int, name: str) -> None:
        key = (dep, name)
        if conn.leases.get(key, 0) > 0:
            conn.leases[key] -= 1
        if dep in self.roles:
            replica = self.table(dep).replicas.get(name)
            if replica is not None:
                self.table(dep).release(replica)

    def connect_failed(self, dep: int, name: str, refused: bool) -> None:
        """A front-end could not connect to a replica: the same rule as our own failures."""
        if dep in self.roles:
            replica = self.table(dep).replicas.get(name)
            if replica is not None:
                self.deployments[dep].connect_failed(replica, refused)

    def connection_closed(self, conn: FrontEndConnection) -> None:
        """A front-end is gone: its queued requests leave the queue, its slots come back."""
        self.connections.discard(conn)
        for waiter in list(conn.waiters.values()):
            if waiter.dep in self.roles:
                self.table(waiter.dep).cancel(waiter)
        conn.waiters.clear()
        for (dep, name), count in conn.leases.items():
            if dep in self.roles and count > 0:
                table = self.table(dep)
                replica = table.replicas.get(name)
                for _ in range(count):
                    if replica is not None:
                        table.release(replica)
        conn.leases.clear()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()


class FrontEndConnection(asyncio.Protocol):
    """One front-end instance's persistent connection to this coordinator."""

    def __init__(self, service: CoordinatorService) -> None:
        self.service = service
        self.instance = "?"
        self.reported: set[int] = set()  # deployments this front-end has sent its leases for
        self.cancelled: set[int] = set()  # tickets cancelled while parked
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self.leases: Counter[tuple[int, str]] = Counter()
        self.waiters: dict[int, RemoteWaiter] = {}
        self.reader = p.FrameReader(self.on_frame)
        self.out: list[bytes] = []
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.service.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except p.ProtocolError as exc:
            log.error("front-end %s: %s", self.instance, exc)
            self.close()
        self.flush()

    def on_frame(self, kind: int, payload: bytes) -> None:
        service = self.service
        if kind == p.ACQUIRE:
            ticket, dep = p.unpack_ticket_dep(payload)
            service.acquire(self, ticket, dep)
        elif kind == p.RELEASE:
            dep, name = p.unpack_release(payload)
            service.release(self, dep, name.decode())
        elif kind == p.CANCEL:
            ticket, dep = p.unpack_ticket_dep(payload)
            service.cancel(self, ticket, dep)
        elif kind == p.HELLO:
            service.hello(self, json.loads(payload))
        elif kind == p.FAILED:
            dep, name, refused = p.unpack_failed(payload)
            service.connect_failed(dep, name.decode(), refused)
        elif kind == p.ACQUIRE_FRONT:
            ticket, dep = p.unpack_ticket_dep(payload)
            service.acquire(self, ticket, dep, front=True)
        elif kind == p.STATE:
            request, dep = p.unpack_state(payload)
            self.send(p.state_reply(request, service.describe(dep)))
        else:
            raise p.ProtocolError(f"unexpected frame kind {kind}")

    def leases_for(self, dep: int) -> dict[str, int]:
        return {name: n for (d, name), n in self.leases.items() if d == dep and n > 0}

    def send(self, data: bytes) -> None:
        # Coalesce everything produced in one loop turn into one write.
        self.out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.service.connection_closed(self)
