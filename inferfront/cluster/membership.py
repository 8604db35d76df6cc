"""Who is alive, and which front-end instance coordinates which deployment.

Several front-end instances cooperate. For each deployment exactly one of them at a time is its
coordinator: it holds the replica table, the in-flight counts and the queue, and decides routing
and scaling. The role is a *lease* named after the deployment ("endpoint/deployment").

We build no consensus of our own; the platform's locks decide who holds a lease:

* `local.LocalMembership`: flock'ed files in a state directory on one machine. The kernel drops a
  dead process's locks the moment it dies, so a lease is never lost except by release or death.
* Kubernetes (later): `coordination.k8s.io/v1` Lease objects (holderIdentity, acquireTime,
  renewTime, leaseDurationSeconds). There `refresh()` also renews what this instance holds,
  `LeaseInfo.expires_at` is set, and `holds()` turns False once a renewal is overdue; the
  `Elector` already treats that as a loss.

Who *should* hold a lease is decided by rendezvous (highest-random-weight) hashing of the key over
the live members (`preferred`): every instance computes the same answer from the same member list,
and when a member leaves only its keys move. The `Elector` turns that into acquisitions:

* a free lease is claimed at once by its preferred live member, or by anyone once it has been
  free for longer than a grace period (the preferred member may be stuck or not elect that key);
* a held lease is kept. A member that joins does not take keys away from their holders, even the
  keys it is now preferred for: stability beats balance, since a coordinator hand-off moves the
  replica table and the queue. The price: instances started one after another leave the first
  one holding every key until it leaves or dies. Rebalancing, if wanted, is a planned hand-off
  (release, then the preferred member claims it), a later feature.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("inferfront.cluster")

DEFAULT_GRACE_S = 1.0
DEFAULT_TICK_INTERVAL_S = 0.2
DEFAULT_EXPECT_FOR_S = 5.0


@dataclass(frozen=True)
class Member:
    """A front-end instance: `address` is host:port of its coordination listener."""

    id: str
    address: str
    started_at: float  # wall clock (seconds since the epoch), for people and tie-breaks


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds lease `key`, as last seen."""

    key: str
    holder_id: str
    address: str
    since: float  # wall clock when the holder acquired it
    expires_at: float | None = None  # wall clock; None: held until release or holder death


class Membership(Protocol):
    """The live member set and named leases. Reads (`members`, `holds`, `holder`) are cached and
    never wait; the async calls do the I/O and never block the event loop."""

    @property
    def member(self) -> Member:
        """This instance."""
        ...

    async def join(self) -> None:
        """Announce this member; it stays live until `leave()` or process death."""
        ...

    async def leave(self) -> None:
        """Release every lease held, then stop being a member."""
        ...

    def members(self) -> list[Member]:
        """Live members, self included once joined, sorted by id (as of the last refresh)."""
        ...

    async def refresh(self) -> None:
        """Re-read the live members and lease holders (and renew, where leases expire)."""
        ...

    async def try_acquire(self, key: str) -> bool:
        """Become the holder of lease `key` if it is free, without waiting; True if held now."""
        ...

    def holds(self, key: str) -> bool: ...

    async def release(self, key: str) -> None: ...

    def holder(self, key: str) -> LeaseInfo | None:
        """The holder of `key` (None if free or not known yet), as of the last refresh; leases
        this instance holds are always reported at once."""
        ...


# -- pure helpers ------------------------------------------------------------------------------


def rendezvous_weight(key: str, member_id: str) -> int:
    """A stable pseudo-random weight of (key, member): the same in every process and Python run
    (unlike hash()), so every instance ranks members the same way."""
    digest = hashlib.blake2b(f"{key}\x00{member_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred(key: str, members: Sequence[Member]) -> Member | None:
    """The member that should hold `key`: the highest rendezvous weight (ties broken by id).

    Depends only on the member ids, not their order or addresses, so a member restarted under
    the same id is preferred for the same keys; removing a member moves only the keys it was
    preferred for (about 1/N of them) and adding one takes about 1/(N+1) from the others."""
    if not members:
        return None
    return max(members, key=lambda member: (rendezvous_weight(key, member.id), member.id))


def should_claim(
    key: str, me: str, members: Sequence[Member], free_for_s: float, grace_s: float
) -> bool:
    """Whether member `me` should try to take free lease `key`: at once if it is the preferred
    live member, otherwise only after the lease has been free for `grace_s` (the preferred
    member may be stuck, or not electing this key); then whoever sees it first takes it."""
    if not any(member.id == me for member in members):
        return False  # not a live member (not joined yet, or left): claim nothing
    best = preferred(key, members)
    return (best is not None and best.id == me) or free_for_s >= grace_s


# -- the driver --------------------------------------------------------------------------------

KeyCallback = Callable[[str], Awaitable[None] | None]


class Elector:
    """Claims the leases named `keys` according to `should_claim` and reports changes.

    `tick()` refreshes the membership, then for each key: keeps a held lease, tries to claim a
    free one, and calls `on_gain(key)` / `on_loss(key)` (plain or async callables) when what this
    instance holds changes. With flock a held lease is only lost by `release`/`resign` or death;
    on platforms where leases expire, `holds()` turning False is reported as a loss too.
    Time comes from the injected `clock` (monotonic seconds), used only for the grace period:
    a key counts as free since the first tick that saw it free, and only while consecutive ticks
    keep seeing it free, so tick well within `grace_s` (the default 0.2 s against 1 s).
    """

    def __init__(
        self,
        membership: Membership,
        keys: Iterable[str],
        on_gain: KeyCallback,
        on_loss: KeyCallback,
        *,
        clock: Callable[[], float] = time.monotonic,
        grace_s: float = DEFAULT_GRACE_S,
        expected: Iterable[str] = (),
        expect_for_s: float = DEFAULT_EXPECT_FOR_S,
    ) -> None:
        self.membership = membership
        # Members known to be on their way at start-up (a supervisor's workers): until each has
        # been seen (at most `expect_for_s`), keys they are preferred for wait `grace_s` for
        # them instead of going to whoever joined first, so roles spread over instances
        # started together. After that only live members count: a dead member's keys move
        # at once.
        self.expected = tuple(expected)
        self.expect_for_s = expect_for_s
        self._first_tick: float | None = None
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.clock = clock
        self.grace_s = grace_s
        self._keys: tuple[str, ...] = tuple(sorted(set(keys)))
        self._held: set[str] = set()
        self._free_since: dict[str, float] = {}  # first time this elector saw the key free
        self._last_tick: float | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    @property
    def held(self) -> frozenset[str]:
        """The keys this elector has reported as gained (and not lost)."""
        return frozenset(self._held)

    async def tick(self) -> None:
        """One round: refresh, then settle every key. Never waits for a lease."""
        await self.membership.refresh()
        now = self.clock()
        if self._last_tick is not None and now - self._last_tick > self.grace_s:
            # Ticks this far apart (a stalled loop) cannot tell whether a key stayed free in
            # between: someone may have taken it and died since. Count the grace period anew.
            self._free_since.clear()
        self._last_tick = now
        if self._first_tick is None:
            self._first_tick = now
        members = self.membership.members()
        voters = members
        if self.expected:
            live = {member.id for member in members}
            missing = [m for m in self.expected if m not in live]
            if not missing or now - self._first_tick >= self.expect_for_s:
                self.expected = ()  # everyone came (or the wait is over): start-up is done
            else:
                voters = members + [Member(m, "", 0.0) for m in missing]
        for key in self._keys:
            await self._settle(key, now, voters)

    async def _settle(self, key: str, now: float, voters: list[Member]) -> None:
        membership = self.membership
        if membership.holds(key):
            self._free_since.pop(key, None)
            if key not in self._held:  # e.g. a try_acquire whose caller was cancelled
                await self._gained(key)
            return
        if key in self._held:  # an expired lease (not with flock)
            await self._lost(key)
        if membership.holder(key) is not None:
            self._free_since.pop(key, None)
            return
        free_for = now - self._free_since.setdefault(key, now)
        if not should_claim(key, membership.member.id, voters, free_for, self.grace_s):
            return
        if await membership.try_acquire(key):  # False: someone was faster; retried next tick
            self._free_since.pop(key, None)
            await self._gained(key)

    async def set_keys(self, keys: Iterable[str]) -> None:
        """Elect a new set of keys (deployments come and go); leases of dropped keys are
        reported lost and released now, new keys are considered from the next tick."""
        new_keys = tuple(sorted(set(keys)))
        for key in set(self._keys) - set(new_keys):
            self._free_since.pop(key, None)
            await self._give_up(key)
        self._keys = new_keys

    async def resign(self) -> None:
        """Release every lease this elector holds (shutdown), each reported lost before it is
        released. Stop the `run` task first, or its next tick claims them again."""
        for key in sorted(self._held):
            await self._give_up(key)

    async def run(self, interval_s: float = DEFAULT_TICK_INTERVAL_S) -> None:
        """Tick every `interval_s` until cancelled. A failing tick is logged and retried: a
        transient I/O error must not stop the election."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("election tick failed")
            await asyncio.sleep(interval_s)

    async def _give_up(self, key: str) -> None:
        # on_loss first: the owner stops coordinating before anyone else can start.
        if key in self._held:
            await self._lost(key)
        if self.membership.holds(key):
            await self.membership.release(key)

    async def _gained(self, key: str) -> None:
        self._held.add(key)
        await _notify(self.on_gain, key, "gain")

    async def _lost(self, key: str) -> None:
        self._held.discard(key)
        await _notify(self.on_loss, key, "loss")


async def _notify(callback: KeyCallback, key: str, what: str) -> None:
    # A failing callback is the owner's bug; logging it keeps the other keys' election going.
    try:
        result = callback(key)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("on_%s(%r) failed", what, key)
