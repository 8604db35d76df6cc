"""Three real `inferfront serve` processes sharing a --cluster-dir, in front of real model
servers: the per-replica limit is global, no replica idles while a request waits anywhere, the
instances agree on who coordinates, and the service survives SIGKILL of its coordinator and of a
plain front-end.

Clients pick an instance by its port (each instance has its own), so every request's instance
is known. Numbers worth reporting are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferfront.cluster import Member, preferred
from tests.cluster import (
    KEY,
    Cluster,
    ClusterFactory,
    ClusterInstance,
    LoadLoop,
    Outcome,
    burst,
    cluster_config,
    cluster_factory,
    longest_gap,
    send_and_hold,
)
from tests.conftest import ModelServerFactory
from tests.helpers import ModelServerHandle, async_wait_until, peak_concurrency, underused_spans

TAKEOVER_BUDGET_S = 2.0
RELEASE_BUDGET_S = 2.0


@pytest.fixture
def inferfront_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    with cluster_factory(tmp_path) as factory:
        yield factory


def targets(cluster: Cluster) -> list[tuple[str, int]]:
    return [(instance.instance_id, instance.port) for instance in cluster.live()]


async def table_of(instance: ClusterInstance) -> dict[str, Any]:
    """The deployment as `instance` shows it: the coordinator's table, fetched from it by the
    other instances (see the "view" field)."""
    document = await asyncio.to_thread(instance.deployments)
    return document["endpoints"][0]["deployments"][0]


async def coordinators_seen(instances: list[ClusterInstance]) -> list[str | None]:
    views = await asyncio.gather(*(asyncio.to_thread(i.coordinators) for i in instances))
    return [view.get(KEY) for view in views]


def replica_urls(replicas: list[ModelServerHandle]) -> list[str]:
    return [replica.url for replica in replicas]


def report(title: str, **numbers: Any) -> None:
    shown = ", ".join(f"{name}={value}" for name, value in numbers.items())
    print(f"\n[cluster] {title}: {shown}")


async def start_cluster(
    inferfront_cluster: ClusterFactory,
    replicas: list[ModelServerHandle],
    limit: int = 1,
    share_port: bool = False,
) -> tuple[Cluster, ClusterInstance]:
    """Three instances in front of `replicas`, once they all agree on the coordinator (returned
    with the cluster)."""
    cluster = await asyncio.to_thread(
        inferfront_cluster, cluster_config(replica_urls(replicas), limit=limit), 3, share_port
    )
    return cluster, await asyncio.to_thread(cluster.coordinator_of)


async def wait_both_busy(replicas: list[ModelServerHandle]) -> None:
    """Wait until each of the (two) replicas holds one request."""

    async def both_busy() -> bool:
        stats = [await r.astats(history=False) for r in replicas]
        return all(s["inflight"] == 1 for s in stats)

    await async_wait_until(both_busy, timeout=5.0, interval=0.01)


async def wait_access_log(instance: ClusterInstance, count: int) -> list[dict[str, Any]]:
    """The access log is flushed every 100 ms: wait for `count` lines."""
    return await async_wait_until(
        lambda: (lines := instance.access_log()) and len(lines) >= count and lines,
        timeout=5.0,
        message=f"{count} access log lines from {instance.instance_id}",
    )


# -- the limit is global ----------------------------------------------------------------------

CLIENTS = 300
PER_CLIENT = 2
LOAD_DELAY_MS = 5


@pytest.mark.parametrize("limit", [1, 2])
async def test_300_clients_over_3_instances_never_exceed_the_limit(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory, limit: int
) -> None:
    replicas = model_server.many(["r0", "r1", "r2"])
    cluster, coordinator = await start_cluster(inferfront_cluster, replicas, limit=limit)

    started = time.monotonic()
    outcomes = await burst(targets(cluster), CLIENTS, PER_CLIENT, f"&delay_ms={LOAD_DELAY_MS}")
    elapsed = time.monotonic() - started

    total = CLIENTS * PER_CLIENT
    failed = [o for o in outcomes if not o.ok]
    assert not failed, Counter(str(o.status or o.error) for o in failed)
    served_by = Counter(o.instance for o in outcomes)
    assert sorted(served_by.values()) == [total // 3] * 3
    stats = [await replica.astats() for replica in replicas]
    peaks = [s["peak_inflight"] for s in stats]
    report(
        f"limit {limit}",
        requests=total,
        seconds=round(elapsed, 2),
        peaks=peaks,
        per_replica=[s["requests"] for s in stats],
    )
    assert all(peak <= limit for peak in peaks), peaks
    assert all(peak_concurrency(s["timeline"]) <= limit for s in stats)
    assert sum(s["requests"] for s in stats) == total
    assert peaks == [limit] * 3  # the limit is reached, so it was really under test
    document = await table_of(coordinator)
    assert (document["inflight"], document["queue_length"]) == (0, 0)


# -- work conserving --------------------------------------------------------------------------

SLOW_DELAY_MS = 100
SLOW_REQUESTS = 40


async def test_no_replica_idles_while_a_request_waits_anywhere(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    replicas = model_server.many(["r0", "r1"])
    cluster, coordinator = await start_cluster(inferfront_cluster, replicas, limit=1)
    slots = len(replicas)

    sent: Counter[str] = Counter()
    job = asyncio.ensure_future(
        burst(targets(cluster), SLOW_REQUESTS, 1, f"&delay_ms={SLOW_DELAY_MS}", sent)
    )

    async def everyone_waits() -> bool:
        # Every request written, and one consistent snapshot of the coordinator's table with
        # every slot taken and a queue: from here on the queue stays non-empty until the last
        # grant (a straggler still travelling to the coordinator only lengthens it).
        if sent["requests"] < SLOW_REQUESTS:
            return False
        document = await table_of(coordinator)
        return document["inflight"] == slots and document["queue_length"] > 0

    await async_wait_until(everyone_waits, timeout=10.0, interval=0.01)
    all_queued = time.time()
    outcomes = await asyncio.wait_for(job, 30)
    assert all(o.ok for o in outcomes), Counter(str(o.status or o.error) for o in outcomes)

    timelines = [(await replica.astats())["timeline"] for replica in replicas]
    spans = [span for timeline in timelines for span in timeline]
    first_start = min(start for start, _ in spans)
    last_end = max(end for _, end in spans)
    last_grant = max(start for start, _ in spans)
    makespan = last_end - first_start
    ideal = SLOW_REQUESTS / slots * SLOW_DELAY_MS / 1000
    idle = [underused_spans(t, 1, all_queued, last_grant) for t in timelines]
    longest = max((end - start for spans_ in idle for start, end in spans_), default=0.0)
    total_idle = sum(end - start for spans_ in idle for start, end in spans_)
    handoffs = SLOW_REQUESTS - slots
    report(
        "work conserving",
        makespan_s=round(makespan, 3),
        ideal_s=ideal,
        longest_idle_ms=round(longest * 1000, 2),
        mean_handoff_ms=round(total_idle / max(handoffs, 1) * 1000, 2),
        per_replica=[len(t) for t in timelines],
    )
    # While the queue was never empty a slot may only be free for the hand-over to the next
    # request; a slot skipped for a whole request's time is caught by this bound.
    assert longest < SLOW_DELAY_MS / 1000, idle
    assert [len(t) for t in timelines] == [SLOW_REQUESTS // slots] * slots
    # The queue emptied only at the end: the work took about requests / slots * delay.
    assert makespan < ideal + 2 * SLOW_DELAY_MS / 1000


# -- one view of the cluster ------------------------------------------------------------------


async def test_instances_agree_and_log_who_decided(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    replicas = model_server.many(["r0", "r1"])
    cluster, coordinator = await start_cluster(inferfront_cluster, replicas, limit=1)
    views = await asyncio.gather(*(asyncio.to_thread(i.cluster_view) for i in cluster.instances))
    ids = sorted(i.instance_id for i in cluster.instances)
    for instance, view in zip(cluster.instances, views, strict=True):
        assert view["instance"] == instance.instance_id
        assert sorted(m["id"] for m in view["members"]) == ids
    # Every instance names the same members (same addresses) and the same coordinator, since
    # the same moment.
    assert len({tuple(sorted((m["id"], m["address"]) for m in v["members"])) for v in views}) == 1
    roles = {
        tuple((r["deployment"], r["coordinator"], r["since"]) for r in view["coordinators"])
        for view in views
    }
    assert len(roles) == 1, views
    assert views[0]["coordinators"][0]["deployment"] == KEY
    assert views[0]["coordinators"][0]["coordinator"] == coordinator.instance_id

    per_instance = 10
    outcomes = await burst(targets(cluster), 3 * per_instance, 1, "&delay_ms=2")
    assert all(o.ok for o in outcomes)
    for instance in cluster.instances:
        lines = await wait_access_log(instance, per_instance)
        assert len(lines) == per_instance
        for line in lines:
            assert line["instance"] == instance.instance_id, line
            assert line["status"] == 200
            assert line["replica"] in {"blue-0", "blue-1"}, line
            assert line["decided_by"] == coordinator.instance_id, line


async def test_every_instance_shows_the_coordinators_view_of_the_deployment(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    replicas = model_server.many(["r0", "r1"])
    cluster, coordinator = await start_cluster(inferfront_cluster, replicas, limit=1)
    b, c = (i for i in cluster.instances if i is not coordinator)
    held = await send_and_hold(b.port, 2, "&mode=hang")  # both slots, taken through b
    queued: list[Any] = []
    try:
        await wait_both_busy(replicas)
        queued = await send_and_hold(c.port, 3, "&mode=hang")  # waiting at the coordinator

        async def b_shows_them() -> dict[str, Any] | None:
            document = await table_of(b)
            shown = (document["view"], document["inflight"], document["queue_length"])
            return document if shown == ("fetched", 2, 3) else None

        document = await async_wait_until(b_shows_them, timeout=5.0, interval=0.01)
        assert document["coordinator"] == coordinator.instance_id
        assert sorted(r["inflight"] for r in document["replicas"]) == [1, 1]
        assert document["limit_per_replica"] == 1
        assert document["responses"] == {}  # b's own counters: nothing answered yet
        own = await table_of(coordinator)
        assert (own["view"], own["coordinator"]) == ("authoritative", coordinator.instance_id)
        assert (own["inflight"], own["queue_length"]) == (2, 3)
        seen_by_c = await table_of(c)
        assert (seen_by_c["view"], seen_by_c["inflight"]) == ("fetched", 2)

        # A coordinator that cannot answer: b shows what it knows itself, and says so.
        coordinator.process.send_signal(signal.SIGSTOP)
        try:
            local = await table_of(b)
        finally:
            coordinator.process.send_signal(signal.SIGCONT)
        assert (local["view"], local["coordinator"]) == (
            "coordinator unreachable",
            coordinator.instance_id,
        )
        assert local["inflight"] == 0  # b's own table: the counts live at the coordinator
    finally:
        for connection in [*queued, *held]:
            connection.close()

    async def all_given_back() -> bool:
        document = await table_of(b)
        return document["view"] == "fetched" and (
            document["inflight"],
            document["queue_length"],
        ) == (0, 0)

    await async_wait_until(all_given_back, timeout=5.0, interval=0.01)


async def test_instances_can_share_one_request_port(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    replicas = model_server.many(["r0", "r1"])
    cluster, _ = await start_cluster(inferfront_cluster, replicas, limit=1, share_port=True)
    port = cluster.instances[0].port
    # 60 connections: the kernel spreads them over the listeners by their addresses.
    outcomes = await burst([("shared", port)], 60, 2, "&delay_ms=2")
    assert all(o.ok for o in outcomes), Counter(str(o.status or o.error) for o in outcomes)

    async def logged() -> list[int] | None:
        counts = [len(i.access_log()) for i in cluster.instances]
        return counts if sum(counts) == len(outcomes) else None

    counts = await async_wait_until(logged, timeout=5.0, message="every request logged")
    report("shared port", requests_per_instance=counts)
    assert all(count > 0 for count in counts), counts
    peaks = [(await r.astats(history=False))["peak_inflight"] for r in replicas]
    assert peaks == [1, 1]


async def test_an_instance_id_in_use_is_refused(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    replicas = model_server.many(["r0"])
    cluster = await asyncio.to_thread(inferfront_cluster, cluster_config(replica_urls(replicas)), 1)
    original = cluster.instances[0]
    twin = ClusterInstance(cluster.config_path, cluster.state_dir, original.instance_id)
    cluster.retired.append(twin)  # stopped at teardown if it unexpectedly stays up
    code = await asyncio.to_thread(twin.process.wait, 15)
    assert code != 0
    await async_wait_until(
        lambda: any("'fe-0' is in use by a live instance" in line for line in twin.stderr),
        timeout=5.0,
        message="the refusal names the id",
    )
    assert not any("Traceback" in line for line in twin.stderr)
    view = await asyncio.to_thread(original.cluster_view)
    assert [m["id"] for m in view["members"]] == ["fe-0"]
    assert view["coordinators"][0]["coordinator"] == "fe-0"
    outcomes = await burst([("fe-0", original.port)], 2, 2)
    assert all(o.ok for o in outcomes)


# -- a replica dies ---------------------------------------------------------------------------


async def test_a_dead_replica_is_avoided_through_every_instance(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    # One instance alone retries on the other replica and unroutes the dead one at once (no
    # failure). Through instances that do not coordinate, the same must hold.
    replicas = model_server.many(["r0", "r1"])
    cluster, coordinator = await start_cluster(inferfront_cluster, replicas, limit=2)
    replicas[1].kill()
    front_ends = [i for i in cluster.instances if i is not coordinator]
    outcomes = await burst([(i.instance_id, i.port) for i in front_ends], 4, 10, "&delay_ms=5")
    statuses = Counter(o.status for o in outcomes)
    report("dead replica, through non-coordinators", statuses=dict(statuses))
    assert statuses == {200: 40}


# -- takeover with requests in flight --------------------------------------------------------

LONG_DELAY_MS = 1500


async def test_takeover_counts_requests_in_flight_at_the_survivors(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    # b holds both slots with long requests, c's requests wait; the coordinator dies. The new
    # coordinator must count b's slots (its own or from b's HELLO) and serve c only as they end.
    replicas = model_server.many(["r0", "r1"])
    cluster, coordinator = await start_cluster(inferfront_cluster, replicas, limit=1)
    b, c = (i for i in cluster.instances if i is not coordinator)
    long_job = asyncio.ensure_future(
        burst([(b.instance_id, b.port)], 2, 1, f"&delay_ms={LONG_DELAY_MS}")
    )
    await wait_both_busy(replicas)
    short_job = asyncio.ensure_future(burst([(c.instance_id, c.port)], 4, 1, "&delay_ms=10"))

    async def c_waits() -> bool:
        return (await table_of(coordinator))["queue_length"] == 4

    await async_wait_until(c_waits, timeout=5.0, interval=0.01)
    killed = time.monotonic()
    coordinator.kill()
    new_id, takeover_s = await wait_new_coordinator([b, c], coordinator.instance_id, 2.0)
    outcomes = await asyncio.wait_for(asyncio.gather(long_job, short_job), 15)
    long_outcomes, short_outcomes = outcomes
    assert all(o.ok for o in long_outcomes + short_outcomes)
    stats = [await r.astats() for r in replicas]
    first_short_start = min(
        start for s in stats for start, end in s["timeline"] if end - start < 0.5
    )
    long_ends = sorted(end for s in stats for start, end in s["timeline"] if end - start >= 1.0)
    report(
        "takeover with slots in flight",
        new_coordinator=new_id,
        takeover_seen_ms=round(takeover_s * 1000),
        waited_after_kill_ms=round((time.monotonic() - killed) * 1000),
        peaks=[s["peak_inflight"] for s in stats],
    )
    assert [s["peak_inflight"] for s in stats] == [1, 1]
    # c's requests started only once a long request had ended and freed its replica.
    assert first_short_start >= long_ends[0]


async def test_requests_ending_on_the_new_coordinator_during_its_rebuild(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    # p will take over (the rendezvous choice between p and q); q is stopped (SIGSTOP), so
    # p's rebuild waits for q's report while p's own long requests end.
    replicas = model_server.many(["r0", "r1"])
    cluster, coordinator = await start_cluster(inferfront_cluster, replicas, limit=1)
    others = [i for i in cluster.instances if i is not coordinator]
    chosen = preferred(KEY, [Member(i.instance_id, "", 0.0) for i in others])
    assert chosen is not None
    p = cluster.by_id(chosen.id)
    q = next(i for i in others if i is not p)
    long_job = asyncio.ensure_future(burst([(p.instance_id, p.port)], 2, 1, "&delay_ms=400"))
    await wait_both_busy(replicas)
    q.process.send_signal(signal.SIGSTOP)
    try:
        coordinator.kill()
        await async_wait_until(
            lambda: asyncio.to_thread(lambda: p.coordinators()[KEY] == p.instance_id),
            timeout=3.0,
            message="p coordinates",
        )
        assert all(o.ok for o in await asyncio.wait_for(long_job, 10))
    finally:
        q.process.send_signal(signal.SIGCONT)
    lines = await wait_access_log(p, 2)
    assert [line["status"] for line in lines] == [200, 200], lines

    async def nothing_held() -> bool:
        return (await table_of(p))["inflight"] == 0

    await async_wait_until(nothing_held, timeout=5.0, message="p's table is empty again")
    outcomes = await burst(targets(cluster), 4, 1, "&delay_ms=5")
    assert all(o.ok for o in outcomes), Counter(str(o.status or o.error) for o in outcomes)


# -- chaos ------------------------------------------------------------------------------------

CHAOS_DELAY_MS = 20
CHAOS_LIMIT = 2
WORKERS_PER_INSTANCE = 4  # 12 clients for 4 slots: a queue at all times
WARM_SUCCESSES = 10


# A front-end killed mid-request: the coordinator frees its slots the moment the connection
# drops, and the replica ends the orphaned request when it notices the same drop. Which of the
# two the replica's event loop handles first is a race of a few milliseconds (seen under CPU
# contention): over the limit within this window after that kill is that race, not a bug.
ORPHAN_RACE_S = 0.05


async def assert_within_limit(
    replicas: list[ModelServerHandle],
    phase: str,
    moments: dict[str, float],
    excused_after: float | None = None,
) -> None:
    """No replica above the limit since the last call (then reset), except within
    ORPHAN_RACE_S after `excused_after` (wall clock); the message tells when it happened."""
    for replica in replicas:
        stats = await replica.astats()
        above = above_limit(stats["timeline"], CHAOS_LIMIT)
        if excused_after is not None:
            above = [m for m in above if not 0 <= m[0] - excused_after <= ORPHAN_RACE_S]
        if above:
            raise AssertionError(
                f"{phase}: {replica.name} above the limit at {above[:10]}; moments {moments}"
            )
        await asyncio.to_thread(replica.reset)


def above_limit(timeline: list[list[float]], limit: int) -> list[tuple[float, int]]:
    """(moment, requests in flight) wherever a replica's own timeline exceeds `limit`."""
    events = sorted([(s, 1) for s, _ in timeline] + [(e, -1) for _, e in timeline])
    current, moments = 0, []
    for moment, change in events:
        current += change
        if current > limit:
            moments.append((round(moment, 3), current))
    return moments


def summarize(loops: dict[str, LoadLoop]) -> dict[str, dict[str, int]]:
    return {
        name: {"ok": sum(o.ok for o in loop.outcomes), **loop.failures()}
        for name, loop in loops.items()
    }


async def wait_successes(loops: list[LoadLoop], since: float, count: int, what: str) -> None:
    await async_wait_until(
        lambda: all(loop.successes_after(since) >= count for loop in loops),
        timeout=15.0,
        interval=0.01,
        message=what,
    )


async def wait_new_coordinator(
    survivors: list[ClusterInstance], old: str, budget: float
) -> tuple[str, float]:
    """Poll the survivors' /admin/v1/cluster until all name the same live coordinator."""
    started = time.monotonic()
    live = {s.instance_id for s in survivors}

    async def agreed() -> str | None:
        seen = set(await coordinators_seen(survivors))
        if len(seen) == 1 and (name := seen.pop()) in live and name != old:
            return name
        return None

    name = await async_wait_until(agreed, timeout=budget, interval=0.01, message="takeover")
    return name, time.monotonic() - started


async def test_chaos_coordinator_and_front_end_killed_then_restarted(
    inferfront_cluster: ClusterFactory, model_server: ModelServerFactory
) -> None:
    replicas = model_server.many(["r0", "r1"])
    cluster, first = await start_cluster(inferfront_cluster, replicas, limit=CHAOS_LIMIT)
    deadline = time.monotonic() + 60
    query = f"&delay_ms={CHAOS_DELAY_MS}"
    loops = {
        i.instance_id: LoadLoop(i.instance_id, i.port, WORKERS_PER_INSTANCE, query, deadline)
        for i in cluster.instances
    }
    for loop in loops.values():
        loop.start()
    try:
        await chaos_scenario(cluster, loops, first, replicas, query)
    finally:
        for loop in loops.values():
            loop.stopped.set()
        await asyncio.gather(*(loop.stop() for loop in loops.values()))


async def chaos_scenario(
    cluster: Cluster,
    loops: dict[str, LoadLoop],
    first: ClusterInstance,
    replicas: list[ModelServerHandle],
    query: str,
) -> None:
    t0 = time.monotonic()
    await wait_successes(list(loops.values()), t0, WARM_SUCCESSES, "warm-up on every instance")

    # 1. SIGKILL the coordinator: another instance takes over; survivors fail nothing.
    survivors = [i for i in cluster.instances if i is not first]
    moments = {"start": time.time()}
    await assert_within_limit(replicas, "warm-up", moments)
    kill_1 = time.monotonic()
    moments["kill_1"] = time.time()
    first.kill()
    second_id, takeover_s = await wait_new_coordinator(
        survivors, first.instance_id, TAKEOVER_BUDGET_S
    )
    second = cluster.by_id(second_id)
    after = time.monotonic()
    await wait_successes(
        [loops[s.instance_id] for s in survivors], after, WARM_SUCCESSES, "service after takeover"
    )
    now = time.monotonic()
    survivor_outcomes = [o for s in survivors for o in loops[s.instance_id].outcomes]
    gap_1, _ = longest_gap(survivor_outcomes, kill_1, now)
    per_survivor_gap_1 = {
        s.instance_id: round(longest_gap(loops[s.instance_id].outcomes, kill_1, now)[0] * 1000)
        for s in survivors
    }
    report(
        "coordinator killed",
        killed=first.instance_id,
        new_coordinator=second_id,
        takeover_seen_ms=round(takeover_s * 1000),
        longest_gap_ms=round(gap_1 * 1000),
        per_survivor_gap_ms=per_survivor_gap_1,
        requests=summarize(loops),
    )
    for survivor in survivors:
        failures = loops[survivor.instance_id].failures()
        assert not failures, (summarize(loops), survivor.instance_id, survivor.errors()[-40:])

    # 2. SIGKILL a front-end that does not coordinate: only its own clients fail, and the
    #    coordinator gets its slots back.
    victim = next(s for s in survivors if s is not second)
    before_kill_2 = {name: dict(loop.failures()) for name, loop in loops.items()}
    await assert_within_limit(replicas, "coordinator killed", moments)
    kill_2 = time.monotonic()
    moments["kill_2"] = time.time()
    victim.kill()
    await wait_successes([loops[second_id]], time.monotonic(), WARM_SUCCESSES, "service goes on")
    gap_2, _ = longest_gap(loops[second_id].outcomes, kill_2, time.monotonic())
    await loops[second_id].stop()  # the coordinator's own load ends; nothing else is in flight

    async def nothing_held() -> bool:
        document = await table_of(second)
        return document["inflight"] == 0 and document["queue_length"] == 0

    await async_wait_until(nothing_held, timeout=RELEASE_BUDGET_S, interval=0.01)
    released_s = time.monotonic() - kill_2
    report(
        "front-end killed",
        killed=victim.instance_id,
        longest_gap_ms=round(gap_2 * 1000),
        coordinator_clean_after_ms=round(released_s * 1000),
        requests=summarize(loops),
    )
    assert not loops[second_id].failures(), (summarize(loops), second.errors()[-40:])
    assert dict(loops[first.instance_id].failures()) == before_kill_2[first.instance_id]
    assert released_s < RELEASE_BUDGET_S + 1.0

    await assert_within_limit(replicas, "front-end killed", moments, moments["kill_2"])

    # 3. Restart the first coordinator under the same id: it rejoins as a plain front-end.
    moments["restart"] = time.time()
    restarted = await asyncio.to_thread(cluster.restart, cluster.index_of(first.instance_id))
    live = [second, restarted]

    async def rejoined() -> bool:
        views = await asyncio.gather(*(asyncio.to_thread(i.cluster_view) for i in live))
        members = [sorted(m["id"] for m in view["members"]) for view in views]
        expected = sorted(i.instance_id for i in live)
        return all(m == expected for m in members)

    await async_wait_until(rejoined, timeout=10.0, interval=0.05, message="rejoined")
    assert await coordinators_seen(live) == [second_id, second_id]
    outcomes: list[Outcome] = await burst(targets(cluster), 20, 3, query)
    assert all(o.ok for o in outcomes), Counter(str(o.status or o.error) for o in outcomes)
    assert Counter(o.instance for o in outcomes)[restarted.instance_id] == 30
    lines = await wait_access_log(restarted, 30)
    assert {line["decided_by"] for line in lines} == {second_id}

    await assert_within_limit(replicas, "after the restart", moments)
