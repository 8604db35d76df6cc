"""The autoscaler's mechanics (sampling, cadence, acting, history, snapshot) with a manual clock,
a real SlotTable and an in-memory runtime. Nothing sleeps: `step(now)` is called with explicit
times, and `await asyncio.sleep(0)` only yields so the scale_to tasks it created get to run."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging

import pytest

from inferfront.config import ScaleSettings
from inferfront.routing.slots import Replica, SlotTable
from inferfront.scaling.autoscaler import DECISIONS_KEPT, Autoscaler, policy_from_settings
from inferfront.scaling.policy import ScalePolicy

TICK = 0.1  # the loop's sample interval


class ManualClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRuntime:
    """Replicas in memory. `scale_to` records (time, count) and changes the table at once: new
    replicas join ready, surplus ones leave. `gate` makes it wait (a slow launch); `fail` makes
    it raise (a launch error)."""

    def __init__(
        self, table: SlotTable, clock: ManualClock, ready: int = 0, starting: int = 0
    ) -> None:
        self.table = table
        self.clock = clock
        self.calls: list[tuple[float, int]] = []
        self.completed: list[int] = []
        self.names: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = False
        self._next = 0
        for _ in range(ready):
            self._add(ready=True)
        for _ in range(starting):
            self._add(ready=False)

    @property
    def current(self) -> int:
        return len(self.names)

    @property
    def starting(self) -> int:
        return sum(1 for name in self.names if not self.table.replicas[name].ready)

    @property
    def counts(self) -> list[int]:
        return [count for _, count in self.calls]

    async def scale_to(self, count: int) -> None:
        self.calls.append((self.clock.now, count))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("cannot launch a replica")
        while len(self.names) < count:
            self._add(ready=True)
        while len(self.names) > count:
            self.table.remove(self.names.pop())
        self.completed.append(count)

    def _add(self, ready: bool) -> None:
        name = f"r{self._next}"
        self._next += 1
        self.names.append(name)
        self.table.add(Replica(name, "127.0.0.1", 10000 + self._next), ready=ready)


class Waiter:
    """A queued request as the table sees it."""

    def __init__(self) -> None:
        self.active = True
        self.replica: Replica | None = None

    def grant(self, replica: Replica) -> None:
        self.replica = replica


class Load:
    """Requests present in a table: each takes a free slot or waits in the queue."""

    def __init__(self, table: SlotTable) -> None:
        self.table = table
        self.held: list[Replica] = []
        self.waiting: list[Waiter] = []

    def add(self, requests: int) -> None:
        for _ in range(requests):
            replica = self.table.try_acquire()
            if replica is not None:
                self.held.append(replica)
            else:
                waiter = Waiter()
                self.table.enqueue(waiter)
                self.waiting.append(waiter)

    def finish_all(self) -> None:
        for waiter in self.waiting:
            if waiter.replica is not None:
                self.held.append(waiter.replica)
            else:
                self.table.cancel(waiter)
        self.waiting.clear()
        for replica in self.held:
            self.table.release(replica)
        self.held.clear()


def make(
    *, ready: int = 1, starting: int = 0, limit: int = 1, sample_interval_s: float = TICK, **policy
) -> tuple[Autoscaler, FakeRuntime, Load, ManualClock]:
    settings = dict(
        min_instances=1,
        max_instances=10,
        target=0.7,
        polling_interval_s=1.0,
        scale_down_delay_s=60.0,
    )
    clock = ManualClock()
    table = SlotTable(limit, max_queued=1000)
    runtime = FakeRuntime(table, clock, ready=ready, starting=starting)
    scaler = Autoscaler(
        "ep/blue",
        ScalePolicy(**(settings | policy)),
        table,
        runtime,
        clock=clock,
        sample_interval_s=sample_interval_s,
    )
    return scaler, runtime, Load(table), clock


async def run_tasks() -> None:
    """Yield to the event loop a few times so tasks created by a step run to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def step_until(scaler: Autoscaler, clock: ManualClock, until: float) -> None:
    """Step every 100 ms from the clock's time (exclusive) up to `until` (inclusive)."""
    i = round(clock.now / TICK)
    while (i + 1) * TICK <= until + 1e-9:
        i += 1
        clock.now = i * TICK
        scaler.step(clock.now)
        await run_tasks()


# -- cadence and acting ----------------------------------------------------------------------


async def test_burst_gets_its_replicas_within_one_polling_interval():
    scaler, runtime, load, clock = make()
    await step_until(scaler, clock, 0.7)
    assert runtime.calls == []  # idle at 1 replica: nothing to do

    load.add(6)  # 1 in flight, 5 queued: demand 6 replicas' worth
    burst_at = clock.now
    await step_until(scaler, clock, burst_at + 1.0)

    # The queue is seen at the next sample and decided on at once: the stable window's mean
    # over this young autoscaler's first samples asks for 2; once the burst has held for
    # burst_confirm_s (0.3 s) it gets all it needs.
    assert runtime.counts == [2, 9]  # 9 = ceil(6 / 0.7)
    assert runtime.calls[0][0] == pytest.approx(burst_at + TICK)
    assert runtime.calls[-1][0] <= burst_at + scaler.policy.burst_confirm_s + TICK + 1e-9
    assert runtime.current == 9
    assert all(waiter.replica is not None for waiter in load.waiting)  # the queue drained


async def test_without_a_queue_decides_only_at_polling_intervals():
    scaler, runtime, load, clock = make()
    load.add(1)  # utilization 1.0 > 0.7, but nothing waits
    decisions = []
    for i in range(1, 10):
        clock.now = i * TICK
        decisions.append(scaler.step(clock.now))
    assert decisions == [None] * 9  # 0.1 .. 0.9: before the first polling interval ends
    assert runtime.calls == []

    clock.now = 1.0
    decision = scaler.step(clock.now)
    await run_tasks()
    assert decision is not None and decision.desired == 2
    assert runtime.counts == [2]
    assert scaler.next_decision == pytest.approx(2.0)


async def test_early_decisions_keep_the_polling_cadence():
    scaler, _, load, clock = make(max_instances=20)
    await step_until(scaler, clock, 0.5)
    load.add(30)  # a queue at every sample from 0.6 on
    await step_until(scaler, clock, 0.9)
    assert scaler.changes >= 1
    assert scaler.next_decision == pytest.approx(1.0)  # decided early, the poll still due at 1.0


async def test_request_queued_at_zero_replicas_is_decided_at_once():
    scaler, runtime, load, clock = make(ready=0, min_instances=0)
    clock.now = 0.05
    load.add(1)

    decision = scaler.step(clock.now)  # long before the first polling interval ends
    await run_tasks()

    assert decision is not None and decision.desired == 2  # ceil(1 / 0.7)
    assert runtime.calls == [(0.05, 2)]
    assert load.waiting[0].replica is not None  # the new replica took the waiting request


async def test_wake_makes_the_loop_decide_at_once():
    # Neither the polling interval nor the sample interval can come round during the test:
    # only wake() can make the loop step again.
    scaler, runtime, load, _ = make(
        ready=0, min_instances=0, polling_interval_s=3600.0, sample_interval_s=3600.0
    )
    scaler.start()
    try:
        await run_tasks()  # the loop takes its first sample and waits
        assert runtime.calls == []
        load.add(1)
        scaler.wake()
        await run_tasks()
        assert len(runtime.counts) == 1 and runtime.counts[0] >= 1
        assert load.waiting[0].replica is not None
    finally:
        await scaler.stop()


async def test_target_decided_while_scale_to_runs_is_applied_when_it_returns():
    scaler, runtime, load, clock = make(max_instances=20)
    runtime.gate = asyncio.Event()
    load.add(6)
    await step_until(scaler, clock, 1.0)
    assert runtime.counts == [9]  # ... and still launching

    load.add(4)  # 10 requests now: ceil(10 / 0.7) = 15
    await step_until(scaler, clock, 2.0)
    assert runtime.counts == [9]  # one scale_to at a time

    runtime.gate.set()
    await run_tasks()
    assert runtime.counts == [9, 15]
    assert runtime.completed == [9, 15]
    assert runtime.current == 15


async def test_failed_scale_to_is_logged_and_asked_again_next_interval(caplog):
    scaler, runtime, load, clock = make()
    runtime.fail = True
    load.add(6)
    with caplog.at_level(logging.ERROR, logger="inferfront.scaling"):
        await step_until(scaler, clock, 0.9)
    assert runtime.counts == [9]  # not retried at every sample, queue or not
    assert "scale_to(9) failed" in caplog.text

    runtime.fail = False
    await step_until(scaler, clock, 2.0)
    assert runtime.counts == [9, 9]  # at the poll: desired 9 != current 1, asked again once
    assert runtime.current == 9
    assert scaler.changes == 1  # a retry is not a new decision


async def test_stop_lets_a_scale_to_in_progress_finish():
    scaler, runtime, load, clock = make()
    runtime.gate = asyncio.Event()
    scaler.start()
    load.add(6)
    clock.now = 1.0
    scaler.wake()  # step now (the clock says a polling interval has passed)
    await run_tasks()
    assert runtime.counts == [9]

    stopping = asyncio.create_task(scaler.stop())
    await run_tasks()
    assert not stopping.done()  # waiting for the launch, not cancelling it
    runtime.gate.set()
    await stopping
    assert runtime.completed == [9]


# -- history and snapshot --------------------------------------------------------------------


async def test_decision_history_keeps_the_last_50_with_from_to_reason():
    scaler, _, load, clock = make(scale_down_delay_s=0.0)
    cycles = 30
    for _ in range(cycles):  # one interval with 1 request (up to 2), one idle (down to 1)
        load.add(1)
        await step_until(scaler, clock, clock.now + 1.0)
        load.finish_all()
        await step_until(scaler, clock, clock.now + 1.0)

    assert scaler.changes == 2 * cycles
    history = scaler.snapshot()["decisions"]
    assert len(history) == DECISIONS_KEPT
    assert [(d["from"], d["to"]) for d in history[-2:]] == [(1, 2), (2, 1)]
    for entry in history:
        assert set(entry) >= {"at", "from", "to", "reason"}
        assert f"{entry['from']} -> {entry['to']}" in entry["reason"]
    for earlier, later in itertools.pairwise(history):
        assert earlier["to"] == later["from"]


async def test_snapshot_fields():
    scaler, _, load, clock = make(ready=2, starting=1)
    load.add(1)
    await step_until(scaler, clock, 1.0)

    snapshot = scaler.snapshot()

    assert snapshot["current"] == 3
    assert snapshot["ready"] == 2
    assert snapshot["starting"] == 1
    assert snapshot["desired"] == 3
    assert snapshot["utilization"] == pytest.approx(1 / 3, abs=1e-4)
    assert snapshot["utilization_avg"] == pytest.approx(1 / 3, abs=1e-4)
    assert (snapshot["target"], snapshot["min"], snapshot["max"]) == (0.7, 1, 10)
    assert snapshot["decisions_total"] == 0
    assert snapshot["decisions"] == []
    assert "holding 3" in snapshot["last_reason"]
    json.dumps(snapshot, allow_nan=False)


async def test_snapshot_is_json_at_zero_replicas_with_requests_waiting():
    scaler, runtime, load, clock = make(ready=0, min_instances=0)
    runtime.gate = asyncio.Event()  # the replica never arrives during the test
    clock.now = 0.1
    load.add(2)
    scaler.step(clock.now)
    await run_tasks()

    snapshot = scaler.snapshot()

    assert snapshot["utilization"] is None  # infinite: demand and no replica at all
    assert snapshot["utilization_avg"] is None
    assert snapshot["current"] == 0
    assert snapshot["desired"] == 3  # ceil(2 / 0.7)
    assert (snapshot["decisions"][-1]["from"], snapshot["decisions"][-1]["to"]) == (0, 3)
    text = json.dumps(snapshot, allow_nan=False)
    assert "Infinity" not in text
    runtime.gate.set()
    await run_tasks()


async def test_snapshot_before_any_sample():
    scaler, _, _, _ = make()
    snapshot = scaler.snapshot()
    assert (snapshot["utilization"], snapshot["utilization_avg"]) == (0.0, 0.0)
    assert snapshot["last_reason"] == ""
    json.dumps(snapshot, allow_nan=False)


def test_policy_from_settings_converts_percent_and_names():
    settings = ScaleSettings(
        type="target_utilization",
        min_instances=0,
        max_instances=8,
        target_utilization_percentage=70,
        polling_interval=0.5,
        scale_down_delay_s=4.0,
    )
    assert policy_from_settings(settings) == ScalePolicy(
        min_instances=0,
        max_instances=8,
        target=0.7,
        polling_interval_s=0.5,
        scale_down_delay_s=4.0,
    )
