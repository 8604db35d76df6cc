"""The front-end side: a `Broker` per deployment stands where the `SlotTable` stands in a single
process, and asks the deployment's coordinator instead.

The proxy's `Exchange` calls the same five things either way (try_acquire, enqueue, cancel,
release, and the ready count). When this instance coordinates the deployment itself the broker
goes straight to the local table (no network hop); otherwise it sends ACQUIRE/CANCEL/RELEASE
frames on the persistent link to the coordinator and hands GRANTs to the waiting exchange.

The broker keeps two facts that survive a coordinator's death: the slots it holds (`leases`) and
its requests still waiting (`pending`, in arrival order). On a new coordinator it reports the
first (HELLO) and asks again for the second, so nothing waiting is lost and nothing in flight is
forgotten. While no coordinator is reachable, requests wait (bounded by their own timers):
guessing could exceed a replica's limit. A waiting retry (`front`) stays one wherever it is asked
again: it keeps its place ahead of first attempts at every coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from inferfront.coordinator import protocol as p
from inferfront.routing.slots import QueueFull, Replica, SlotTable

if TYPE_CHECKING:
    from inferfront.coordinator.service import CoordinatorService

log = logging.getLogger("inferfront.coordinator")


class BrokerWaiter(Protocol):
    active: bool
    ticket: int
    decided_by: str | None

    def grant(self, replica: Replica) -> None: ...

    def refuse(self, status: int, message: str) -> None: ...


class Link(Protocol):
    """How a broker reaches its coordinator."""

    local: bool

    def send(self, data: bytes) -> None: ...


class Broker:
    __slots__ = (
        "client",
        "dep",
        "key",
        "leases",
        "link",
        "local_waiters",
        "pending",
        "retries",
        "service",
        "table",
        "unsent",
    )

    def __init__(
        self, client: ClusterClient, dep: int, key: str, table: SlotTable, service
    ) -> None:
        self.client = client
        self.dep = dep
        self.key = key
        self.table = table  # this instance's replica registry; the decision when coordinating
        self.service: CoordinatorService = service
        self.link: Link | None = None
        self.leases: Counter[str] = Counter()
        self.pending: dict[int, BrokerWaiter] = {}  # ticket -> waiter, oldest first
        self.unsent: set[int] = set()  # pending tickets no coordinator has seen yet
        self.retries: set[int] = set()  # pending tickets that may jump the queue (retries)
        self.local_waiters: dict[int, _LocalWaiter] = {}

    # -- what the proxy calls (the SlotTable's interface) -----------------------------------

    @property
    def ready_count(self) -> int:
        return self.table.ready_count

    @property
    def replicas(self) -> dict[str, Replica]:
        return self.table.replicas

    @property
    def queued(self) -> int:
        return len(self.pending)

    def _coordinating(self) -> bool:
        link = self.link
        return link is not None and link.local and self.service.coordinating(self.dep)

    def try_acquire(self, jump_queue: bool = False) -> Replica | None:
        if not self._coordinating():
            return None
        replica = self.table.try_acquire(jump_queue)
        if replica is not None:
            self.leases[replica.name] += 1
        return replica

    def enqueue(self, waiter: BrokerWaiter, front: bool = False) -> None:
        if self._coordinating():
            waiter.ticket = ticket = self.client.new_ticket(None)
            self._enqueue_local(ticket, waiter, front, raise_full=True)
            return
        waiter.ticket = ticket = self.client.new_ticket(self)
        self.pending[ticket] = waiter
        if front:
            self.retries.add(ticket)
        self._send_acquire(ticket)

    def cancel(self, waiter: BrokerWaiter) -> None:
        if not waiter.active:
            return
        waiter.active = False
        ticket = waiter.ticket
        local = self.local_waiters.pop(ticket, None)
        if local is not None:
            self.table.cancel(local)
            return
        self.client.forget_ticket(ticket)
        sent = self.pending.pop(ticket, None) is not None and ticket not in self.unsent
        if sent and self.link is not None:
            self.link.send(p.cancel(ticket, self.dep))
        self.unsent.discard(ticket)
        self.retries.discard(ticket)

    def release(self, replica: Replica) -> None:
        name = replica.name
        if self.leases[name] > 0:
            self.leases[name] -= 1
        link = self.link
        if link is not None and link.local:  # coordinating, or rebuilding: gain() counted it
            self.table.release(replica)
        elif link is not None:
            link.send(p.release(self.dep, name.encode()))
        # else: no coordinator now; the lease count we keep is what the next one will hear

    def connect_failed(self, name: str, refused: bool) -> None:
        """Tell a remote coordinator this replica refused us, so it stops granting it."""
        link = self.link
        if link is not None and not link.local:
            link.send(p.failed(self.dep, name.encode(), refused))

    # -- local decisions --------------------------------------------------------------------

    def _enqueue_local(
        self, ticket: int, waiter: BrokerWaiter, front: bool, raise_full: bool
    ) -> None:
        local = _LocalWaiter(self, ticket, waiter)
        self.local_waiters[ticket] = local
        try:
            self.table.enqueue(local, front)
        except QueueFull:
            del self.local_waiters[ticket]
            if raise_full:
                raise
            waiter.active = False
            waiter.refuse(429, "Too many requests are pending for this deployment; retry later.")
            return
        if not self.table.ready_count:
            self.service.deployments[self.dep].queued_at_coordinator()

    # -- remote decisions -------------------------------------------------------------------

    def _send_acquire(self, ticket: int) -> None:
        link = self.link
        if link is None:
            self.unsent.add(ticket)
        elif link.local:
            waiter = self.pending.pop(ticket)
            self.client.tickets.pop(ticket, None)  # local decisions need no directory
            self.unsent.discard(ticket)
            front = ticket in self.retries
            self.retries.discard(ticket)
            self._park_local(ticket, waiter, front)
        else:
            self.unsent.discard(ticket)
            link.send(p.acquire(ticket, self.dep, ticket in self.retries))

    def _park_local(self, ticket: int, waiter: BrokerWaiter, front: bool) -> None:
        def run() -> None:
            if waiter.active:
                self._enqueue_local(ticket, waiter, front, raise_full=False)

        if not self.service.park_or_run(self.dep, run, front):
            # We hold no role after all (lost a race); wait for the next resolution.
            self.pending[ticket] = waiter
            self.client.tickets[ticket] = self
            self.unsent.add(ticket)
            if front:
                self.retries.add(ticket)

    def granted(self, ticket: int, name: str, via: Link) -> None:
        waiter = self.pending.pop(ticket, None)
        replica = self.table.replicas.get(name)
        if waiter is None or not waiter.active or replica is None:
            # Cancelled meanwhile, or a replica we have not heard of yet: give it back to
            # the coordinator that granted it (not necessarily our current one).
            via.send(p.release(self.dep, name.encode()))
            if waiter is not None and waiter.active:
                self.pending[ticket] = waiter
                self.client.tickets[ticket] = self
                self._send_acquire(ticket)  # still a retry if it was one
            else:
                self.retries.discard(ticket)
            return
        self.retries.discard(ticket)
        self.leases[name] += 1
        waiter.active = False
        waiter.decided_by = self.link.member_id if self.link is not None else None
        waiter.grant(replica)

    def refused(self, ticket: int, status: int) -> None:
        waiter = self.pending.get(ticket)
        if waiter is None:
            return
        if status == 503:
            # That instance is not (or no longer) the coordinator: ask again once we know who is.
            self.unsent.add(ticket)
            self.client.tickets[ticket] = self
            self.client.resolve_soon()
            return
        del self.pending[ticket]
        self.retries.discard(ticket)
        waiter.active = False
        waiter.refuse(status, "Too many requests are pending for this deployment; retry later.")

    # -- coordinator changes ----------------------------------------------------------------

    def switch(self, link: Link | None, members: list[str], now: float) -> None:
        """The deployment's coordinator changed: report our slots, ask again for our waiters."""
        self.link = link
        if link is None:
            self.unsent.update(self.pending)
            return
        if link.local:
            self.service.gain(self.dep, members, dict(self.leases), now)
        else:
            leases = [(self.dep, name, n) for name, n in self.leases.items() if n > 0]
            link.send(p.hello(self.client.instance_id, self.client.config_hash, [self.dep], leases))
        for ticket in list(self.pending):
            self._send_acquire(ticket)

    def resend_unsent(self) -> None:
        if self.link is None:
            return
        for ticket in [t for t in self.pending if t in self.unsent]:
            self._send_acquire(ticket)


class _LocalWaiter:
    """Our own request in our own coordinator's queue: counts the lease when granted."""

    __slots__ = ("active", "broker", "ticket", "waiter")

    def __init__(self, broker: Broker, ticket: int, waiter: BrokerWaiter) -> None:
        self.broker = broker
        self.ticket = ticket
        self.waiter = waiter
        self.active = True

    def grant(self, replica: Replica) -> None:
        broker = self.broker
        broker.local_waiters.pop(self.ticket, None)
        broker.leases[replica.name] += 1
        self.waiter.active = False
        self.waiter.grant(replica)


class TcpLink(asyncio.Protocol):
    """A persistent connection to another instance's coordinator service."""

    local = False

    def __init__(self, client: ClusterClient, member_id: str, address: str) -> None:
        self.client = client
        self.member_id = member_id
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.reader = p.FrameReader(self.on_frame)
        self.out: list[bytes] = []
        self.connected = False
        self.closed = False
        self._flush_scheduled = False
        self._state_requests: dict[int, asyncio.Future[dict | None]] = {}
        self._next_state_request = 0

    async def connect(self) -> None:
        host, _, port = self.address.rpartition(":")
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, host, int(port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connected = True
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except p.ProtocolError as exc:
            log.error("coordinator %s: %s", self.member_id, exc)
            self.transport.close()  # type: ignore[union-attr]

    def on_frame(self, kind: int, payload: bytes) -> None:
        if kind == p.GRANT:
            ticket, name = p.unpack_grant(payload)
            broker = self.client.tickets.pop(ticket, None)
            if broker is not None:
                broker.granted(ticket, name.decode(), self)
            else:  # a grant for a request that gave up: hand the slot straight back
                dep = self.client.ticket_deps.pop(ticket, None)
                if dep is not None:
                    self.send(p.release(dep, name))
        elif kind == p.REJECT:
            ticket, status = p.unpack_reject(payload)
            broker = self.client.tickets.pop(ticket, None)
            if broker is not None:
                broker.refused(ticket, status)
        elif kind == p.STATE_REPLY:
            request, document = p.unpack_state_reply(payload)
            future = self._state_requests.pop(request, None)
            if future is not None and not future.done():
                future.set_result(document)

    def request_state(self, dep: int) -> asyncio.Future[dict | None]:
        """The coordinator's admin document of `dep` (None: it does not coordinate it, or the
        link dropped first). The caller bounds the wait; a cancelled future is forgotten."""
        self._next_state_request = request = (self._next_state_request + 1) & 0xFFFFFFFF
        future: asyncio.Future[dict | None] = asyncio.get_running_loop().create_future()
        self._state_requests[request] = future
        future.add_done_callback(lambda _: self._state_requests.pop(request, None))
        if self.closed:
            future.set_result(None)
        else:
            self.send(p.state(request, dep))
        return future

    def send(self, data: bytes) -> None:
        self.out.append(data)
        if self.connected and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connected = False
        for future in list(self._state_requests.values()):
            if not future.done():
                future.set_result(None)
        self.client.link_lost(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class LocalLink:
    local = True
    member_id = None  # decisions made here: the access log names this instance

    def send(self, data: bytes) -> None:  # pragma: no cover - never used: decisions are direct
        raise AssertionError("the local link carries no frames")


LOCAL_LINK = LocalLink()


class ClusterClient:
    """All brokers of this instance, the links to coordinators, and the ticket directory."""

    def __init__(self, instance_id: str, config_hash: str) -> None:
        self.instance_id = instance_id
        self.config_hash = config_hash
        self.brokers: list[Broker] = []
        self.tickets: dict[int, Broker] = {}
        self.ticket_deps: dict[int, int] = {}
        self.links: dict[str, TcpLink] = {}
        self._next_ticket = 0
        self._resolve = asyncio.Event()

    def new_ticket(self, broker: Broker | None) -> int:
        """A request's number; `broker` when a remote coordinator will answer for it."""
        self._next_ticket = ticket = (self._next_ticket + 1) & 0xFFFFFFFF
        if broker is not None:
            self.tickets[ticket] = broker
        return ticket

    def forget_ticket(self, ticket: int) -> None:
        broker = self.tickets.pop(ticket, None)
        if broker is not None and broker.link is not None and not broker.link.local:
            # A GRANT may still be on its way: remember where to give the slot back.
            self.ticket_deps[ticket] = broker.dep
            if len(self.ticket_deps) > 100_000:
                self.ticket_deps.pop(next(iter(self.ticket_deps)))

    def resolve_soon(self) -> None:
        self._resolve.set()

    def link_lost(self, link: TcpLink) -> None:
        if self.links.get(link.member_id) is link:
            del self.links[link.member_id]
        for broker in self.brokers:
            if broker.link is link:
                log.warning("lost the coordinator of %s (%s)", broker.key, link.member_id)
                broker.switch(None, [], 0.0)
        self.resolve_soon()

    async def link_to(self, member_id: str, address: str) -> TcpLink | None:
        link = self.links.get(member_id)
        if link is not None and link.address == address and not link.closed:
            return link
        link = TcpLink(self, member_id, address)
        try:
            await link.connect()
        except OSError as exc:
            log.warning("cannot reach coordinator %s at %s: %s", member_id, address, exc)
            return None
        self.links[member_id] = link
        return link

    async def wait_resolve(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._resolve.wait(), timeout)
        self._resolve.clear()

    def close(self) -> None:
        for link in list(self.links.values()):
            link.close()
