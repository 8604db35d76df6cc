"""The autoscaler's mechanics: sample a deployment, ask the pure policy, tell the runtime.

Samples every `sample_interval_s` (100 ms) from the routing table, decides every polling
interval with `decide()` (policy.py), and calls `runtime.scale_to()` when the desired count
changes. Time comes from an injected clock; the loop is the only place that waits.

Decisions worth knowing:
- Requests waiting in the router's queue mean capacity is short now: a sample showing any is
  decided on at once rather than at the next polling interval (the policy allows deciding more
  often; only scale-up reacts sooner, and it still needs demand held for `burst_confirm_s`,
  or the stable window's mean). At zero replicas the proxy also calls `wake()`, so the first request
  does not even wait for the next sample.
- One `scale_to` runs at a time. A target decided while one runs is remembered and applied as
  soon as it returns, so a quick second decision is never lost or delayed to the next poll.
- `stop()` lets a `scale_to` in progress finish (bounded): cancelling it in the middle of a
  launch could leave a process the runtime never registered.
- `snapshot()` is JSON-safe: utilization is infinite when requests wait at zero replicas, and
  JSON has no Infinity, so it is reported as null then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from inferfront.scaling.policy import Decision, ScalePolicy, decide, initial_state
from inferfront.scaling.sampler import Sample

if TYPE_CHECKING:
    from inferfront.config import ScaleSettings
    from inferfront.routing.slots import SlotTable
    from inferfront.runtime.base import ReplicaRuntime

log = logging.getLogger("inferfront.scaling")

DECISIONS_KEPT = 50
STOP_GRACE_S = 10.0  # how long stop() lets a scale_to in progress finish before cancelling it


def policy_from_settings(settings: ScaleSettings) -> ScalePolicy:
    return ScalePolicy(
        min_instances=settings.min_instances,
        max_instances=settings.max_instances,
        target=settings.target_utilization_percentage / 100,
        polling_interval_s=settings.polling_interval,
        scale_down_delay_s=settings.scale_down_delay_s,
    )


def finite_or_none(value: float, digits: int = 4) -> float | None:
    """A rounded number for JSON, or None for infinity/NaN (which JSON cannot carry)."""
    return round(value, digits) if math.isfinite(value) else None


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
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self.changes = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._scaling: asyncio.Task[None] | None = None
        self._wanted: int | None = None  # the latest target handed to the scaling task

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
        """Take a sample; each polling interval (or at once while requests are queued), decide
        and act."""
        sample = self.sample(now)
        scheduled = now >= self.next_decision
        if not scheduled and not sample.queued:
            return None
        if scheduled:  # early decisions leave the polling cadence alone
            self.next_decision = now + self.policy.polling_interval_s
        decision = decide(self.policy, self.window, self.state, now)
        previous = self.state.desired
        self.state = decision.state
        self.last_decision = decision
        if decision.changed:
            self._record(previous, decision)
            self._apply(decision.desired)
        elif scheduled and decision.desired != self.runtime.current:
            # Re-sync (a failed scale_to, a replica lost) once per interval, not every sample.
            self._apply(decision.desired)
        return decision

    def _record(self, previous: int, decision: Decision) -> None:
        self.changes += 1
        self.decisions.append(
            {
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "from": previous,
                "to": decision.desired,
                "replicas": self.runtime.current,
                "reason": decision.reason,
            }
        )
        log.info("deployment %s: %s", self.name, decision.reason)

    def _apply(self, desired: int) -> None:
        self._wanted = desired
        if self._scaling is not None and not self._scaling.done():
            return  # the running task picks up the new target when its scale_to returns
        self._scaling = asyncio.get_running_loop().create_task(
            self._converge(), name=f"scale {self.name}"
        )

    async def _converge(self) -> None:
        """Hand the runtime the latest target until no newer one arrived meanwhile."""
        applied: int | None = None
        while self._wanted is not None and self._wanted != applied:
            applied = self._wanted
            try:
                await self.runtime.scale_to(applied)
            except Exception:  # logged; the next polling interval asks again
                log.exception("deployment %s: scale_to(%d) failed", self.name, applied)
                return

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"autoscaler {self.name}"
        )

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
        """Stop deciding; a scale_to in progress finishes first (bounded by STOP_GRACE_S)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        scaling = self._scaling
        if scaling is not None and not scaling.done():
            self._wanted = None  # no further targets after this one
            _, pending = await asyncio.wait({scaling}, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- telemetry ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The admin view; every value is JSON-serializable (utilization null when infinite)."""
        latest = self.window.latest
        decision = self.last_decision
        now = self.clock()
        average = self.window.average(now, self.policy.polling_interval_s)
        return {
            "current": self.runtime.current,
            "ready": self.table.ready_count,
            "starting": self.runtime.starting,
            "desired": self.state.desired,
            "utilization": finite_or_none(latest.utilization) if latest else 0.0,
            "utilization_avg": finite_or_none(average),
            "target": self.policy.target,
            "min": self.policy.min_instances,
            "max": self.policy.max_instances,
            "last_reason": decision.reason if decision else "",
            "decisions_total": self.changes,
            "decisions": list(self.decisions),
        }
