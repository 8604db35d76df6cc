"""Rendezvous hashing, the claim rule and the Elector, stepped through with explicit times over
an in-memory membership (the kernel's part, exclusive leases, played by a dict)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import pytest

from inferfront.cluster import (
    Elector,
    LeaseInfo,
    Member,
    encode_name,
    preferred,
    rendezvous_weight,
    should_claim,
)


def member(member_id: str) -> Member:
    return Member(member_id, f"127.0.0.1:{9000 + sum(map(ord, member_id)) % 1000}", 0.0)


def members(ids: str) -> list[Member]:
    return [member(member_id) for member_id in ids]


# -- preferred() -------------------------------------------------------------------------------

KEYS_100 = [f"endpoint-{i // 10}/deployment-{i % 10}" for i in range(100)]


def assignment(keys: list[str], ids: str) -> dict[str, str]:
    group = members(ids)
    return {key: preferred(key, group).id for key in keys}  # type: ignore[union-attr]


def test_preferred_of_nobody_is_none() -> None:
    assert preferred("ep/d", []) is None


def test_preferred_ignores_order_and_addresses() -> None:
    group = members("abc")
    moved = [Member(m.id, "10.0.0.1:1", 123.0) for m in reversed(group)]
    for key in KEYS_100:
        assert preferred(key, group).id == preferred(key, moved).id  # type: ignore[union-attr]


def test_weights_are_stable_across_processes() -> None:
    # Fixed values: hash() would change with PYTHONHASHSEED, blake2b never does.
    assert rendezvous_weight("ep/d", "a") == rendezvous_weight("ep/d", "a")
    assert rendezvous_weight("ep/d", "a") != rendezvous_weight("ep/d", "b")
    assert assignment(["ep/d"], "abc") == assignment(["ep/d"], "cab")
    digest = hashlib.blake2b(b"ep/d\x00a", digest_size=8).digest()
    assert rendezvous_weight("ep/d", "a") == int.from_bytes(digest, "big")


def test_preferred_spreads_100_keys_roughly_evenly_over_3_members() -> None:
    counts = Counter(assignment(KEYS_100, "abc").values())
    assert set(counts) == {"a", "b", "c"}
    assert all(20 <= count <= 47 for count in counts.values()), counts


def test_a_leaving_member_moves_only_its_own_keys() -> None:
    before = assignment(KEYS_100, "abc")
    after = assignment(KEYS_100, "ab")
    moved = {key for key in KEYS_100 if before[key] != after[key]}
    assert moved == {key for key in KEYS_100 if before[key] == "c"}
    assert 20 <= len(moved) <= 47  # about 1/3 of the keys


def test_a_joining_member_takes_about_1_over_n_plus_1_and_only_for_itself() -> None:
    before = assignment(KEYS_100, "abc")
    after = assignment(KEYS_100, "abcd")
    moved = {key for key in KEYS_100 if before[key] != after[key]}
    assert all(after[key] == "d" for key in moved)
    assert 12 <= len(moved) <= 40  # about 1/4 of the keys


# -- should_claim() ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("me", "live", "free_for", "expected"),
    [
        ("a", "ab", 0.0, True),  # the preferred member claims at once
        ("b", "ab", 0.0, False),
        ("b", "ab", 0.99, False),
        ("b", "ab", 1.0, True),  # free for the grace period: anyone live
        ("a", "b", 5.0, False),  # not a live member: never
        ("b", "b", 0.0, True),  # alone: preferred for everything
    ],
)
def test_should_claim(me: str, live: str, free_for: float, expected: bool) -> None:
    key = key_preferred_by("a", "ab")
    assert should_claim(key, me, members(live), free_for, grace_s=1.0) is expected


# -- a fake membership: one shared "world" per test, one view per member -----------------------


@dataclass
class World:
    """What the kernel (or the API server) knows: live members and who holds which lease."""

    live: dict[str, Member] = field(default_factory=dict)
    leases: dict[str, LeaseInfo] = field(default_factory=dict)
    refuse_once: set[str] = field(default_factory=set)  # keys whose next acquire loses a race


class FakeMembership:
    """Cached reads refreshed by refresh(), like LocalMembership; holds() is live (own state)."""

    def __init__(self, world: World, member_id: str) -> None:
        self.world = world
        self.member = member(member_id)
        self._members: list[Member] = []
        self._holders: dict[str, LeaseInfo] = {}

    async def join(self) -> None:
        self.world.live[self.member.id] = self.member

    async def leave(self) -> None:
        for key in [k for k in self.world.leases if self.holds(k)]:
            await self.release(key)
        self.die()

    def die(self) -> None:
        """What the kernel does when the process is SIGKILLed: every lock goes at once."""
        self.world.live.pop(self.member.id, None)
        for key in [k for k in self.world.leases if self.holds(k)]:
            del self.world.leases[key]

    def members(self) -> list[Member]:
        return list(self._members)

    async def refresh(self) -> None:
        self._members = sorted(self.world.live.values(), key=lambda m: m.id)
        self._holders = dict(self.world.leases)

    async def try_acquire(self, key: str) -> bool:
        if key in self.world.refuse_once:
            self.world.refuse_once.discard(key)
            return False
        if key not in self.world.leases:
            self.world.leases[key] = LeaseInfo(key, self.member.id, self.member.address, 0.0)
        return self.holds(key)

    def holds(self, key: str) -> bool:
        info = self.world.leases.get(key)
        return info is not None and info.holder_id == self.member.id

    async def release(self, key: str) -> None:
        if self.holds(key):
            del self.world.leases[key]

    def holder(self, key: str) -> LeaseInfo | None:
        return self.world.leases[key] if self.holds(key) else self._holders.get(key)


KEYS = [f"ep-{i}/dep" for i in range(12)]


def mine(member_id: str, live: str) -> set[str]:
    """The keys `member_id` is preferred for among the members `live`."""
    return {key for key, owner in assignment(KEYS, live).items() if owner == member_id}


def key_preferred_by(member_id: str, live: str) -> str:
    return min(mine(member_id, live))


class Cluster:
    """Several electors over one World, each with its own clock reading set per step."""

    def __init__(self, ids: str, keys: list[str] = KEYS) -> None:
        self.world = World()
        self.now = 0.0
        self.views = {i: FakeMembership(self.world, i) for i in ids}
        self.events: list[tuple[str, str, str]] = []  # (member, "gain"|"loss", key)
        self.dead: set[str] = set()
        self.electors = {
            i: Elector(
                view,
                keys,
                on_gain=lambda key, i=i: self.events.append((i, "gain", key)),
                on_loss=lambda key, i=i: self.events.append((i, "loss", key)),
                clock=lambda: self.now,
                grace_s=1.0,
            )
            for i, view in self.views.items()
        }

    async def step(self, at: float, action: str, who: str) -> None:
        self.now = at
        view = self.views[who]
        if action == "join":
            await view.join()
        elif action == "leave":
            await self.electors[who].resign()
            await view.leave()
        elif action == "die":
            view.die()
            self.dead.add(who)  # its elector died with it: nothing of it to check any more
        elif action == "expire":  # a lease the platform took away (not possible with flock)
            for key in [k for k in self.world.leases if view.holds(k)]:
                del self.world.leases[key]
        elif action == "tick":
            await self.electors[who].tick()
        else:
            raise ValueError(action)

    def holdings(self) -> dict[str, set[str]]:
        """Per member, the keys it holds; also checks the elector agrees with the world."""
        result: dict[str, set[str]] = {}
        for i, elector in self.electors.items():
            actual = {key for key, info in self.world.leases.items() if info.holder_id == i}
            if i not in self.dead:
                assert elector.held == actual, (i, elector.held, actual)
            result[i] = actual
        return result


ALL = set(KEYS)
Expect = dict[str, set[str]]
Step = tuple[float, str, str] | Expect  # (time, action, member) or what each member holds now

SCENARIOS: dict[str, list[Step]] = {
    "a lone member claims every key at its first tick": [
        (0.0, "join", "a"),
        (0.0, "tick", "a"),
        {"a": ALL},
    ],
    "each member claims what it is preferred for, at once": [
        (0.0, "join", "a"),
        (0.0, "join", "b"),
        (0.0, "tick", "a"),
        {"a": mine("a", "ab"), "b": set()},
        (0.0, "tick", "b"),
        {"a": mine("a", "ab"), "b": mine("b", "ab")},
    ],
    "a free lease waits the grace period for its preferred member": [
        (0.0, "join", "a"),
        (0.0, "join", "b"),
        (0.0, "tick", "a"),
        (0.5, "tick", "a"),
        (0.99, "tick", "a"),
        {"a": mine("a", "ab"), "b": set()},  # b is alive but never ticks (stuck)
        (1.0, "tick", "a"),
        {"a": ALL, "b": set()},
        (1.1, "tick", "b"),
        {"a": ALL, "b": set()},
    ],
    "the grace period counts from when the lease was first seen free": [
        (0.0, "join", "a"),
        (0.0, "join", "b"),
        (0.0, "tick", "b"),
        (0.0, "tick", "a"),
        {"a": mine("a", "ab"), "b": mine("b", "ab")},
        (5.0, "die", "b"),
        (5.0, "join", "c"),  # c is now preferred for some of b's keys but never ticks
        (5.2, "tick", "a"),  # b's keys now preferred for c stay free for the grace period
        {"a": ALL - (mine("b", "ab") & mine("c", "ac")), "b": set(), "c": set()},
        (6.19, "tick", "a"),
        {"a": ALL - (mine("b", "ab") & mine("c", "ac")), "b": set(), "c": set()},
        (6.2, "tick", "a"),
        {"a": ALL, "b": set(), "c": set()},
    ],
    "a joining member takes nothing from the holders (stability over balance)": [
        (0.0, "join", "a"),
        (0.0, "tick", "a"),
        (0.1, "join", "b"),
        (0.2, "tick", "b"),
        (0.2, "tick", "a"),
        (9.0, "tick", "b"),
        {"a": ALL, "b": set()},
    ],
    "a dead holder's keys go to the preferred survivors at their next tick": [
        (0.0, "join", "a"),
        (0.0, "join", "b"),
        (0.0, "join", "c"),
        (0.0, "tick", "a"),
        (0.0, "tick", "b"),
        (0.0, "tick", "c"),
        {"a": mine("a", "abc"), "b": mine("b", "abc"), "c": mine("c", "abc")},
        (3.0, "die", "c"),
        (3.2, "tick", "b"),
        {"a": mine("a", "abc"), "b": mine("b", "ab"), "c": set()},
        (3.2, "tick", "a"),
        {"a": mine("a", "ab"), "b": mine("b", "ab"), "c": set()},
    ],
    "a member that leaves hands over like one that dies": [
        (0.0, "join", "a"),
        (0.0, "join", "b"),
        (0.0, "tick", "a"),
        (0.0, "tick", "b"),
        (1.0, "leave", "a"),
        {"a": set(), "b": mine("b", "ab")},
        (1.2, "tick", "b"),
        {"a": set(), "b": ALL},
    ],
    "a member that has not joined claims nothing": [
        (0.0, "tick", "a"),
        (5.0, "tick", "a"),
        {"a": set()},
        (5.0, "join", "a"),
        (5.2, "tick", "a"),
        {"a": ALL},
    ],
    "an expired lease is reported lost, then claimed again": [
        (0.0, "join", "a"),
        (0.0, "tick", "a"),
        (1.0, "expire", "a"),
        (1.2, "tick", "a"),
        {"a": ALL},
    ],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_elector_scenario(steps: list[Step]) -> None:
    names = {step[2] for step in steps if isinstance(step, tuple)}
    names |= {name for step in steps if isinstance(step, dict) for name in step}
    cluster = Cluster("".join(sorted(names)))
    for number, step in enumerate(steps):
        if isinstance(step, tuple):
            await cluster.step(*step)
        else:  # members left out of an expectation hold nothing
            expected = {name: step.get(name, set()) for name in cluster.electors}
            assert cluster.holdings() == expected, f"after step {number}"
    assert_events_replay_to_holdings(cluster)


def assert_events_replay_to_holdings(cluster: Cluster) -> None:
    """on_gain/on_loss alternate per (member, key) and add up to what each member holds."""
    replayed: dict[str, set[str]] = {i: set() for i in cluster.electors}
    for who, what, key in cluster.events:
        if what == "gain":
            assert key not in replayed[who], ("gained twice", who, key)
            replayed[who].add(key)
        else:
            assert key in replayed[who], ("lost without a gain", who, key)
            replayed[who].discard(key)
    holdings = cluster.holdings()
    for who in cluster.dead:
        del replayed[who], holdings[who]
    assert replayed == holdings


async def test_expiry_reports_a_loss_then_a_gain() -> None:
    cluster = Cluster("a", keys=["ep/d"])
    await cluster.step(0.0, "join", "a")
    await cluster.step(0.0, "tick", "a")
    await cluster.step(1.0, "expire", "a")
    await cluster.step(1.2, "tick", "a")
    assert cluster.events == [("a", "gain", "ep/d"), ("a", "loss", "ep/d"), ("a", "gain", "ep/d")]


async def test_a_lost_race_is_retried_at_the_next_tick() -> None:
    cluster = Cluster("a", keys=["ep/d"])
    await cluster.step(0.0, "join", "a")
    cluster.world.refuse_once.add("ep/d")
    await cluster.step(0.0, "tick", "a")
    assert cluster.holdings() == {"a": set()}
    assert cluster.events == []
    await cluster.step(0.2, "tick", "a")
    assert cluster.holdings() == {"a": {"ep/d"}}


async def test_a_lease_acquired_behind_the_electors_back_is_reported() -> None:
    # e.g. a try_acquire whose caller was cancelled after the lock was taken
    cluster = Cluster("a", keys=["ep/d"])
    await cluster.step(0.0, "join", "a")
    assert await cluster.views["a"].try_acquire("ep/d")
    await cluster.step(0.0, "tick", "a")
    assert cluster.events == [("a", "gain", "ep/d")]


async def test_async_callbacks_are_awaited_and_failures_do_not_stop_the_others() -> None:
    world = World()
    view = FakeMembership(world, "a")
    await view.join()
    gained: list[str] = []

    async def on_gain(key: str) -> None:
        if key == "ep-0/dep":
            raise RuntimeError("coordinator failed to start")
        gained.append(key)

    elector = Elector(view, KEYS, on_gain=on_gain, on_loss=lambda key: None, clock=lambda: 0.0)
    await elector.tick()
    assert sorted(gained) == sorted(set(KEYS) - {"ep-0/dep"})
    assert elector.held == ALL  # the lease is held either way; the owner logs its failure


async def test_set_keys_releases_dropped_keys_and_considers_new_ones() -> None:
    cluster = Cluster("a", keys=["ep/d0", "ep/d1"])
    await cluster.step(0.0, "join", "a")
    await cluster.step(0.0, "tick", "a")
    elector = cluster.electors["a"]
    await elector.set_keys(["ep/d1", "ep/d2"])
    assert cluster.events[-1] == ("a", "loss", "ep/d0")
    assert "ep/d0" not in cluster.world.leases
    assert cluster.holdings() == {"a": {"ep/d1"}}
    await cluster.step(0.2, "tick", "a")
    assert cluster.holdings() == {"a": {"ep/d1", "ep/d2"}}
    assert elector.keys == ("ep/d1", "ep/d2")


async def test_resign_releases_everything_and_reports_each_loss() -> None:
    cluster = Cluster("ab")
    for who in "ab":
        await cluster.step(0.0, "join", who)
    await cluster.step(0.0, "tick", "a")
    await cluster.electors["a"].resign()
    assert cluster.holdings() == {"a": set(), "b": set()}
    assert sorted(k for _, what, k in cluster.events if what == "loss") == sorted(mine("a", "ab"))
    await cluster.step(0.2, "tick", "b")  # b is preferred for none of them among a, b
    assert cluster.holdings()["b"] == mine("b", "ab")


# -- encode_name() -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("endpoint/deployment", "endpoint%2Fdeployment"),
        ("ep-1/blue_v2.0", "ep-1%2Fblue_v2.0"),
        ("Ep/D", "%45p%2F%44"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("a b%", "a%20b%25"),
        ("é", "%C3%A9"),
    ],
)
def test_encode_name(text: str, name: str) -> None:
    assert encode_name(text) == name


def test_encode_name_keeps_long_names_short_and_distinct() -> None:
    first, second = encode_name("e/" + "x" * 300), encode_name("e/" + "x" * 301)
    assert first != second
    assert len(first) <= 120 and len(second) <= 120
    assert "~" in first and "/" not in first


def test_encode_name_refuses_empty() -> None:
    with pytest.raises(ValueError):
        encode_name("")


def test_the_scenario_keys_exercise_every_case() -> None:
    # The table above is only meaningful if every member is preferred for something.
    assert all(mine(i, "abc") for i in "abc")
    assert all(mine(i, "ab") for i in "ab")
    assert mine("b", "ab") & mine("c", "ac")  # keys that wait out the grace period


async def test_on_loss_runs_before_the_lease_is_released() -> None:
    # The old coordinator must stop before a new one can start.
    view = FakeMembership(World(), "a")
    await view.join()
    still_held: list[bool] = []
    elector = Elector(
        view,
        ["ep/d"],
        on_gain=lambda key: None,
        on_loss=lambda key: still_held.append(view.holds(key)),
        clock=lambda: 0.0,
    )
    await elector.tick()
    await elector.resign()
    assert still_held == [True]
    assert not view.holds("ep/d")


async def test_expected_members_keep_their_keys_for_the_grace_period() -> None:
    # Workers started together: "a" joins first, but keys "b" is preferred for (among a, b)
    # wait for "b" instead of all going to "a"; "b" joining within the grace period takes them.
    cluster = Cluster("ab")
    for elector in cluster.electors.values():
        elector.expected = ("a", "b")
    await cluster.step(0.0, "join", "a")
    await cluster.step(0.0, "tick", "a")
    assert cluster.holdings()["a"] == mine("a", "ab")
    await cluster.step(0.5, "join", "b")
    await cluster.step(0.5, "tick", "b")
    assert cluster.holdings() == {"a": mine("a", "ab"), "b": mine("b", "ab")}


async def test_an_expected_member_that_never_comes_loses_its_keys_after_the_grace() -> None:
    cluster = Cluster("ab")
    cluster.electors["a"].expected = ("a", "b")
    await cluster.step(0.0, "join", "a")
    await cluster.step(0.0, "tick", "a")
    await cluster.step(0.6, "tick", "a")
    assert cluster.holdings()["a"] == mine("a", "ab")
    await cluster.step(1.1, "tick", "a")
    assert cluster.holdings()["a"] == set(KEYS)


async def test_expected_members_count_only_at_start_up() -> None:
    # Past the start-up period a dead member's keys move at once, even if it was expected.
    cluster = Cluster("ab")
    for elector in cluster.electors.values():
        elector.expected = ("a", "b")
        elector.expect_for_s = 5.0
    await cluster.step(0.0, "join", "a")
    await cluster.step(0.0, "join", "b")
    await cluster.step(0.0, "tick", "a")
    await cluster.step(0.0, "tick", "b")
    await cluster.step(10.0, "die", "b")
    await cluster.step(10.0, "tick", "a")
    assert cluster.holdings()["a"] == set(KEYS)
