"""The autoscaling decision: how many replicas a deployment should have now.

Pure policy: `decide(policy, window, state, now)` reads samples (see sampler.py for the units:
demand in replica-equivalents, utilization = demand / current replicas, starting ones included)
and the previous state, and returns the new desired count. No clock, no I/O, no asyncio, so a
simulator can replay traces through the same function the live autoscaler uses.

The rule (seed: "eager and fast up, conservative down"):

* Need. `need(d) = clamp(ceil(d / target))`: the replicas that bring demand `d` to the target.
  It depends only on demand, never on how many replicas exist, so requests queued because
  replicas are still booting never ask for more than the formula does with those replicas
  counted (capacity to come).
* Up, eagerly, straight to the need. The demand used is the larger of
  - the mean over the last polling interval (a spike between two decisions still moves the
    mean, so it is never missed), and
  - the *sustained latest* demand: the lowest sample over the last `burst_confirm_s` (0.3 s,
    three 100 ms samples). A burst that has held that long gets its full capacity at the next
    decision instead of a fraction of it (the mean of an interval the burst only ends is
    diluted); a single noisy sample does not, since the minimum ignores it. The latest sample
    alone would flap on noise; the peak would size capacity for a 100 ms blip for a minute.
  Scale up whenever that need exceeds the current desired count. When the desired count equals
  the replicas, this is exactly "utilization over target".
* Down, conservatively, Knative-style stable window: at least `scale_down_delay_s` after the
  last change, and only to the largest need seen in the window, where each polling interval's
  mean demand is one observation: `max over intervals of ceil(mean_demand / target)` (intervals
  aligned on multiples of the polling interval, so the answer does not depend on when `decide`
  runs). Falling
  below the current count therefore means utilization stayed under target in every interval of
  the window. With min_instances 0 this reaches 0 only after a window with no demand at all.
* From zero: replicas 0 and a queued request is infinite utilization; any positive demand has a
  need of at least 1, so the next decision asks for a replica.

Cadence. Call `decide` every polling interval (the documented behaviour); with the default 1 s
interval and samples every 100 ms a burst gets its replicas requested within about 1.3 s.
Calling more often is safe: scale-up only reacts sooner, scale-down timing does not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inferfront.scaling.sampler import EPSILON, Sample, UtilizationWindow, utilization


def ceil_replicas(x: float) -> int:
    """ceil() that does not turn 2.1 / 0.7 = 3.0000000000000004 into 4."""
    return math.ceil(round(x, 9))


@dataclass(frozen=True)
class ScalePolicy:
    """A deployment's `scale_settings`, in seconds and a 0..1 target."""

    min_instances: int = 1
    max_instances: int = 1
    target: float = 0.7
    polling_interval_s: float = 1.0
    scale_down_delay_s: float = 60.0
    burst_confirm_s: float = 0.3  # a burst held this long gets its full capacity at once

    def __post_init__(self) -> None:
        if self.min_instances < 0:
            raise ValueError("min_instances must be >= 0")
        if self.max_instances < max(1, self.min_instances):
            raise ValueError("max_instances must be >= 1 and >= min_instances")
        if not 0 < self.target <= 1:
            raise ValueError("target must be in (0, 1]")
        if self.polling_interval_s <= 0 or self.scale_down_delay_s < 0:
            raise ValueError("polling_interval_s must be > 0 and scale_down_delay_s >= 0")
        if self.burst_confirm_s <= 0:
            raise ValueError("burst_confirm_s must be > 0")

    @property
    def stable_intervals(self) -> int:
        """Polling intervals in the stable window (the delay rounded up to whole intervals)."""
        return max(1, math.ceil(self.scale_down_delay_s / self.polling_interval_s - EPSILON))

    @property
    def stable_window_s(self) -> float:
        return self.stable_intervals * self.polling_interval_s

    @property
    def horizon_s(self) -> float:
        """How much history `decide` reads: size a UtilizationWindow with this."""
        return self.stable_window_s + self.polling_interval_s

    def clamp(self, replicas: int) -> int:
        return min(self.max_instances, max(self.min_instances, replicas))

    def need(self, demand: float) -> int:
        """Replicas that bring `demand` (in replica-equivalents) to the target, clamped."""
        return self.clamp(ceil_replicas(demand / self.target))

    def new_window(self) -> UtilizationWindow:
        return UtilizationWindow(self.horizon_s)


@dataclass(frozen=True)
class ScaleState:
    """What the previous decision left behind."""

    desired: int
    changed_at: float  # last change of `desired` (or when the autoscaler started)


def initial_state(replicas: int, now: float) -> ScaleState:
    """State for an autoscaler taking over a deployment that has `replicas` now.

    Counts as a change at `now`: no scale-down before a whole stable window has been observed.
    """
    return ScaleState(desired=replicas, changed_at=now)


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # one line for logs and the admin API
    changed: bool
    state: ScaleState
    utilization: float  # mean over the last polling interval against current replicas


def decide(
    policy: ScalePolicy, window: UtilizationWindow, state: ScaleState, now: float
) -> Decision:
    """The desired replica count at `now`. Reads `window`, never modifies it."""
    bounded = policy.clamp(state.desired)
    interval = policy.polling_interval_s
    mean = window.mean_demand(now, interval)
    latest = window.latest
    if mean is None or latest is None:
        return _settle(policy, state, bounded, now, 0.0, f"no samples in the last {interval:g}s")

    sustained = window.sustained_demand(now, min(policy.burst_confirm_s, interval)) or 0.0
    mean_util = utilization(mean, latest.replicas)
    up_demand = max(mean, sustained)
    up_need = policy.need(up_demand)
    if latest.queued > 0:
        up_need = max(up_need, policy.clamp(1))  # at zero, a waiting request needs a replica

    if up_need > bounded:
        reason = _up_reason(policy, state, latest, mean, sustained, up_need)
        return _change(state, up_need, now, mean_util, reason)

    down = _scale_down_target(policy, window, state, now, up_need)
    if down is not None and down < bounded:
        reason = (
            f"utilization below {policy.target:.2f} for {policy.stable_window_s:g}s "
            f"(the window needs {down}): {state.desired} -> {down}"
        )
        return _change(state, down, now, mean_util, reason)

    reason = _hold_reason(policy, state, now, mean_util, down)
    return _settle(policy, state, bounded, now, mean_util, reason)


def _scale_down_target(
    policy: ScalePolicy, window: UtilizationWindow, state: ScaleState, now: float, up_need: int
) -> int | None:
    """The window's largest need, or None while scaling down is not allowed yet."""
    if now - state.changed_at < policy.scale_down_delay_s - EPSILON:
        return None
    window_s = policy.stable_window_s
    oldest = window.oldest_at
    # Without samples reaching back over the whole window (sampler stalled or just started)
    # the window's need is unknown: hold.
    if oldest is None or oldest > now - window_s + policy.polling_interval_s + EPSILON:
        return None
    means = window.bucket_means(now, window_s, policy.polling_interval_s)
    window_need = policy.need(max(means, default=0.0))
    return max(window_need, up_need)


def _up_reason(
    policy: ScalePolicy,
    state: ScaleState,
    latest: Sample,
    mean: float,
    sustained: float,
    up_need: int,
) -> str:
    if mean >= sustained:
        demand, source = mean, f"over {policy.polling_interval_s:g}s"
    else:
        demand, source = sustained, f"held over the last {policy.burst_confirm_s:g}s"
    util = utilization(demand, latest.replicas)
    comparison = ">" if util > policy.target else "<="  # "<=" only if replicas exceed desired
    return (
        f"utilization {util:.2f} {comparison} {policy.target:.2f} {source} "
        f"(demand {demand:.2f}, {latest.queued} queued, {latest.replicas} replicas): "
        f"{state.desired} -> {up_need}"
    )


def _hold_reason(
    policy: ScalePolicy, state: ScaleState, now: float, util: float, down: int | None
) -> str:
    comparison = ">" if util > policy.target else "<="
    text = f"utilization {util:.2f} {comparison} {policy.target:.2f}: holding {state.desired}"
    if util > policy.target and state.desired >= policy.max_instances:
        return f"{text} (at max_instances)"
    if down is not None:
        return f"{text} (the stable window needs {down})"
    if util < policy.target:
        earliest = state.changed_at + policy.scale_down_delay_s
        if now < earliest:
            return f"{text} (stable window: no scale-down before {earliest:.1f}s)"
        return f"{text} (stable window: waiting for a full window of samples)"
    return text


def _settle(
    policy: ScalePolicy, state: ScaleState, bounded: int, now: float, util: float, reason: str
) -> Decision:
    """Hold, unless the previous count lies outside [min, max] (settings changed): clamp it."""
    if bounded != state.desired:
        limits = f"[{policy.min_instances}, {policy.max_instances}]"
        reason = f"clamped to {limits}: {state.desired} -> {bounded}"
        return _change(state, bounded, now, util, reason)
    return Decision(state.desired, reason, False, state, util)


def _change(state: ScaleState, desired: int, now: float, util: float, reason: str) -> Decision:
    return Decision(desired, reason, True, ScaleState(desired, now), util)
