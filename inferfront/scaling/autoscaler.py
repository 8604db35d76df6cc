"""The autoscaler's mechanics: sample a deployment, ask the pure policy, tell the runtime.

Samples every `sample_interval_s` (100 ms) from the routing table, decides every polling
interval with `decide()` (policy.py), and calls `runtime.scale_to()` when the desired count
changes. Time comes from an injected clock; the loop is the only place that waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from inferfront.scaling.policy import Decision, ScalePolicy, decide, initial_state
from inferfront.scaling.sampler import Sample

if TYPE_CHECKING:
    from inferfront.config import ScaleSettings
    from inferfront.routing.slots import SlotTable
    from inferfront.runtime.base import ReplicaRuntime

log = logging.getLogger("inferfront.scaling")

DECISIONS_KEPT = 50


def policy_from_settings(settings: ScaleSettings) -> ScalePolicy:
    return ScalePolicy(
        min_instances=settings.min_instances,
        max_instances=settings.max_instances,
        target=settings.target_utilization_percentage / 100,
        polling_interval_s=settings.polling_interval,
        scale_down_delay_s=settings.scale_down_delay_s,
    )


class Autoscaler:
    def __init__(
        self,
        name: str,
        policy: ScalePolicy,
        table: SlotTable,
        runtime: ReplicaRuntime,
        *,
        clock: Callable[[], float] = time.monotonic,
        sample_interval_s: float = 0.1,
    ) -> None:
        self.name = name
        self.policy = policy
        self.table = table
        self.runtime = runtime
        self.clock = clock
        self.sample_interval_s = min(sample_interval_s, policy.polling_interval_s)
        self.window = policy.new_window()
        now = clock()
        self.state = initial_state(runtime.current, now)
        self.next_decision = now + policy.polling_interval_s
        self.last_decision: Decision | None = None
        self.decisions: deque[dict] = deque(maxlen=DECISIONS_KEPT)
        self.changes = 0
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._scaling: asyncio.Task | None = None

    # -- one step, no waiting: what the loop (and tests) call --------------------------------

    def sample(self, now: float) -> Sample:
        table = self.table
        sample = Sample.observe(
            now,
            inflight=table.inflight,
            queued=table.queued,
            replicas=self.runtime.current,
            ready=table.ready_count,
            concurrency=table.limit,
        )
        self.window.add(sample)
        return sample

    def step(self, now: float) -> Decision | None:
        """Take a sample; at each polling interval (or when woken), decide and act."""
        sample = self.sample(now)
        urgent = sample.replicas == 0 and sample.queued > 0
        if now < self.next_decision and not urgent:
            return None
        self.next_decision = now + self.policy.polling_interval_s
        decision = decide(self.policy, self.window, self.state, now)
        self.state = decision.state
        self.last_decision = decision
        if decision.changed or decision.desired != self.runtime.current:
            self._apply(decision, now)
        return decision

    def _apply(self, decision: Decision, now: float) -> None:
        current = self.runtime.current
        if decision.changed:
            self.changes += 1
            self.decisions.append(
                {
                    "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "from": current,
                    "to": decision.desired,
                    "reason": decision.reason,
                }
            )
            log.info("deployment %s: %s", self.name, decision.reason)
        if self._scaling is not None and not self._scaling.done():
            return  # the runtime is converging already; the next step re-checks
        self._scaling = asyncio.get_running_loop().create_task(
            self.runtime.scale_to(decision.desired)
        )

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """A request is waiting at zero replicas: decide now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                self.step(self.clock())
            except Exception:  # a bug here must not stop routing; it is logged and retried
                log.exception("deployment %s: autoscaler step failed", self.name)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sample_interval_s)

    async def stop(self) -> None:
        for task in (self._task, self._scaling):
            if task is not None:
                task.cancel()
        for task in (self._task, self._scaling):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- telemetry ---------------------------------------------------------------------------

    def snapshot(self) -> dict:
        latest = self.window.latest
        decision = self.last_decision
        now = self.clock()
        return {
            "current": self.runtime.current,
            "ready": self.table.ready_count,
            "starting": self.runtime.starting,
            "desired": self.state.desired,
            "utilization": round(latest.utilization, 4) if latest else 0.0,
            "utilization_avg": round(self.window.average(now, self.policy.polling_interval_s), 4),
            "target": self.policy.target,
            "min": self.policy.min_instances,
            "max": self.policy.max_instances,
            "last_reason": decision.reason if decision else "",
            "decisions_total": self.changes,
            "decisions": list(self.decisions),
        }
