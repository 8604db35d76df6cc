"""The routing decision for one deployment: which replica serves, who waits, who is next.

Pure policy: no I/O, no clock, no asyncio. The proxy (or a remote coordinator) calls
`try_acquire` / `enqueue` / `release`; when a slot frees and someone waits, the table hands the
slot straight to the oldest waiter by calling `waiter.grant(replica)`.

Replicas sit in buckets keyed by their requests in flight; each bucket is a circular doubly
linked list threaded through the replicas themselves (oldest first), so picking the
least-loaded replica and moving one between buckets are O(1), and replicas with equal load are
taken in least-recently-used order (ties spread evenly). Linked through the replicas rather
than kept in one OrderedDict per bucket: a request then touches the replica it takes and two
small bucket heads, not two hash tables; with 1,000 deployments or replicas each request finds
these cold in the CPU cache, so fewer lines touched is what keeps it fast.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class Waiter(Protocol):
    """Someone queued for a slot. `active` turns False when it gives up (timeout, disconnect)."""

    active: bool

    def grant(self, replica: Replica) -> None: ...


class Replica:
    """A model replica as the routing table sees it."""

    __slots__ = (
        "address",
        "draining",
        "host",
        "inflight",
        "name",
        "next",
        "port",
        "prev",
        "ready",
        "routable",
        "table",
    )

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.inflight = 0
        self.ready = False  # readiness as last observed
        self.draining = False  # being stopped: never routable again
        self.routable = False  # in the pick buckets: ready and not draining
        self.table: SlotTable | None = None  # the table it is in (None: not in one, or removed)
        # Neighbours in its table's bucket while it is in one (see SlotTable._levels).
        self.next: Replica | _Bucket | None = None
        self.prev: Replica | _Bucket | None = None

    def __repr__(self) -> str:
        return f"Replica({self.name!r}, {self.address}, inflight={self.inflight})"


class _Bucket:
    """Head of one load level's circular list of replicas; empty when it points at itself."""

    __slots__ = ("next", "prev")

    def __init__(self) -> None:
        self.next: Replica | _Bucket = self
        self.prev: Replica | _Bucket = self


def _unlink(replica: Replica) -> None:
    """Take `replica` out of its bucket. Its links are cleared: unlinking it twice (a broken
    invariant) fails loudly instead of corrupting a bucket."""
    before, after = replica.prev, replica.next
    before.next = after  # type: ignore[union-attr]
    after.prev = before  # type: ignore[union-attr]
    replica.prev = replica.next = None


class QueueFull(Exception):
    """The deployment's queue bound is reached: the caller answers 429 at once."""


class SlotTable:
    """Replicas of one deployment, their requests in flight, and the FIFO queue of waiters."""

    __slots__ = (
        "_levels",
        "_lowest",
        "_queue",
        "inflight",
        "limit",
        "max_queued",
        "queued",
        "ready_count",
        "replicas",
    )

    def __init__(self, limit: int, max_queued: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.max_queued = max_queued
        self.replicas: dict[str, Replica] = {}
        # _levels[k] holds routable replicas with k requests in flight (k < limit only), least
        # recently moved there first. The list grows only as far as load reaches: a limit of
        # 1,000 costs nothing until used.
        self._levels: list[_Bucket] = [_Bucket()]
        self._lowest = 0  # no routable replica with a free slot sits below this level
        self._queue: deque[Waiter] = deque()
        self.queued = 0  # active waiters in _queue (cancelled ones are skipped lazily)
        self.inflight = 0
        self.ready_count = 0  # routable replicas

    # -- membership -------------------------------------------------------------------------

    def add(self, replica: Replica, ready: bool = False) -> None:
        if replica.name in self.replicas:
            raise ValueError(f"replica {replica.name} already present")
        self.replicas[replica.name] = replica
        replica.table = self
        if ready:
            self.set_ready(replica.name, True)

    def set_ready(self, name: str, ready: bool) -> None:
        """Ready replicas take traffic; unready ones keep their requests in flight, get no more."""
        replica = self.replicas[name]
        replica.ready = ready
        self._set_routable(replica, ready and not replica.draining)

    def drain(self, name: str) -> Replica:
        """Stop routing to a replica (scale-down, shutdown); its requests in flight finish."""
        replica = self.replicas[name]
        replica.draining = True
        self._set_routable(replica, False)
        return replica

    def remove(self, name: str) -> Replica:
        """Forget a replica. Releases for it that arrive later are ignored."""
        replica = self.drain(name)
        del self.replicas[name]
        replica.table = None
        self.inflight -= replica.inflight
        return replica

    # -- taking over as coordinator ---------------------------------------------------------

    def reset_inflight(self) -> None:
        """Forget every count (a new coordinator rebuilds them from the front-ends' reports)."""
        for replica in self.replicas.values():
            if replica.inflight:
                self._move(replica, 0)
        self.inflight = 0

    def restore_inflight(self, name: str, count: int) -> None:
        """Count `count` more requests in flight on a replica (reported by a front-end)."""
        replica = self.replicas.get(name)
        if replica is None or count <= 0:
            return
        self._move(replica, replica.inflight + count)
        self.inflight += count

    def _move(self, replica: Replica, inflight: int) -> None:
        if replica.routable and replica.inflight < self.limit:
            _unlink(replica)
        replica.inflight = inflight
        if replica.routable and inflight < self.limit:
            self._put(replica, inflight)
            self._lowest = min(self._lowest, inflight)

    def _set_routable(self, replica: Replica, routable: bool) -> None:
        if routable == replica.routable:
            return
        replica.routable = routable
        self.ready_count += 1 if routable else -1
        level = replica.inflight
        if routable:
            if level < self.limit:
                self._put(replica, level)
                self._lowest = min(self._lowest, level)
            self._dispatch()
        elif level < self.limit:
            _unlink(replica)

    # -- requests ---------------------------------------------------------------------------

    def try_acquire(self, jump_queue: bool = False) -> Replica | None:
        """Take a slot on the least-loaded routable replica, or None when every slot is taken.

        New requests never jump the queue: while anyone waits, they wait behind them. A retry
        (`jump_queue=True`) already waited its turn once, so it may.
        """
        if self.queued and not jump_queue:
            return None
        return self._take()

    def enqueue(self, waiter: Waiter, front: bool = False) -> None:
        """Queue a waiter for the next free slot (FIFO; `front` for retries). QueueFull at bound.

        The waiter may be granted before this returns (a slot freed since the caller looked).
        """
        if not front and self.queued >= self.max_queued:
            raise QueueFull
        if front:
            self._queue.appendleft(waiter)
        else:
            self._queue.append(waiter)
        self.queued += 1
        self._dispatch()

    def cancel(self, waiter: Waiter) -> None:
        """A waiter gives up. It stays in the deque until reached, but no longer counts."""
        if waiter.active:
            waiter.active = False
            self.queued -= 1

    def release(self, replica: Replica) -> None:
        """A request on `replica` finished: free its slot, handing it to the oldest waiter."""
        # Identity, not a lookup by name: with many deployments the replicas dict is cold.
        if replica.table is not self or replica.inflight == 0:
            return  # removed meanwhile (or a caller's double release: never go negative)
        level = replica.inflight
        replica.inflight = level - 1
        self.inflight -= 1
        if replica.routable and level <= self.limit:  # above the limit only after a rebuild
            if level < self.limit:
                _unlink(replica)
            self._put(replica, level - 1)
            if level - 1 < self._lowest:
                self._lowest = level - 1
            self._dispatch()

    # -- observations -----------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Replicas with at least one request in flight."""
        return sum(1 for r in self.replicas.values() if r.inflight)

    @property
    def free_slots(self) -> int:
        return sum(self.limit - r.inflight for r in self.replicas.values() if r.routable)

    # -- internals --------------------------------------------------------------------------

    def _put(self, replica: Replica, level: int) -> None:
        """Append `replica` to the bucket of `level` (it must be in none)."""
        levels = self._levels
        while len(levels) <= level:
            levels.append(_Bucket())
        bucket = levels[level]
        last = bucket.prev
        replica.prev = last
        replica.next = bucket
        last.next = replica
        bucket.prev = replica

    def _take(self) -> Replica | None:
        levels = self._levels
        level = self._lowest
        while level < len(levels):
            bucket = levels[level]
            replica = bucket.next
            if replica is not bucket:
                _unlink(replica)  # type: ignore[arg-type]
                if level + 1 < self.limit:
                    self._put(replica, level + 1)
                replica.inflight = level + 1
                self.inflight += 1
                self._lowest = level
                return replica
            level += 1
        self._lowest = len(levels)  # nothing free below here; additions lower it again
        return None

    def _dispatch(self) -> None:
        queue = self._queue
        while self.queued:
            waiter = queue[0]
            if not waiter.active:
                queue.popleft()
                continue
            replica = self._take()
            if replica is None:
                return
            queue.popleft()
            waiter.active = False
            self.queued -= 1
            waiter.grant(replica)
        queue.clear()  # only cancelled waiters can remain
