"""The autoscaling decision, stepped through with explicit times (samples every 100 ms)."""

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


# -- scale up ---------------------------------------------------------------------------------


@pytest.mark.parametrize("burst_at", [5.0, 5.3, 5.6])
def test_burst_goes_straight_to_the_need_within_one_interval(burst_at):
    run = simulate(policy(), step_load((burst_at, 0.3), (1e9, 6.0)), 10.0, desired=1)
    assert run.changes == [(6.0, 9)]  # ceil(6 / 0.7) = 9, not one replica at a time


def test_burst_is_clamped_to_max_instances():
    run = simulate(policy(max_instances=5), step_load((5.0, 0.3), (1e9, 6.0)), 10.0, desired=1)
    assert run.changes == [(6.0, 5)]
    assert "at max_instances" in run.decisions[-1][1].reason


def test_burst_at_the_very_end_of_an_interval_is_fully_served_one_interval_later():
    # Only two burst samples before the decision at 6.0: too short to count as sustained, so the
    # interval mean (8 x 0.3 + 2 x 6) / 10 = 1.44 sizes it; the next decision sees all of it.
    run = simulate(policy(), step_load((5.8, 0.3), (1e9, 6.0)), 10.0, desired=1)
    assert run.changes == [(6.0, 3), (7.0, 9)]


def test_one_off_spike_between_two_decisions_is_seen_by_the_mean():
    # 1 replica at 0.2; a single 100 ms sample with 10 requests (1 busy + 9 queued) at 3.5.
    load = step_load((3.4, 0.2), (3.5, 10.0), (1e9, 0.2))
    run = simulate(policy(), load, 5.0, desired=1)
    assert run.changes == [(4.0, 2)]  # mean over (3, 4] = (9 x 0.2 + 10) / 10 = 1.18 > 0.7
    decision = run.decisions[3][1]
    assert decision.reason.startswith("utilization 1.18 > 0.70 over 1s")
    assert decision.reason.endswith("1 -> 2")


def test_scale_up_reason_names_the_numbers():
    window = UtilizationWindow(61.0)
    for i in range(1, 11):
        window.add(Sample(i / 10, 2.0, 0, 2))
    window.add(Sample(1.1, 2.0, 3, 2))
    decision = decide(policy(max_instances=10), window, initial_state(2, 0.0), 1.1)
    # mean over (0.1, 1.1] = (9 x 2 + 5) / 10 = 2.3 -> utilization 1.15 -> ceil(2.3 / 0.7) = 4
    assert decision.desired == 4
    assert decision.reason == (
        "utilization 1.15 > 0.70 over 1s (demand 2.30, 3 queued, 2 replicas): 2 -> 4"
    )


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


# -- scale down -------------------------------------------------------------------------------


def test_load_drop_holds_for_the_stable_window_then_window_need_then_min():
    load = step_load((30.0, 6.0), (100.0, 1.0), (1e9, 0.0))
    run = simulate(policy(), load, 200.0, desired=9)
    # Under target from 30 s: held until the window (30, 90] holds only the lower load, whose
    # need is ceil(1 / 0.7) = 2. Idle from 100 s: min_instances once (100, 160] saw no demand.
    assert run.changes == [(90.0, 2), (160.0, 1)]
    assert all(run.desired_at(t) == 9 for t in range(30, 90))
    held_reason = run.decisions[50][1].reason
    assert "holding 9" in held_reason
    down_reason = dict(run.decisions)[90.0].reason
    assert down_reason == "utilization below 0.70 for 60s (the window needs 2): 9 -> 2"


def test_scale_to_zero_only_after_a_window_without_any_demand():
    # A trickle: one request present for 100 ms every 30 s keeps a replica.
    def trickle(t: float) -> float:
        return 1.0 if t <= 120 and round(t * TICKS_PER_S) % 300 == 0 else 0.0

    run = simulate(policy(min_instances=0), trickle, 300.0, desired=1)
    assert run.changes == [(180.0, 0)]  # last request at 120 s, window (120, 180] empty


def test_scale_down_timing_does_not_depend_on_how_often_decide_is_called():
    load = step_load((30.0, 6.0), (1e9, 1.0))
    every_interval = simulate(policy(), load, 120.0, desired=9)
    every_sample = simulate(policy(), load, 120.0, desired=9, decide_every_ticks=1)
    assert every_interval.changes == every_sample.changes == [(90.0, 2)]


def test_a_new_autoscaler_observes_a_whole_window_before_scaling_down():
    run = simulate(policy(), step_load((1e9, 0.0)), 70.0, desired=5)
    assert run.changes == [(60.0, 1)]


def test_sampler_stall_blocks_scale_down_until_the_window_is_observed_again():
    window = UtilizationWindow(61.0)
    state = initial_state(5, 0.0)
    for i in range(1000, 1011):  # samples only from 100 s: nothing seen in (40, 100)
        window.add(Sample(i / 10, 0.0, 0, 5))
    assert not decide(policy(), window, state, 101.0).changed


def test_no_samples_holds():
    decision = decide(policy(), UtilizationWindow(61.0), initial_state(3, 0.0), 100.0)
    assert (decision.desired, decision.changed) == (3, False)
    assert decision.reason == "no samples in the last 1s"


# -- zero -------------------------------------------------------------------------------------


def test_scale_from_zero_on_one_queued_request_at_the_next_decision():
    window = UtilizationWindow(61.0)
    for i in range(1, 100):
        window.add(Sample(i / 10, 0.0, 0, 0))
    window.add(Sample(10.0, 0.0, 1, 0))  # a request arrives just before the decision
    decision = decide(policy(min_instances=0), window, initial_state(0, 0.0), 10.0)
    assert (decision.desired, decision.changed) == (1, True)
    assert decision.reason.startswith("utilization inf > 0.70")


def test_at_zero_with_no_demand_stays_at_zero():
    run = simulate(policy(min_instances=0), step_load((1e9, 0.0)), 100.0, desired=0)
    assert run.changes == []


def test_recovery_after_idle():
    load = step_load((20.0, 3.0), (400.0, 0.0), (1e9, 3.0))
    run = simulate(policy(min_instances=0), load, 600.0, desired=0)
    # ceil(3 / 0.7) = 5 at once; zero after a quiet window; 5 again one decision after load
    # returns, queued requests against zero replicas forcing it.
    assert run.changes == [(1.0, 5), (80.0, 0), (401.0, 5)]


def test_scale_from_zero_with_concurrency_above_one():
    window = UtilizationWindow(61.0)
    window.add(Sample.observe(1.0, inflight=0, queued=1, replicas=0, concurrency=4))
    decision = decide(policy(min_instances=0), window, initial_state(0, 0.0), 1.0)
    assert decision.desired == 1  # 1 request = 0.25 replica-equivalents, still needs one


# -- bounds -----------------------------------------------------------------------------------


def test_min_instances_is_kept_without_load():
    run = simulate(policy(min_instances=2), step_load((1e9, 0.0)), 300.0, desired=2)
    assert run.changes == []


def test_count_outside_bounds_is_clamped_at_once():
    window = UtilizationWindow(61.0)
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
    window = UtilizationWindow(61.0)
    for i in range(1, 21):
        window.add(Sample(i / 10, 1.0, 5, 1, ready=1))
    decision = decide(policy(), window, ScaleState(9, 1.0), 2.0)
    assert (decision.desired, decision.changed) == (9, False)


# -- purity and policy ------------------------------------------------------------------------


def test_decide_is_pure():
    window = UtilizationWindow(61.0)
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
    ],
)
def test_policy_rejects_bad_settings(settings):
    with pytest.raises(ValueError):
        ScalePolicy(**settings)


def test_stable_window_rounds_the_delay_up_to_whole_intervals():
    assert policy(polling_interval_s=10.0, scale_down_delay_s=65.0).stable_window_s == 70.0
    assert policy().horizon_s == 61.0


def test_hold_reasons_say_why():
    window = UtilizationWindow(61.0)
    for i in range(1, 11):
        window.add(Sample(i / 10, 0.0, 0, 5))
    early = decide(policy(), window, initial_state(5, 0.0), 1.0)
    assert early.reason == (
        "utilization 0.00 <= 0.70: holding 5 (stable window: no scale-down before 60.0s)"
    )
    stalled = decide(policy(), window, initial_state(5, -100.0), 1.0)
    assert stalled.reason.endswith("(stable window: waiting for a full window of samples)")
