"""The autoscaling decision, stepped through with explicit times (samples every 100 ms).

One test (or group) per rule of policy.py: scale up from zero, on a queue, near full and on the
stable window's mean; scale down after a stable window, to its need (mean and busy seconds),
never below the recent mean; bounds, counting and purity."""

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from inferfront.scaling import (
    Decision,
    Sample,
    ScalePolicy,
    ScaleState,
    UtilizationWindow,
    ceil_replicas,
    decide,
    initial_state,
)

TICKS_PER_S = 10  # one sample every 100 ms

Load = Callable[[float], float]  # time -> requests present (in flight or queued)


@dataclass
class Run:
    """What a simulated deployment went through: every decision and the changes among them."""

    decisions: list[tuple[float, Decision]] = field(default_factory=list)

    @property
    def changes(self) -> list[tuple[float, int]]:
        return [(t, d.desired) for t, d in self.decisions if d.changed]

    def desired_at(self, t: float) -> int:
        return [d.desired for at, d in self.decisions if at <= t][-1]


def simulate(
    policy: ScalePolicy,
    load: Load,
    until_s: float,
    *,
    desired: int,
    concurrency: int = 1,
    boot_s: float = 0.0,
    decide_every_ticks: int | None = None,
) -> Run:
    """Sample every 100 ms and decide every polling interval (or every `decide_every_ticks`).

    The actuator is instant: replicas (starting included) follow the desired count at once and
    become ready `boot_s` later. Requests beyond the ready replicas' slots wait in the queue.
    """
    window = UtilizationWindow(policy.horizon_s)
    state = initial_state(desired, 0.0)
    every = decide_every_ticks or round(policy.polling_interval_s * TICKS_PER_S)
    started: list[float] = [0.0] * desired  # when each replica was asked for
    run = Run()
    for i in range(1, round(until_s * TICKS_PER_S) + 1):
        now = i / TICKS_PER_S
        ready = sum(1 for at in started if now - at >= boot_s)
        offered = load(now)
        inflight = min(offered, ready * concurrency)
        queued = round(offered - inflight)
        window.add(Sample(now, inflight / concurrency, queued, len(started), ready, concurrency))
        if i % every:
            continue
        decision = decide(policy, window, state, now)
        run.decisions.append((now, decision))
        state = decision.state
        if decision.desired > len(started):
            started += [now] * (decision.desired - len(started))
        else:
            del started[decision.desired :]
    return run


def policy(**overrides) -> ScalePolicy:
    settings = dict(min_instances=1, max_instances=20, target=0.7, polling_interval_s=1.0)
    return ScalePolicy(**(settings | overrides))


def step_load(*levels: tuple[float, float]) -> Load:
    """Piecewise constant load: ((until_s, requests), ...); the last level lasts forever."""

    def load(t: float) -> float:
        for until, requests in levels:
            if t <= until + 1e-9:
                return requests
        return levels[-1][1]

    return load


def filled(
    policy: ScalePolicy, demand: Load, until_s: float, *, replicas: int, queued: int = 0
) -> UtilizationWindow:
    """A window sampled every 100 ms up to `until_s` with `demand(t)` busy replicas."""
    window = policy.new_window()
    for i in range(1, round(until_s * TICKS_PER_S) + 1):
        window.add(Sample(i / TICKS_PER_S, demand(i / TICKS_PER_S), queued, replicas))
    return window


# -- scale up: queue ---------------------------------------------------------------------------


@pytest.mark.parametrize("burst_at", [5.0, 5.3, 5.6])
def test_burst_held_for_the_confirm_time_goes_straight_to_the_need(burst_at):
    run = simulate(policy(), step_load((burst_at, 0.3), (1e9, 6.0)), 10.0, desired=1)
    assert run.changes == [(6.0, 9)]  # ceil(6 / 0.7) = 9, not one replica at a time
    assert run.decisions[5][1].reason.startswith("queuing: utilization 6.00 > 1.00 held 0.3s")


def test_burst_not_yet_held_for_the_confirm_time_waits_for_the_next_decision():
    # Two burst samples at the decision at 6.0: the lowest of the last 0.3 s is still 0.3.
    run = simulate(policy(), step_load((5.8, 0.3), (1e9, 6.0)), 10.0, desired=1)
    assert run.changes == [(7.0, 9)]


def test_deciding_at_every_sample_reacts_once_the_burst_has_held():
    # What the autoscaler does while requests are queued: decide at every sample.
    run = simulate(policy(), step_load((5.0, 0.3), (1e9, 6.0)), 10.0, desired=1,
                   decide_every_ticks=1)  # fmt: skip
    assert run.changes == [(5.3, 9)]  # 5.1, 5.2, 5.3: held for 0.3 s


def test_burst_is_clamped_to_max_instances():
    run = simulate(policy(max_instances=5), step_load((5.0, 0.3), (1e9, 6.0)), 10.0, desired=1)
    assert run.changes == [(6.0, 5)]
    assert "at max_instances" in run.decisions[-1][1].reason


def test_a_single_noisy_sample_does_not_scale_up():
    # 1 replica at 0.2; one 100 ms sample with 10 requests (1 busy + 9 queued) at 3.5: the
    # lowest demand of the last 0.3 s never exceeds 0.2, and the stable mean stays far below.
    load = step_load((3.4, 0.2), (3.5, 10.0), (1e9, 0.2))
    assert simulate(policy(), load, 10.0, desired=1).changes == []
    assert simulate(policy(), load, 10.0, desired=1, decide_every_ticks=1).changes == []


def test_scale_up_reason_names_the_numbers():
    window = UtilizationWindow(121.0)
    for i in range(1, 11):
        window.add(Sample(i / 10, 2.0, 0, 2))
    for i in range(11, 14):
        window.add(Sample(i / 10, 2.0, 3, 2))  # 2 busy + 3 queued, held 0.3 s
    decision = decide(policy(max_instances=10), window, initial_state(2, 0.0), 1.3)
    assert decision.desired == 8  # ceil(5 / 0.7)
    assert decision.reason == (
        "queuing: utilization 2.50 > 1.00 held 0.3s (demand 5.00) (3 queued, 2 replicas): 2 -> 8"
    )


# -- scale up: near full, stable window, zero ----------------------------------------------------


def test_near_full_adds_just_enough_to_get_back_under_the_line():
    # 20 replicas sized for 14 (14 / 0.7); demand jumps to 18: utilization 0.9 > 0.85, but
    # nothing queues yet.
    run = simulate(policy(max_instances=40), step_load((100.0, 14.0), (1e9, 18.0)), 102.0,
                   desired=20)  # fmt: skip
    assert run.changes == [(101.0, 22)]  # ceil(18 / 0.85) = 22, not need(18) = 26
    reason = dict(run.decisions)[101.0].reason
    assert reason.startswith("near full: utilization 0.90 > 0.85 held 0.3s (demand 18.00)")


def test_near_full_line_is_never_below_the_target():
    assert policy(target=0.9).near_full == 0.9
    window = filled(policy(), lambda t: 9.3, 1.0, replicas=10)
    decision = decide(policy(target=0.9), window, initial_state(10, 0.0), 1.0)
    assert decision.desired == 11  # ceil(9.3 / 0.9): sized at the target, not at 0.85


def test_slow_rise_follows_the_stable_window_mean():
    # 10 replicas at 6.5 for a minute, then 7.5 (utilization 0.75: over the target, never near
    # full): up once the mean of the last 60 s exceeds 0.7 x 10 = 7.
    run = simulate(policy(), step_load((60.0, 6.5), (1e9, 7.5)), 120.0, desired=10)
    assert run.changes == [(91.0, 11)]  # (29 x 6.5 + 31 x 7.5) / 60 = 7.02 -> ceil(10.02)
    assert "over the stable window (mean demand 7.02 over 60s)" in dict(run.decisions)[91.0].reason


def test_scale_from_zero_on_one_queued_request_at_once():
    window = UtilizationWindow(121.0)
    for i in range(1, 100):
        window.add(Sample(i / 10, 0.0, 0, 0))
    window.add(Sample(10.0, 0.0, 1, 0))  # a request arrives just before the decision
    decision = decide(policy(min_instances=0), window, initial_state(0, 0.0), 10.0)
    assert (decision.desired, decision.changed) == (2, True)  # ceil(1 / 0.7)
    assert decision.reason.startswith("utilization inf: demand 1.00 at zero replicas")


def test_scale_from_zero_with_concurrency_above_one():
    window = UtilizationWindow(121.0)
    window.add(Sample.observe(1.0, inflight=0, queued=1, replicas=0, concurrency=4))
    decision = decide(policy(min_instances=0), window, initial_state(0, 0.0), 1.0)
    assert decision.desired == 1  # 1 request = 0.25 replica-equivalents, still needs one


def test_at_zero_with_no_demand_stays_at_zero():
    run = simulate(policy(min_instances=0), step_load((1e9, 0.0)), 100.0, desired=0)
    assert run.changes == []


# -- steady load ------------------------------------------------------------------------------


def test_steady_load_never_moves_the_count():
    run = simulate(policy(), step_load((1e9, 2.0)), 300.0, desired=3)
    assert run.changes == []
    assert all(d.utilization == pytest.approx(2 / 3) for _, d in run.decisions)


def test_noisy_steady_load_settles_and_never_oscillates():
    pattern = [1, 3, 2, 2, 1, 3, 2, 3, 1, 2]  # mean 2, momentary peaks of 3

    def load(t: float) -> float:
        return pattern[round(t * TICKS_PER_S) % len(pattern)]

    run = simulate(policy(), load, 400.0, desired=1)
    assert run.changes == [(1.0, 3)]  # ceil(2 / 0.7) = 3, reached once and held for 400 s


def test_random_steady_load_holds_one_count_for_several_windows():
    rng = random.Random(7)
    noise = [rng.uniform(15.0, 25.0) for _ in range(6000)]  # mean 20, a new value every 100 ms

    def load(t: float) -> float:
        return noise[round(t * TICKS_PER_S) % len(noise)]

    run = simulate(policy(max_instances=64), load, 600.0, desired=10)
    # Up at once from 10 (requests queue), then with the stable-window mean as it fills in,
    # to ceil(20 / 0.7) = 29 within seconds; then not a single change for nine windows.
    assert [count for _, count in run.changes][-1] == 29
    assert all(t <= 10.0 for t, _ in run.changes)


# -- scale down -------------------------------------------------------------------------------


def test_load_drop_holds_for_the_stable_window_then_window_need_then_min():
    load = step_load((90.0, 6.0), (200.0, 1.0), (1e9, 0.0))
    run = simulate(policy(), load, 400.0, desired=9)
    # Under target from 90 s. The stable window ending at interval e needs ceil(mean / 0.7),
    # under 9 once it holds 5 quiet seconds (e >= 94); every window ending within the last
    # 60 s must: the first decision after 94 + 60. Then down to the need of (94, 154]: 2.
    # Idle from 200 s: windows need less than 2 once their mean is at most 0.7 (e >= 217).
    assert run.changes == [(154.0, 2), (277.0, 1)]
    assert all(run.desired_at(t) == 9 for t in range(90, 154))
    assert "holding 9 (the stable window ending" in dict(run.decisions)[120.0].reason
    down_reason = dict(run.decisions)[154.0].reason
    assert down_reason == "utilization below 0.70 for 60s (the window needs 2): 9 -> 2"


def test_scale_down_keeps_the_windows_busy_seconds_under_the_near_full_line():
    # Demand 8 for one second in five, 0 otherwise: mean 1.6 (need 3), but 20 % of the seconds
    # are at 8, so the 90th percentile is 8 and the window needs ceil(8 / 0.85) = 10.
    def spiky(t: float) -> float:
        second = (round(t * TICKS_PER_S) - 1) // TICKS_PER_S
        return 8.0 if second % 5 == 0 else 0.0

    run = simulate(policy(), spiky, 300.0, desired=20)
    assert run.changes == [(60.0, 10)]


def test_scale_down_never_goes_below_the_recent_mean():
    # 20 replicas left from a burst long ago; 2 busy for a minute, then 10 for the last 5 s:
    # the window needs 4 (mean 2.67), but the last 10 s average 6, which needs 9.
    window = filled(policy(), step_load((195.0, 2.0), (1e9, 10.0)), 200.0, replicas=20)
    decision = decide(policy(), window, ScaleState(20, 0.0), 200.0)
    assert (decision.desired, decision.changed) == (9, True)


def test_scale_to_zero_only_after_windows_without_any_demand():
    # A trickle: one request present for 100 ms every 30 s keeps a replica.
    def trickle(t: float) -> float:
        return 1.0 if t <= 120 and round(t * TICKS_PER_S) % 300 == 0 else 0.0

    run = simulate(policy(min_instances=0), trickle, 300.0, desired=1)
    # Last request at 120 s: from one replica, every window ending within the last 60 s must
    # need none, i.e. be empty: windows from (120, 180] on, so the decision at 239.
    assert run.changes == [(239.0, 0)]


def test_recovery_after_idle():
    load = step_load((20.0, 3.0), (400.0, 0.0), (1e9, 3.0))
    run = simulate(policy(min_instances=0), load, 600.0, desired=0)
    # ceil(3 / 0.7) = 5 at once; zero once every window ending in the last 60 s needed fewer
    # than 5 (from the window ending at 22 s on) and the current one is empty; 5 again at the
    # first decision after the load returns.
    assert run.changes == [(1.0, 5), (81.0, 0), (401.0, 5)]


def test_scale_down_timing_does_not_depend_on_how_often_decide_is_called():
    load = step_load((90.0, 6.0), (1e9, 1.0))
    every_interval = simulate(policy(), load, 200.0, desired=9)
    every_sample = simulate(policy(), load, 200.0, desired=9, decide_every_ticks=1)
    assert every_interval.changes == every_sample.changes == [(154.0, 2)]


def test_a_new_autoscaler_observes_a_whole_window_before_scaling_down():
    run = simulate(policy(), step_load((1e9, 0.0)), 70.0, desired=5)
    assert run.changes == [(60.0, 1)]


def test_sampler_stall_blocks_scale_down_until_the_window_is_observed_again():
    window = policy().new_window()
    state = initial_state(5, 0.0)
    for i in range(1000, 1011):  # samples only from 100 s: nothing seen in (40, 100)
        window.add(Sample(i / 10, 0.0, 0, 5))
    decision = decide(policy(), window, state, 101.0)
    assert not decision.changed
    assert decision.reason.endswith("(stable window: waiting for a full window of samples)")


def test_no_samples_holds():
    decision = decide(policy(), policy().new_window(), initial_state(3, 0.0), 100.0)
    assert (decision.desired, decision.changed) == (3, False)
    assert decision.reason == "no samples in the last 1s"


def test_window_need_is_the_mean_at_target_or_the_busy_seconds_near_full():
    p = policy(max_instances=100)
    assert p.window_need([2.0] * 60) == 3  # ceil(2 / 0.7); busy 2 -> ceil(2 / 0.85) = 3
    assert p.window_need([0.0] * 50 + [8.0] * 10) == 10  # p90 = 8: ceil(8 / 0.85)
    assert p.window_need([0.0] * 55 + [8.0] * 5) == 1  # 5 of 60 busy: mean 0.67 needs 1
    assert p.window_need([0.0, 0.0, 0.0, 8.0]) == 10  # few intervals: the busiest counts
    assert p.window_need([]) == 1  # min_instances


# -- bounds -----------------------------------------------------------------------------------


def test_min_instances_is_kept_without_load():
    run = simulate(policy(min_instances=2), step_load((1e9, 0.0)), 300.0, desired=2)
    assert run.changes == []


def test_count_outside_bounds_is_clamped_at_once():
    window = UtilizationWindow(121.0)
    window.add(Sample(1.0, 1.0, 0, 10))
    decision = decide(policy(max_instances=4), window, initial_state(10, 0.0), 1.0)
    assert (decision.desired, decision.changed) == (4, True)
    assert decision.reason == "clamped to [1, 4]: 10 -> 4"
    decision = decide(policy(min_instances=3), window, initial_state(1, 0.0), 1.0)
    assert decision.desired == 3


# -- counting ---------------------------------------------------------------------------------


def test_concurrency_above_one_counts_busy_equivalents():
    # C = 4, 12 requests offered to 2 replicas: 8 in flight (2 busy-equivalents) + 4 queued
    # (1 replica-equivalent) = 3 -> ceil(3 / 0.7) = 5, i.e. 20 slots for 12 requests.
    run = simulate(policy(), step_load((1e9, 12.0)), 3.0, desired=2, concurrency=4)
    assert run.changes == [(1.0, 5)]
    assert run.decisions[0][1].utilization == pytest.approx(1.5)


def test_starting_replicas_are_not_double_counted():
    # Replicas take 20 s to boot; meanwhile the burst waits in the queue. The count asked for
    # stays at ceil(6 / 0.7) = 9: queued requests waiting for booting replicas ask no more.
    run = simulate(policy(), step_load((5.0, 0.3), (1e9, 6.0)), 40.0, desired=1, boot_s=20.0)
    assert run.changes == [(6.0, 9)]


def test_lagging_actuator_does_not_inflate_the_request():
    # Desired is 9 but the replicas are not created yet (still 1): same demand, same answer.
    window = UtilizationWindow(121.0)
    for i in range(1, 21):
        window.add(Sample(i / 10, 1.0, 5, 1, ready=1))
    decision = decide(policy(), window, ScaleState(9, 1.0), 2.0)
    assert (decision.desired, decision.changed) == (9, False)


# -- purity and policy ------------------------------------------------------------------------


def test_decide_is_pure():
    window = UtilizationWindow(121.0)
    for i in range(1, 11):
        window.add(Sample(i / 10, 3.0, 2, 2))
    state = initial_state(2, 0.0)
    first = decide(policy(), window, state, 1.0)
    assert decide(policy(), window, state, 1.0) == first
    assert len(window) == 10 and state == initial_state(2, 0.0)


def test_ceil_replicas_forgives_float_noise():
    assert 2.1 / 0.7 > 3
    assert ceil_replicas(2.1 / 0.7) == 3
    assert ceil_replicas(3.01) == 4


@pytest.mark.parametrize(
    "settings",
    [
        dict(min_instances=-1),
        dict(min_instances=5, max_instances=4),
        dict(max_instances=0),
        dict(target=0.0),
        dict(target=1.5),
        dict(polling_interval_s=0.0),
        dict(scale_down_delay_s=-1.0),
        dict(burst_confirm_s=0.0),
        dict(recent_window_s=0.0),
        dict(headroom=0.0),
        dict(headroom=1.2),
        dict(busy_quantile=0.0),
    ],
)
def test_policy_rejects_bad_settings(settings):
    with pytest.raises(ValueError):
        ScalePolicy(**settings)


def test_stable_window_rounds_the_delay_up_to_whole_intervals():
    assert policy(polling_interval_s=10.0, scale_down_delay_s=65.0).stable_window_s == 70.0
    assert policy().horizon_s == 121.0  # every stable window ending within the last one


def test_hold_reasons_say_why():
    window = filled(policy(), lambda t: 0.0, 1.0, replicas=5)
    early = decide(policy(), window, initial_state(5, 0.0), 1.0)
    assert early.reason == (
        "utilization 0.00 <= 0.70: holding 5 (stable window: no scale-down before 60.0s)"
    )
    stalled = decide(policy(), window, initial_state(5, -100.0), 1.0)
    assert stalled.reason.endswith("(stable window: waiting for a full window of samples)")
    steady = filled(policy(), lambda t: 2.0, 100.0, replicas=3)
    held = decide(policy(), steady, initial_state(3, 0.0), 100.0)
    assert held.reason == "utilization 0.67 <= 0.70: holding 3 (the stable window needs 3)"
