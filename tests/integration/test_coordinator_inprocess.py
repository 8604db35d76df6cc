"""Coordinator and front-ends in one event loop, over real loopback TCP connections.

Each `FrontEnd` is what one inferfront instance holds: its own `DeploymentState`s (built from a
real configuration), a `CoordinatorService` listening on 127.0.0.1, a `ClusterClient` and one
`Broker` per deployment. The test plays the node's part (who coordinates what) by hand, and
drives the brokers with `FakeWaiter`s the way the proxy's `Exchange` does: try_acquire, else
enqueue; hold the slot; release (and a retry: try_acquire(jump_queue=True), else
enqueue(front=True)).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from inferfront.config import load_config
from inferfront.coordinator import service as service_module
from inferfront.coordinator.broker import LOCAL_LINK, Broker, ClusterClient, TcpLink
from inferfront.coordinator.node import config_hash
from inferfront.coordinator.service import CoordinatorService
from inferfront.endpoints import DeploymentState, Endpoints
from inferfront.routing.slots import QueueFull, Replica, SlotTable
from tests.helpers import async_wait_until

BLUE, GREEN = 0, 1  # deployments are numbered by their sorted keys: iris/blue, iris/green
BLUE_LIMIT, GREEN_LIMIT = 2, 1
BLUE_REPLICAS = ("blue-0", "blue-1")
GREEN_REPLICAS = ("green-0",)
POLL = 0.002
WAIT = 5.0


def config_document() -> dict:
    def deployment(name: str, limit: int, urls: list[str]) -> dict:
        # The urls are never contacted: replicas are announced to each front-end by hand.
        return {
            "name": name,
            "urls": urls,
            "request_settings": {
                "max_concurrent_requests_per_instance": limit,
                "max_queued_requests": 500,
            },
        }

    return {
        "endpoints": [
            {
                "name": "iris",
                "auth_mode": "none",
                "traffic": {"blue": 100, "green": 0},
                "deployments": [
                    deployment("blue", BLUE_LIMIT, ["http://127.0.0.1:1", "http://127.0.0.1:2"]),
                    deployment("green", GREEN_LIMIT, ["http://127.0.0.1:3"]),
                ],
            }
        ]
    }


class FakeWaiter:
    """A request waiting for a slot, as the broker sees an `Exchange`."""

    def __init__(self, label: str, log: list[str] | None = None) -> None:
        self.label = label
        self.active = False
        self.ticket = 0
        self.decided_by: str | None = None
        self.replica: Replica | None = None
        self.refused: int | None = None
        self.settled = asyncio.Event()
        self._log = log

    def grant(self, replica: Replica) -> None:
        assert self.replica is None, f"{self.label} granted twice"
        self.replica = replica
        if self._log is not None:
            self._log.append(self.label)
        self.settled.set()

    def refuse(self, status: int, message: str) -> None:
        self.refused = status
        self.settled.set()


class FrontEnd:
    """One instance's cluster parts, wired like `ClusterNode` wires them."""

    def __init__(self, instance_id: str, config_path: Path) -> None:
        self.instance_id = instance_id
        config = load_config(config_path)
        self.endpoints = Endpoints(list(config.endpoints))
        self.states: list[DeploymentState] = sorted(
            self.endpoints.deployments(), key=lambda d: d.key
        )
        keys = [state.key for state in self.states]
        digest = config_hash(keys, config_path.read_text())
        self.service = CoordinatorService(instance_id, digest, self.states)
        self.client = ClusterClient(instance_id, digest)
        self.brokers = [
            Broker(self.client, dep, state.key, state.table, self.service)
            for dep, state in enumerate(self.states)
        ]
        self.client.brokers = self.brokers
        self.address = ""
        for state, names in zip(self.states, (BLUE_REPLICAS, GREEN_REPLICAS), strict=True):
            for index, name in enumerate(names):
                state.replica_added(name, "127.0.0.1", 20000 + index)
                state.replica_ready(name, True)

    async def start(self) -> None:
        port = await self.service.listen("127.0.0.1", 0)
        self.address = f"127.0.0.1:{port}"

    async def point_at(self, coordinator: FrontEnd, members: Sequence[FrontEnd] = ()) -> None:
        """What the node does when `coordinator` holds every deployment's lease."""
        for broker in self.brokers:
            if coordinator is self:
                if broker.link is not LOCAL_LINK:
                    ids = [member.instance_id for member in members]
                    broker.switch(LOCAL_LINK, ids, time.time())
                continue
            link = await self.client.link_to(coordinator.instance_id, coordinator.address)
            assert link is not None
            if broker.link is not link:
                broker.switch(link, [], 0.0)
            broker.resend_unsent()

    def request(self, dep: int, waiter: FakeWaiter) -> None:
        """The proxy's way in: a free slot at once, else wait in the coordinator's queue."""
        broker = self.brokers[dep]
        replica = broker.try_acquire()
        if replica is not None:
            waiter.grant(replica)
            return
        waiter.active = True
        try:
            broker.enqueue(waiter)
        except QueueFull:
            waiter.active = False
            waiter.refuse(429, "queue full")

    def retry(self, dep: int, waiter: FakeWaiter) -> None:
        """The proxy's way back in after a replica refused the connection: ahead of the queue."""
        broker = self.brokers[dep]
        replica = broker.try_acquire(jump_queue=True)
        if replica is not None:
            waiter.grant(replica)
            return
        waiter.active = True
        broker.enqueue(waiter, front=True)

    def release(self, dep: int, waiter: FakeWaiter) -> None:
        assert waiter.replica is not None
        self.brokers[dep].release(waiter.replica)

    def table(self, dep: int):
        return self.states[dep].table

    def link(self) -> TcpLink | None:
        return next(iter(self.client.links.values()), None)

    def connection_of(self, other: FrontEnd):
        """The coordinator service's connection from front-end `other`."""
        for conn in self.service.connections:
            if conn.instance == other.instance_id:
                return conn
        return None

    def die(self) -> None:
        """Vanish without a goodbye: every socket aborted (as the kernel does on SIGKILL)."""
        if self.service.server is not None:
            self.service.server.close()
        for conn in list(self.service.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for link in list(self.client.links.values()):
            if link.transport is not None:
                link.transport.abort()
        for dep in list(self.service.roles):
            role = self.service.roles.pop(dep)
            if role.deadline_handle is not None:
                role.deadline_handle.cancel()

    async def close(self) -> None:
        self.client.close()
        await self.service.close()
        for role in self.service.roles.values():
            if role.deadline_handle is not None:
                role.deadline_handle.cancel()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config_document()))
    return path


@pytest.fixture
async def make_front_ends(config_path: Path) -> AsyncIterator:
    made: list[FrontEnd] = []

    async def make(*ids: str) -> list[FrontEnd]:
        front_ends = [FrontEnd(instance_id, config_path) for instance_id in ids]
        for front_end in front_ends:
            await front_end.start()
        made.extend(front_ends)
        return front_ends

    yield make
    for front_end in made:
        await front_end.close()


async def settled(*waiters: FakeWaiter) -> None:
    await asyncio.wait_for(asyncio.gather(*(w.settled.wait() for w in waiters)), WAIT)


async def wait_for(predicate, message: str) -> None:
    await async_wait_until(predicate, timeout=WAIT, interval=POLL, message=message)


async def coordinated_by(coordinator: FrontEnd, others: list[FrontEnd]) -> None:
    """`coordinator` gains everything (awaiting `others`), then each of them points at it."""
    await coordinator.point_at(coordinator, [coordinator, *others])
    for other in others:
        await other.point_at(coordinator)
    await wait_for(
        lambda: all(coordinator.service.coordinating(dep) for dep in (BLUE, GREEN)),
        "the coordinator finished its rebuild",
    )


def fill(
    front_end: FrontEnd, dep: int, count: int, label: str, log: list[str] | None = None
) -> list[FakeWaiter]:
    waiters = [FakeWaiter(f"{label}{i}", log) for i in range(count)]
    for waiter in waiters:
        front_end.request(dep, waiter)
    return waiters


# -- the limit --------------------------------------------------------------------------------


class Occupancy:
    """Slots held as the front-ends see them: granted and not yet released. A front-end learns of
    a grant after the coordinator counted it and releases before the coordinator hears of it, so
    this is never more than the coordinator's count: above the limit here means above it there."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def take(self, name: str) -> None:
        self.held[name] += 1
        self.peak[name] = max(self.peak[name], self.held[name])

    def give(self, name: str) -> None:
        self.held[name] -= 1


async def test_grants_never_exceed_the_limit_across_front_ends(make_front_ends) -> None:
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    rng = random.Random(20240611)
    occupancy = Occupancy()
    limits = {BLUE: BLUE_LIMIT, GREEN: GREEN_LIMIT}
    outcomes: Counter[str] = Counter()

    async def one_request(front_end: FrontEnd, dep: int, index: int) -> None:
        waiter = FakeWaiter(f"{front_end.instance_id}{dep}-{index}")
        give_up_after = rng.uniform(0.0, 0.05) if rng.random() < 0.2 else None
        await asyncio.sleep(rng.uniform(0, 0.01))  # arrivals spread over a few milliseconds
        front_end.request(dep, waiter)
        try:
            await asyncio.wait_for(waiter.settled.wait(), give_up_after or WAIT)
        except TimeoutError:
            if waiter.replica is None:  # nothing can grant between the timeout and this line
                front_end.brokers[dep].cancel(waiter)
                outcomes["cancelled"] += 1
                return
        assert waiter.refused is None, f"{waiter.label} refused {waiter.refused}"
        name = waiter.replica.name  # type: ignore[union-attr]
        occupancy.take(name)
        coordinator_table = a.table(dep)
        assert coordinator_table.replicas[name].inflight <= limits[dep]
        await asyncio.sleep(rng.uniform(0, 0.004))  # the request's service time
        occupancy.give(name)
        front_end.release(dep, waiter)
        outcomes["served"] += 1

    jobs = [
        one_request(front_end, dep, index)
        for front_end in (a, b, c)
        for dep in (BLUE, GREEN)
        for index in range(40)
    ]
    await asyncio.wait_for(asyncio.gather(*jobs), 30)

    assert outcomes["served"] + outcomes["cancelled"] == len(jobs)
    assert outcomes["served"] > len(jobs) // 2
    for name in BLUE_REPLICAS:
        assert 1 <= occupancy.peak[name] <= BLUE_LIMIT
    assert occupancy.peak["green-0"] == GREEN_LIMIT
    # Every slot came back and nobody is left waiting, on both sides of the wire.
    await wait_for(
        lambda: a.table(BLUE).inflight == 0 and a.table(GREEN).inflight == 0,
        "every slot released at the coordinator",
    )
    assert a.table(BLUE).queued == 0 and a.table(GREEN).queued == 0
    for other in (b, c):
        conn = a.connection_of(other)
        assert conn is not None
        assert sum(conn.leases.values()) == 0 and not conn.waiters
    for front_end in (a, b, c):
        for broker in front_end.brokers:
            assert sum(broker.leases.values()) == 0
            assert not broker.pending and not broker.local_waiters


# -- the order --------------------------------------------------------------------------------


async def queue_in_order(
    table: SlotTable, arrivals: list[tuple[FrontEnd, str]], order: list[str]
) -> list[tuple[FrontEnd, FakeWaiter]]:
    """Each front end asks in turn; every ask is queued at the coordinator before the next."""
    waiters = []
    for position, (front_end, label) in enumerate(arrivals, start=table.queued + 1):
        waiter = FakeWaiter(label, order)
        front_end.request(GREEN, waiter)
        waiters.append((front_end, waiter))
        await wait_for(lambda n=position: table.queued == n, f"{label} queued")
    return waiters


async def serve_in_turn(table: SlotTable, waiters: list[tuple[FrontEnd, FakeWaiter]]) -> None:
    """The one slot goes to each waiter in turn, never to two at once, and ends free."""
    for front_end, waiter in waiters:
        await settled(waiter)
        assert table.replicas["green-0"].inflight == 1
        front_end.release(GREEN, waiter)
    await wait_for(lambda: table.inflight == 0, "the last slot released")


async def test_the_oldest_acquire_gets_the_first_freed_slot(make_front_ends) -> None:
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    table = a.table(GREEN)  # one replica, one slot
    holder = fill(a, GREEN, 1, "hold")[0]
    assert holder.replica is not None

    order: list[str] = []
    arrivals = [(b, "b1"), (c, "c1"), (a, "a1"), (b, "b2"), (c, "c2")]
    waiters = await queue_in_order(table, arrivals, order)

    a.release(GREEN, holder)
    await serve_in_turn(table, waiters)
    assert order == [label for _, label in arrivals]


async def test_a_retry_through_a_remote_coordinator_goes_before_older_waiters(
    make_front_ends,
) -> None:
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    table = a.table(GREEN)  # one replica, one slot
    holder = fill(a, GREEN, 1, "hold")[0]
    assert holder.replica is not None

    order: list[str] = []
    waiters = await queue_in_order(table, [(c, "c1"), (a, "a1"), (b, "b1")], order)
    # b's request is refused by its replica and retried: it already waited once.
    retried = FakeWaiter("b-retry", order)
    b.retry(GREEN, retried)
    await wait_for(lambda: table.queued == 4, "the retry queued")
    assert retried.replica is None  # the slot is taken: a retry waits too, but first in line

    a.release(GREEN, holder)
    await serve_in_turn(table, [(b, retried), *waiters])
    assert order == ["b-retry", "c1", "a1", "b1"]
    assert not b.brokers[GREEN].retries


async def test_cancel_while_queued(make_front_ends) -> None:
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    table = a.table(GREEN)
    holder = fill(a, GREEN, 1, "hold")[0]
    order: list[str] = []
    remote_gone, local_gone, kept = FakeWaiter("b1", order), FakeWaiter("a1", order), None
    b.request(GREEN, remote_gone)
    await wait_for(lambda: table.queued == 1, "b1 queued")
    a.request(GREEN, local_gone)
    kept = FakeWaiter("c1", order)
    c.request(GREEN, kept)
    await wait_for(lambda: table.queued == 3, "a1 and c1 queued")

    b.brokers[GREEN].cancel(remote_gone)
    a.brokers[GREEN].cancel(local_gone)
    await wait_for(lambda: table.queued == 1, "the cancellations reached the coordinator")
    assert not b.brokers[GREEN].pending
    assert not a.connection_of(b).waiters

    a.release(GREEN, holder)
    await settled(kept)
    assert order == ["c1"]
    assert remote_gone.replica is None and local_gone.replica is None
    c.release(GREEN, kept)
    await wait_for(lambda: table.inflight == 0, "released")


async def test_a_grant_for_a_cancelled_ticket_is_handed_back(make_front_ends) -> None:
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    table = a.table(GREEN)
    holder = fill(a, GREEN, 1, "hold")[0]
    late = FakeWaiter("b-late")
    b.request(GREEN, late)
    await wait_for(lambda: table.queued == 1, "b-late queued")
    next_in_line = FakeWaiter("c-next")
    c.request(GREEN, next_in_line)
    await wait_for(lambda: table.queued == 2, "c-next queued")

    # Hold b's incoming frames back so the GRANT is on the wire when b gives up.
    link = b.link()
    assert link is not None and link.transport is not None
    link.transport.pause_reading()
    a.release(GREEN, holder)
    conn_b = a.connection_of(b)
    await wait_for(lambda: conn_b.leases[(GREEN, "green-0")] == 1, "the grant went to b")
    b.brokers[GREEN].cancel(late)
    link.transport.resume_reading()

    await settled(next_in_line)  # b handed the slot back, so c's request got it
    assert late.replica is None
    assert next_in_line.replica is not None
    assert conn_b.leases[(GREEN, "green-0")] == 0
    assert table.replicas["green-0"].inflight == 1
    c.release(GREEN, next_in_line)
    await wait_for(lambda: table.inflight == 0, "released")


# -- a front-end goes away --------------------------------------------------------------------


async def test_a_dropped_front_end_gives_its_slots_back_and_leaves_the_queue(
    make_front_ends,
) -> None:
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    table = a.table(BLUE)  # 2 replicas x 2 slots
    held_by_b = fill(b, BLUE, 3, "b")
    await settled(*held_by_b)
    held_by_a = fill(a, BLUE, 1, "a")
    assert held_by_a[0].replica is not None
    assert table.inflight == 4
    queued_b = fill(b, BLUE, 2, "bq")
    await wait_for(lambda: table.queued == 2, "b's extra requests queued")
    queued_c = fill(c, BLUE, 2, "cq")
    await wait_for(lambda: table.queued == 4, "c's requests queued behind b's")

    b.die()
    # At once: b's 3 slots are free, b's 2 waiters are gone, so c's 2 waiters are served.
    await settled(*queued_c)
    assert all(waiter.replica is not None for waiter in queued_c)
    assert all(waiter.replica is None for waiter in queued_b)
    await wait_for(lambda: a.connection_of(b) is None, "b's connection is gone")
    assert table.queued == 0
    assert table.inflight == 3  # a's one and c's two
    assert all(r.inflight <= BLUE_LIMIT for r in table.replicas.values())
    for waiter in queued_c:
        c.release(BLUE, waiter)
    a.release(BLUE, held_by_a[0])
    await wait_for(lambda: table.inflight == 0, "released")


# -- takeover ---------------------------------------------------------------------------------


@dataclass
class Scene:
    b: FrontEnd
    c: FrontEnd
    d: FrontEnd
    held_b: list[FakeWaiter]
    held_c: list[FakeWaiter]
    waiting: dict[str, FakeWaiter]  # by front-end id


async def start_takeover_scene(
    make_front_ends, retry_from: Sequence[str] = (), log: list[str] | None = None
) -> Scene:
    """a coordinates; b holds 2 slots of blue, c 1, a 1 (full); c, d and b wait at a, then a
    retry from each of `retry_from` (labelled "<id>r"). Then a dies and b gains every
    deployment, expecting reports from c and d."""
    a, b, c, d = await make_front_ends("a", "b", "c", "d")
    by_id = {"a": a, "b": b, "c": c, "d": d}
    await coordinated_by(a, [b, c, d])
    held_b = fill(b, BLUE, 2, "b")
    await settled(*held_b)
    held_c = fill(c, BLUE, 1, "c")
    await settled(*held_c)
    held_a = fill(a, BLUE, 1, "a")
    assert held_a[0].replica is not None
    old_table = a.table(BLUE)
    assert old_table.inflight == 4
    waiting = {
        "c": fill(c, BLUE, 1, "cw", log)[0],
        "d": fill(d, BLUE, 1, "dw", log)[0],
        "b": fill(b, BLUE, 1, "bw", log)[0],
    }
    await wait_for(lambda: old_table.queued == 3, "three requests wait at a")
    for instance_id in retry_from:
        waiting[f"{instance_id}r"] = retried = FakeWaiter(f"{instance_id}r", log)
        by_id[instance_id].retry(BLUE, retried)
    await wait_for(lambda: old_table.queued == 3 + len(retry_from), "the retries wait at a")

    a.die()
    for survivor in (b, c, d):
        await wait_for(
            lambda s=survivor: all(broker.link is None for broker in s.brokers),
            f"{survivor.instance_id} noticed that its coordinator is gone",
        )
    await b.point_at(b, [b, c, d])
    return Scene(b, c, d, held_b, held_c, waiting)


def leases(front_end: FrontEnd, dep: int) -> int:
    return sum(front_end.brokers[dep].leases.values())


async def test_takeover_rebuilds_from_leases_and_grants_only_when_everyone_reported(
    make_front_ends,
) -> None:
    scene = await start_takeover_scene(make_front_ends)
    b, c, d, waiting = scene.b, scene.c, scene.d, scene.waiting
    table = b.table(BLUE)
    role = b.service.roles[BLUE]
    assert role.rebuilding and role.awaiting == {"c", "d"}
    assert table.inflight == leases(b, BLUE) == 2

    await c.point_at(b)
    await wait_for(lambda: "c" not in role.awaiting, "c reported its slots")
    await wait_for(lambda: len(role.parked) == 2, "b's and c's waiting requests are parked")
    # One slot is free (a's, which died with it), yet nothing is granted while d is unheard.
    assert table.inflight == leases(b, BLUE) + leases(c, BLUE) == 3
    assert not any(waiter.settled.is_set() for waiter in waiting.values())
    assert role.rebuilding

    await d.point_at(b)
    await wait_for(lambda: not role.rebuilding, "d reported: rebuild done")
    await wait_for(lambda: sum(w.replica is not None for w in waiting.values()) == 1, "one grant")
    granted = [label for label, waiter in waiting.items() if waiter.replica is not None]
    assert len(granted) == 1
    assert table.inflight == 4
    assert all(r.inflight <= BLUE_LIMIT for r in table.replicas.values())
    assert table.queued == 2

    # Slots granted by the dead coordinator are given back to the new one.
    owners = {"b": b, "c": c, "d": d}
    for waiter in scene.held_b:
        b.release(BLUE, waiter)
    for waiter in scene.held_c:
        c.release(BLUE, waiter)
    for waiter in waiting.values():
        await settled(waiter)
        assert waiter.replica is not None
        assert all(r.inflight <= BLUE_LIMIT for r in table.replicas.values())
    for label, waiter in waiting.items():
        owners[label].release(BLUE, waiter)
    await wait_for(lambda: table.inflight == 0 and table.queued == 0, "all released at b")


async def test_takeover_goes_on_without_a_silent_member_after_the_timeout(
    make_front_ends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "REBUILD_TIMEOUT_S", 0.3)
    scene = await start_takeover_scene(make_front_ends)
    b, c, waiting = scene.b, scene.c, scene.waiting
    role = b.service.roles[BLUE]
    assert role.deadline_handle is not None
    deadline = role.deadline_handle.when()
    await c.point_at(b)
    await wait_for(lambda: len(role.parked) == 2, "b's and c's waiting requests are parked")
    assert role.rebuilding and role.awaiting == {"d"}
    # d never reports: after the timeout b goes on with what it knows (3 slots in use).
    await wait_for(lambda: not role.rebuilding, "the rebuild timed out")
    assert asyncio.get_running_loop().time() >= deadline
    await wait_for(
        lambda: waiting["b"].replica is not None or waiting["c"].replica is not None,
        "a parked request was served",
    )
    assert b.table(BLUE).inflight == 4


async def test_a_front_end_switching_to_an_established_coordinator_reports_its_slots(
    make_front_ends,
) -> None:
    # c loses its link to the coordinator (b stays alive) and comes back: its slots are
    # released when the link drops and counted again from its HELLO.
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    table = a.table(BLUE)
    held_c = fill(c, BLUE, 2, "c")
    await settled(*held_c)
    assert table.inflight == 2
    link = c.link()
    assert link is not None and link.transport is not None
    link.transport.abort()
    await wait_for(lambda: table.inflight == 0, "c's slots released with its connection")
    await c.point_at(a)
    await wait_for(lambda: table.inflight == 2, "c's slots counted again from its HELLO")
    for waiter in held_c:
        c.release(BLUE, waiter)
    await wait_for(lambda: table.inflight == 0, "released")


async def test_release_while_no_coordinator_is_reported_at_the_next(make_front_ends) -> None:
    scene = await start_takeover_scene(make_front_ends)
    b, c, d, waiting = scene.b, scene.c, scene.d, scene.waiting
    # c finishes a request while nobody coordinates for it: the next coordinator hears 0 slots.
    c.release(BLUE, scene.held_c[0])
    assert leases(c, BLUE) == 0
    await c.point_at(b)
    await d.point_at(b)
    role = b.service.roles[BLUE]
    await wait_for(lambda: not role.rebuilding, "rebuild done")
    await wait_for(
        lambda: sum(w.replica is not None for w in waiting.values()) == 2,
        "two slots free (a's and c's): two waiters served",
    )
    assert b.table(BLUE).inflight == 4


async def test_release_on_the_new_coordinator_during_its_rebuild(make_front_ends) -> None:
    scene = await start_takeover_scene(make_front_ends)
    b, c, d, waiting = scene.b, scene.c, scene.d, scene.waiting
    role = b.service.roles[BLUE]
    assert role.rebuilding
    table = b.table(BLUE)
    assert table.inflight == 2
    b.release(BLUE, scene.held_b[0])  # a request b forwarded ends while b is still rebuilding
    await c.point_at(b)
    await d.point_at(b)
    await wait_for(lambda: not role.rebuilding, "rebuild done")
    # b's own 1 + c's 1 in flight, plus the 2 waiters served from the 2 free slots.
    await wait_for(lambda: sum(w.replica is not None for w in waiting.values()) == 2, "two served")
    assert table.inflight == 4


async def test_retries_stay_ahead_of_first_attempts_through_a_takeover(make_front_ends) -> None:
    # b's retry waited at a; at the takeover b parks it in its own (rebuilding) coordinator.
    # d retries while no coordinator answers; it asks b when it finds b. Both stay retries.
    order: list[str] = []
    scene = await start_takeover_scene(make_front_ends, retry_from=("b",), log=order)
    b, c, d, waiting = scene.b, scene.c, scene.d, scene.waiting
    role = b.service.roles[BLUE]
    table = b.table(BLUE)
    assert role.rebuilding
    waiting["dr"] = d_retry = FakeWaiter("dr", order)
    d.retry(BLUE, d_retry)
    assert d.brokers[BLUE].unsent and d.brokers[BLUE].retries

    await c.point_at(b)
    await wait_for(lambda: len(role.parked) == 3, "b's two requests and c's one are parked")
    await d.point_at(b)
    await wait_for(lambda: not role.rebuilding, "d reported: rebuild done")
    # a's slot, free since it died, goes to the oldest retry; the other retry leads the queue.
    await wait_for(lambda: table.queued == 4, "d's requests queued at b")
    assert order == ["br"]

    owners = {"b": b, "c": c, "d": d}
    holders = [(b, scene.held_b[0]), (b, scene.held_b[1]), (c, scene.held_c[0])]
    holders.append((b, waiting["br"]))
    for served, (front_end, holder) in enumerate(holders, start=2):
        front_end.release(BLUE, holder)
        await wait_for(lambda n=served: len(order) == n, f"grant number {served}")
        assert all(r.inflight <= BLUE_LIMIT for r in table.replicas.values())
    assert order == ["br", "dr", "bw0", "cw0", "dw0"]
    for label, waiter in waiting.items():
        if label != "br":
            owners[label[0]].release(BLUE, waiter)
    await wait_for(lambda: table.inflight == 0 and table.queued == 0, "all released at b")
    for front_end in (b, c, d):
        assert not front_end.brokers[BLUE].retries


# -- the admin view over the link -------------------------------------------------------------


async def test_a_front_end_reads_the_coordinators_view_over_its_link(make_front_ends) -> None:
    a, b, c = await make_front_ends("a", "b", "c")
    await coordinated_by(a, [b, c])
    held = fill(b, GREEN, 1, "b")
    await settled(*held)
    fill(c, GREEN, 2, "c")
    await wait_for(lambda: a.table(GREEN).queued == 2, "c's requests wait at a")
    link = b.link()
    assert link is not None

    document = await asyncio.wait_for(link.request_state(GREEN), WAIT)
    assert document is not None
    assert (document["name"], document["inflight"], document["queue_length"]) == ("green", 1, 2)
    assert document["replicas"] == [
        {"name": "green-0", "address": "127.0.0.1:20000", "state": "ready", "inflight": 1}
    ]
    assert "responses" not in document  # counters stay with each instance
    assert b.table(GREEN).inflight == 0  # what b alone would have shown

    # An instance that does not coordinate the deployment says so.
    other = await b.client.link_to(c.instance_id, c.address)
    assert other is not None
    assert await asyncio.wait_for(other.request_state(GREEN), WAIT) is None

    # A request outstanding when the link drops is answered (None) at once, not at a timeout.
    conn = a.connection_of(b)
    assert conn is not None and conn.transport is not None
    conn.transport.pause_reading()
    pending = link.request_state(BLUE)
    a.die()
    assert await asyncio.wait_for(pending, WAIT) is None
