"""Table tests for the routing policy of one deployment (SlotTable): pure, no asyncio, no clock."""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable

import pytest

from inferfront.routing.slots import QueueFull, Replica, SlotTable


class FakeWaiter:
    """A queued request that records the replicas it is granted."""

    def __init__(self, on_grant: Callable[[FakeWaiter, Replica], None] | None = None) -> None:
        self.active = True
        self.granted: list[Replica] = []
        self._on_grant = on_grant

    def grant(self, replica: Replica) -> None:
        self.granted.append(replica)
        if self._on_grant is not None:
            self._on_grant(self, replica)


def make_table(
    limit: int, count: int, max_queued: int = 100, ready: bool = True
) -> tuple[SlotTable, list[Replica]]:
    table = SlotTable(limit=limit, max_queued=max_queued)
    replicas = [Replica(f"r{index}", "127.0.0.1", 9000 + index) for index in range(count)]
    for replica in replicas:
        table.add(replica, ready=ready)
    return table, replicas


def acquire(table: SlotTable) -> Replica:
    replica = table.try_acquire()
    assert replica is not None
    return replica


def fill(table: SlotTable) -> list[Replica]:
    taken = []
    while (replica := table.try_acquire()) is not None:
        taken.append(replica)
    return taken


def loads(replicas: list[Replica]) -> list[int]:
    return [replica.inflight for replica in replicas]


# -- picking ----------------------------------------------------------------------------------


def test_picks_the_least_loaded_replica() -> None:
    table, (a, b, c) = make_table(limit=3, count=3)
    for _ in range(6):
        acquire(table)
    table.release(a)
    table.release(c)
    table.release(c)
    assert loads([a, b, c]) == [1, 2, 0]
    assert acquire(table) is c
    # a and c now both carry 1: a has waited longer at that load, so it goes first.
    assert acquire(table) is a
    assert acquire(table) is c
    assert loads([a, b, c]) == [2, 2, 2]


def test_four_replicas_with_limit_one_take_four_distinct_requests() -> None:
    table, replicas = make_table(limit=1, count=4)
    taken = [acquire(table) for _ in range(4)]
    assert set(taken) == set(replicas)
    assert table.try_acquire() is None


def test_ties_spread_evenly_with_limit_three() -> None:
    table, replicas = make_table(limit=3, count=3)
    taken = Counter(acquire(table) for _ in range(6))
    assert sorted(taken.values()) == [2, 2, 2]
    assert loads(replicas) == [2, 2, 2]


def test_ties_are_taken_least_recently_used_first() -> None:
    table, _ = make_table(limit=2, count=5)
    order = []
    for _ in range(1_000):
        replica = acquire(table)
        order.append(replica.name)
        table.release(replica)
    # Acquire then release on an idle table cycles through every replica in turn.
    assert order[:10] == ["r0", "r1", "r2", "r3", "r4"] * 2
    assert set(Counter(order).values()) == {200}


def test_full_table_refuses_and_never_exceeds_the_limit() -> None:
    table, replicas = make_table(limit=3, count=4)
    assert len(fill(table)) == 12
    assert table.try_acquire() is None
    assert loads(replicas) == [3, 3, 3, 3]
    assert table.inflight == 12
    assert table.free_slots == 0


def test_empty_table_has_nothing_to_give() -> None:
    table = SlotTable(limit=2, max_queued=5)
    assert table.try_acquire() is None
    assert (table.inflight, table.queued, table.busy, table.ready_count) == (0, 0, 0, 0)


# -- the queue --------------------------------------------------------------------------------


def test_oldest_waiter_gets_the_first_freed_slot() -> None:
    table, (only,) = make_table(limit=1, count=1)
    acquire(table)
    waiters = [FakeWaiter() for _ in range(3)]
    for waiter in waiters:
        table.enqueue(waiter)
    assert table.queued == 3

    for served, waiter in enumerate(waiters, start=1):
        table.release(only)
        assert waiter.granted == [only]
        assert not waiter.active
        assert table.queued == 3 - served
        assert only.inflight == 1  # the freed slot went straight to the waiter
    assert all(len(waiter.granted) == 1 for waiter in waiters)


def test_cancelled_waiters_are_skipped() -> None:
    table, (only,) = make_table(limit=1, count=1)
    acquire(table)
    first, second, third = FakeWaiter(), FakeWaiter(), FakeWaiter()
    for waiter in (first, second, third):
        table.enqueue(waiter)
    table.cancel(first)
    table.cancel(second)
    table.cancel(second)  # a second cancel changes nothing
    assert table.queued == 1

    table.release(only)
    assert first.granted == second.granted == []
    assert third.granted == [only]
    assert table.queued == 0


def test_cancel_after_grant_changes_nothing() -> None:
    table, (only,) = make_table(limit=1, count=1)
    acquire(table)
    waiter, later = FakeWaiter(), FakeWaiter()
    table.enqueue(waiter)
    table.enqueue(later)
    table.release(only)
    assert waiter.granted == [only]
    table.cancel(waiter)  # e.g. its timeout fires just after the grant
    assert table.queued == 1
    assert only.inflight == 1


def test_all_cancelled_leaves_the_slot_free() -> None:
    table, (only,) = make_table(limit=1, count=1)
    acquire(table)
    waiters = [FakeWaiter() for _ in range(3)]
    for waiter in waiters:
        table.enqueue(waiter)
    for waiter in waiters:
        table.cancel(waiter)
    table.release(only)
    assert only.inflight == 0
    assert acquire(table) is only


def test_waiter_releasing_inside_its_grant_passes_the_slot_on() -> None:
    # A waiter that has just given up may hand its slot straight back from `grant`.
    table, (only,) = make_table(limit=1, count=1)
    acquire(table)
    gone = FakeWaiter(on_grant=lambda _, replica: table.release(replica))
    second, third = FakeWaiter(), FakeWaiter()
    for waiter in (gone, second, third):
        table.enqueue(waiter)
    table.release(only)
    assert gone.granted == second.granted == [only]
    assert third.granted == []
    assert (only.inflight, table.inflight, table.queued) == (1, 1, 1)


def test_try_acquire_never_jumps_the_queue() -> None:
    table, (only,) = make_table(limit=2, count=1)
    fill(table)
    first, second = FakeWaiter(), FakeWaiter()
    table.enqueue(first)
    table.enqueue(second)

    table.release(only)
    assert first.granted == [only]
    assert table.try_acquire() is None  # second still waits: a newcomer goes behind it

    table.release(only)
    assert second.granted == [only]
    assert table.try_acquire() is None
    assert only.inflight == 2


def test_queue_full_at_max_queued() -> None:
    table, _ = make_table(limit=1, count=1, max_queued=2)
    fill(table)
    first, second = FakeWaiter(), FakeWaiter()
    table.enqueue(first)
    table.enqueue(second)
    with pytest.raises(QueueFull):
        table.enqueue(FakeWaiter())
    assert table.queued == 2

    table.cancel(first)  # a cancelled waiter frees its place in the queue
    table.enqueue(FakeWaiter())
    assert table.queued == 2


def test_zero_max_queued_refuses_every_waiter() -> None:
    table, _ = make_table(limit=1, count=1, max_queued=0)
    fill(table)
    with pytest.raises(QueueFull):
        table.enqueue(FakeWaiter())
    assert table.queued == 0


def test_retry_goes_to_the_head_of_the_queue() -> None:
    table, (only,) = make_table(limit=1, count=1)
    acquire(table)
    waiting, retry = FakeWaiter(), FakeWaiter()
    table.enqueue(waiting)
    table.enqueue(retry, front=True)  # it already waited its turn once
    table.release(only)
    assert retry.granted == [only]
    assert waiting.granted == []
    table.release(only)
    assert waiting.granted == [only]


def test_retry_is_queued_even_when_the_queue_is_full() -> None:
    table, (only,) = make_table(limit=1, count=1, max_queued=1)
    acquire(table)
    table.enqueue(FakeWaiter())
    retry = FakeWaiter()
    table.enqueue(retry, front=True)
    assert table.queued == 2
    with pytest.raises(QueueFull):
        table.enqueue(FakeWaiter())
    table.release(only)
    assert retry.granted == [only]


def test_retry_takes_a_free_slot_at_once() -> None:
    table, (a, b) = make_table(limit=1, count=2)
    acquire(table)
    assert table.try_acquire(jump_queue=True) is b
    assert table.try_acquire(jump_queue=True) is None
    table.release(a)
    assert table.try_acquire(jump_queue=True) is a


# -- readiness, drain, removal ----------------------------------------------------------------


def test_unready_replica_gets_nothing() -> None:
    table, _ = make_table(limit=2, count=1, ready=False)
    assert table.try_acquire() is None
    assert table.ready_count == 0
    assert table.free_slots == 0


def test_unready_replica_releases_still_count() -> None:
    table, (slow, other) = make_table(limit=2, count=2)
    held = fill(table)
    table.set_ready(slow.name, False)
    waiter = FakeWaiter()
    table.enqueue(waiter)

    table.release(slow)
    assert slow.inflight == 1
    assert table.inflight == 3
    assert waiter.granted == []  # the freed slot is on an unready replica
    table.release(slow)
    assert slow.inflight == 0

    table.release(other)
    assert waiter.granted == [other]
    assert len(held) == 4


def test_becoming_ready_hands_slots_to_waiters_at_once() -> None:
    table, (replica,) = make_table(limit=2, count=1, ready=False)
    waiters = [FakeWaiter() for _ in range(3)]
    for waiter in waiters:
        table.enqueue(waiter)

    table.set_ready(replica.name, True)
    assert [w.granted for w in waiters] == [[replica], [replica], []]
    assert table.queued == 1
    assert replica.inflight == 2


def test_adding_a_ready_replica_serves_waiters() -> None:
    table = SlotTable(limit=1, max_queued=5)
    waiter = FakeWaiter()
    table.enqueue(waiter)
    replica = Replica("r0", "127.0.0.1", 9000)
    table.add(replica, ready=True)
    assert waiter.granted == [replica]


def test_ready_again_with_full_slots_rejoins_when_a_slot_frees() -> None:
    table, (replica,) = make_table(limit=1, count=1)
    acquire(table)
    table.set_ready(replica.name, False)
    table.set_ready(replica.name, True)
    assert table.try_acquire() is None
    table.release(replica)
    assert acquire(table) is replica


def test_set_ready_twice_is_harmless() -> None:
    table, (a, b) = make_table(limit=1, count=2)
    table.set_ready(a.name, True)
    table.set_ready(b.name, False)
    table.set_ready(b.name, False)
    assert acquire(table) is a
    assert table.try_acquire() is None


def test_drain_stops_new_traffic_but_lets_requests_finish() -> None:
    table, (a, b) = make_table(limit=2, count=2)
    acquire(table)  # a
    assert table.drain(a.name) is a
    assert acquire(table) is b
    assert acquire(table) is b
    assert table.try_acquire() is None
    table.release(a)
    assert a.inflight == 0
    assert table.try_acquire() is None  # a's freed slot is not reused
    assert table.inflight == 2


def test_drain_is_not_undone_by_a_readiness_probe() -> None:
    # A draining replica is still healthy, so its runtime's probe can report it ready again
    # before it is stopped; routing must stay off it (`routable` = ready and not draining).
    table, (a,) = make_table(limit=1, count=1)
    table.drain(a.name)
    table.set_ready(a.name, True)
    assert table.try_acquire() is None
    assert table.ready_count == 0


def test_remove_forgets_the_replica_and_ignores_its_late_releases() -> None:
    table, (a, b) = make_table(limit=2, count=2)
    fill(table)
    waiter = FakeWaiter()
    table.enqueue(waiter)

    assert table.remove(a.name) is a
    assert a.name not in table.replicas
    assert table.inflight == 2

    table.release(a)  # the request on the removed replica ends afterwards
    assert table.inflight == 2
    assert waiter.granted == []
    assert table.queued == 1

    table.release(b)
    assert waiter.granted == [b]


def test_release_for_a_replaced_replica_of_the_same_name_is_ignored() -> None:
    table, (old,) = make_table(limit=1, count=1)
    acquire(table)
    table.remove(old.name)
    new = Replica(old.name, "127.0.0.1", 9100)
    table.add(new, ready=True)
    acquire(table)

    table.release(old)
    assert new.inflight == 1
    assert table.inflight == 1


def test_add_twice_is_refused() -> None:
    table, (replica,) = make_table(limit=1, count=1)
    with pytest.raises(ValueError):
        table.add(Replica(replica.name, "127.0.0.1", 9999))


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        SlotTable(limit=0, max_queued=1)


def test_observations() -> None:
    table, (_, _, unready) = make_table(limit=3, count=3)
    table.set_ready(unready.name, False)
    acquire(table)
    acquire(table)
    acquire(table)
    assert table.busy == 2
    assert table.ready_count == 2
    assert table.free_slots == 3
    assert table.inflight == 3


def test_enqueue_while_a_slot_is_free_is_served_at_once() -> None:
    # A waiter may be queued after its try_acquire saw no slot, with a slot freed in between
    # (a remote coordinator, or an await between the two calls): it must not wait beside an
    # idle replica.
    table, (replica,) = make_table(limit=1, count=1)
    waiter = FakeWaiter()
    table.enqueue(waiter)
    assert waiter.granted == [replica]
    assert table.queued == 0


# -- randomized invariants --------------------------------------------------------------------


class RandomRun:
    """Random operations against a table, checking the invariants after every step."""

    MAX_REPLICAS = 8

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.limit = self.rng.randint(1, 4)
        self.max_queued = self.rng.randint(0, 10)
        self.table = SlotTable(self.limit, self.max_queued)
        self.next_index = 0
        self.ready: dict[str, bool] = {}  # readiness the test has set, by name
        self.drained: set[str] = set()
        self.held: list[Replica] = []  # one entry per slot taken and not yet released
        self.waiting: deque[FakeWaiter] = deque()  # the model of the queue, oldest first
        self.recent_waiters: deque[FakeWaiter] = deque(maxlen=20)

    def on_grant(self, waiter: FakeWaiter, replica: Replica) -> None:
        assert self.waiting and self.waiting[0] is waiter, "grant out of FIFO order"
        assert replica.routable
        assert replica.inflight <= self.limit
        self.waiting.popleft()
        self.held.append(replica)

    # -- operations -------------------------------------------------------------------------

    def add(self) -> None:
        if len(self.table.replicas) >= self.MAX_REPLICAS:
            return
        name = f"r{self.next_index}"
        self.next_index += 1
        ready = self.rng.random() < 0.7
        self.ready[name] = ready
        self.table.add(Replica(name, "127.0.0.1", 9000 + self.next_index), ready=ready)

    def pick_name(self, include_drained: bool = True) -> str | None:
        names = [n for n in self.table.replicas if include_drained or n not in self.drained]
        return self.rng.choice(names) if names else None

    def set_ready(self) -> None:
        # Drained replicas are left alone: whether readiness may undo a drain is tested apart.
        name = self.pick_name(include_drained=False)
        if name is not None:
            self.ready[name] = self.rng.random() < 0.6
            self.table.set_ready(name, self.ready[name])

    def drain(self) -> None:
        name = self.pick_name()
        if name is not None:
            self.drained.add(name)
            self.table.drain(name)

    def remove(self) -> None:
        name = self.pick_name()
        if name is not None:
            self.table.remove(name)
            self.drained.discard(name)
            del self.ready[name]

    def acquire(self) -> None:
        table = self.table
        free = [
            r.inflight for r in table.replicas.values() if r.routable and r.inflight < self.limit
        ]
        queued_before = table.queued
        replica = table.try_acquire()
        if queued_before or not free:
            assert replica is None
            return
        assert replica is not None
        assert replica.inflight - 1 == min(free), "not the least-loaded replica"
        self.held.append(replica)

    def enqueue(self) -> None:
        # What the proxy does: try for a slot, queue only when there is none.
        replica = self.table.try_acquire()
        if replica is not None:
            self.held.append(replica)
            return
        waiter = FakeWaiter(self.on_grant)
        if self.table.queued >= self.max_queued:
            with pytest.raises(QueueFull):
                self.table.enqueue(waiter)
            return
        self.waiting.append(waiter)
        self.recent_waiters.append(waiter)
        self.table.enqueue(waiter)

    def retry(self) -> None:
        # What the proxy does after a connect failure: any free slot, else the head of the queue.
        replica = self.table.try_acquire(jump_queue=True)
        if replica is not None:
            self.held.append(replica)
            return
        waiter = FakeWaiter(self.on_grant)
        self.waiting.appendleft(waiter)
        self.recent_waiters.append(waiter)
        self.table.enqueue(waiter, front=True)

    def cancel(self) -> None:
        if not self.recent_waiters:
            return
        waiter = self.rng.choice(self.recent_waiters)  # may already be granted or cancelled
        if waiter in self.waiting:
            self.waiting.remove(waiter)
        self.table.cancel(waiter)

    def release(self) -> None:
        if not self.held:
            return
        index = self.rng.randrange(len(self.held))
        self.held[index], self.held[-1] = self.held[-1], self.held[index]
        self.table.release(self.held.pop())

    # -- invariants -------------------------------------------------------------------------

    def check(self) -> None:
        table = self.table
        replicas = list(table.replicas.values())
        held = Counter(self.held)
        for replica in replicas:
            assert 0 <= replica.inflight <= self.limit, replica
            assert replica.inflight == held[replica], replica
            expected_routable = self.ready[replica.name] and replica.name not in self.drained
            assert replica.routable == expected_routable, replica
        assert table.inflight == sum(r.inflight for r in replicas)
        assert table.queued == len(self.waiting)
        assert all(waiter.active for waiter in self.waiting)
        assert all(waiter.active == (waiter in self.waiting) for waiter in self.recent_waiters)
        if table.queued:
            idle = [r for r in replicas if r.routable and r.inflight < self.limit]
            assert not idle, f"waiters queued beside a free slot: {idle}"
        assert table.busy == sum(1 for r in replicas if r.inflight)
        assert table.ready_count == sum(1 for r in replicas if r.routable)
        assert table.free_slots == sum(self.limit - r.inflight for r in replicas if r.routable)

    def run(self, steps: int) -> None:
        operations = [
            (self.add, 2),
            (self.set_ready, 3),
            (self.drain, 1),
            (self.remove, 1),
            (self.acquire, 6),
            (self.enqueue, 4),
            (self.retry, 1),
            (self.cancel, 2),
            (self.release, 8),
        ]
        actions = [action for action, _ in operations]
        weights = [weight for _, weight in operations]
        for _ in range(steps):
            self.rng.choices(actions, weights)[0]()
            self.check()
        self.finish()

    def finish(self) -> None:
        """Release everything: the table must end empty, with waiters only if nothing routes."""
        while self.held:
            self.release()
            self.check()
        assert self.table.inflight == 0
        assert all(r.inflight == 0 for r in self.table.replicas.values())
        if self.table.queued:
            assert not any(r.routable for r in self.table.replicas.values())


@pytest.mark.parametrize("seed", range(40))
def test_random_operations_keep_the_invariants(seed: int) -> None:
    RandomRun(seed).run(steps=2_000)


# -- scale --------------------------------------------------------------------------------------


def test_many_replicas_and_many_requests() -> None:
    limit, count, pairs, window = 4, 1_000, 100_000, 2_500
    table, replicas = make_table(limit=limit, count=count, max_queued=0)
    served: Counter[str] = Counter()
    in_flight: deque[Replica] = deque()
    for _ in range(pairs):
        replica = acquire(table)
        served[replica.name] += 1
        in_flight.append(replica)
        if len(in_flight) > window:
            table.release(in_flight.popleft())
    while in_flight:
        table.release(in_flight.popleft())

    assert table.inflight == 0
    assert all(replica.inflight == 0 for replica in replicas)
    assert sum(served.values()) == pairs
    assert len(served) == count
    assert max(served.values()) - min(served.values()) <= 1  # ties spread the load evenly
