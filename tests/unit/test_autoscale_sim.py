"""The autoscaling benchmark's simulator on tiny synthetic traces, worked out by hand."""

import math
import random

import pytest

from bench import autoscale_sim as sim
from bench.autoscale import replica_seconds_from_polls
from inferfront.scaling import ScalePolicy


def requests(*spans: tuple[float, float]) -> list[sim.TraceRequest]:
    """(arrival, service seconds) pairs as trace requests."""
    return [sim.TraceRequest(at, 0, 0, service) for at, service in spans]


def fixed_policy(replicas: int) -> ScalePolicy:
    return ScalePolicy(min_instances=replicas, max_instances=replicas)


def test_service_model_is_linear_in_tokens():
    model = sim.ServiceModel(base_ms=10, prefill_ms_per_token=0.5, decode_ms_per_token=20)
    assert model.service_s(1000, 10) == pytest.approx((10 + 500 + 200) / 1000)
    assert "0.5 x prompt_tokens" in model.describe()


def test_fixed_fleet_serves_in_arrival_order_on_the_earliest_free_replica():
    outcome = sim.simulate_fixed(requests((0, 1), (0, 1), (0, 1), (0.5, 1)), replicas=2)
    assert outcome.wait_s == [0, 0, 1, 0.5]
    assert outcome.latency_s == [1, 1, 2, 1.5]


def test_smallest_fixed_fleet_allows_the_given_fraction_to_wait():
    four_at_once = requests((0, 1), (0, 1), (0, 1), (0, 1))
    assert sim.smallest_fixed_fleet(four_at_once, 10, max_fraction=0.0).replicas == 4
    fleet = sim.smallest_fixed_fleet(four_at_once, 10, max_fraction=0.25)
    assert fleet.replicas == 3  # one request of four waits a second
    assert fleet.stats.replica_seconds == 30
    assert fleet.stats.waited_over == 1


def test_hindsight_bound_counts_requests_carried_into_the_next_window():
    trace = requests((0, 2), (1, 11), (15, 1))
    bound = sim.hindsight_bound(trace, span_s=20, window_s=10)
    assert bound.no_wait == [2, 1]  # two overlap in the first; the long one spills over
    assert bound.offered == [2, 1]  # ceil(13 s of work / 10 s), ceil(1 / 10)
    assert bound.replica_seconds == 30
    assert sim.peak_concurrency(trace) == 2


def test_a_burst_waits_for_the_cold_start_of_the_replicas_it_asked_for():
    policy = ScalePolicy(min_instances=1, max_instances=5, polling_interval_s=1.0)
    result = sim.simulate_autoscaled(
        requests((0, 10), (0, 10), (0, 10)),
        sim.SimSettings(policy, cold_start_s=2.0, initial_replicas=1, span_s=10),
    )
    # The sample at 0 s shows 2 queued, so the autoscaler decides at once (not at the 1 s
    # poll): demand 3 (1 busy + 2 queued) needs ceil(3 / 0.7) = 5 replicas; the 4 new ones
    # are ready at 2 s and take the two waiting requests.
    assert result.outcome.wait_s == [0, 2, 2]
    assert result.outcome.latency_s == [10, 12, 12]
    assert result.outcome.status == [200, 200, 200]
    assert result.peak_replicas == 5
    assert result.stats.replica_seconds == pytest.approx(5 * 10)
    assert result.stats.waited_over == 2


def test_from_zero_a_request_wakes_the_autoscaler_and_no_queue_timer_runs():
    policy = ScalePolicy(min_instances=0, max_instances=3)
    result = sim.simulate_autoscaled(
        requests((0.05, 1)),
        sim.SimSettings(policy, cold_start_s=1.0, initial_replicas=0, max_queue_wait_s=0.5),
    )
    # Woken at 0.05 s (between two samples), one replica is launched and ready at 1.05 s; the
    # 500 ms queue limit does not apply while nothing is ready.
    assert result.outcome.status == [200]
    assert result.outcome.wait_s == pytest.approx([1.0])


def test_scaling_down_waits_for_the_delay_and_for_busy_replicas_to_finish():
    policy = ScalePolicy(min_instances=1, max_instances=5, scale_down_delay_s=5.0)
    result = sim.simulate_autoscaled(
        requests((0, 10), (0, 10), (0, 10)),
        sim.SimSettings(policy, cold_start_s=2.0, initial_replicas=1, span_s=60),
    )
    counts = {t: existing for t, existing, _, _ in result.timeline}
    assert counts[10.0] == 5  # still busy: no scale-down while demand is 3
    assert counts[50.0] == 1  # back to min_instances once the window has been idle
    assert result.stats.replica_seconds < 5 * 60
    assert result.scale_changes >= 2


def test_waiters_are_served_first_in_first_out():
    result = sim.simulate_autoscaled(
        requests((0, 1), (0.1, 1), (0.2, 1), (0.3, 1)),
        sim.SimSettings(fixed_policy(1), initial_replicas=1, span_s=10),
    )
    assert result.outcome.latency_s == pytest.approx([1, 1.9, 2.8, 3.7])


def test_queue_wait_limit_answers_503_and_queue_bound_429():
    trace = requests((0, 2), (0, 2), (0, 2))
    result = sim.simulate_autoscaled(
        trace,
        sim.SimSettings(fixed_policy(1), initial_replicas=1, max_queue_wait_s=0.5, max_queued=1),
    )
    assert result.outcome.status == [200, 503, 429]
    assert result.outcome.wait_s == [0, 0.5, 0]
    assert result.stats.rejected == {"429": 1, "503": 1, "504": 0}
    assert result.stats.waited_over_pct == pytest.approx(200 / 3)


def test_request_timeout_answers_504_and_frees_the_replica():
    result = sim.simulate_autoscaled(
        requests((0, 2), (1.5, 1)),
        sim.SimSettings(fixed_policy(1), initial_replicas=1, request_timeout_s=1.0),
    )
    assert result.outcome.status == [504, 200]
    assert result.outcome.wait_s[1] == 0  # the slot came back at the deadline (1 s)


def test_replays_are_deterministic():
    rng = random.Random(7)
    trace = sorted(
        (sim.TraceRequest(rng.uniform(0, 120), 0, 0, rng.uniform(0.1, 5)) for _ in range(300)),
        key=lambda r: r.at_s,
    )
    settings = sim.SimSettings(ScalePolicy(max_instances=50), initial_replicas=3)
    first = sim.simulate_autoscaled(trace, settings)
    second = sim.simulate_autoscaled(trace, settings)
    assert first.stats == second.stats
    assert first.stats.served == 300


def test_warp_bunches_arrivals_where_the_multiplier_is_high():
    trace = requests(*((float(t), 1.0) for t in range(20)))
    warped = sim.warp_trace(trace, [3, 1], span_s=20)  # normalised to 1.5x then 0.5x
    times = [r.at_s for r in warped]
    assert times[6] == pytest.approx(4)  # the first 15 s of arrivals fit in the first 10 s
    assert times[15] == pytest.approx(10)
    assert times[17] == pytest.approx(14)
    assert times == sorted(times) and len(warped) == 20


def test_onoff_multipliers_keep_the_mean_rate():
    shape = sim.onoff_multipliers(3600, period_s=600, on_s=120, on_rate=3.0)
    assert sum(shape) / len(shape) == pytest.approx(1.0)
    assert max(shape) == 3.0 and min(shape) == pytest.approx(0.5)


def test_rounded_timestamps_are_spread_within_their_step():
    arrivals = [(0.0, 1, 1), (0.0, 2, 2), (3.0, 3, 3), (3.0, 4, 4)]
    spread = sim.spread_rounded_timestamps(arrivals, random.Random(0))
    assert all(0 <= at < 3 for at, p, _ in spread if p <= 2)
    assert all(3 <= at < 6 for at, p, _ in spread if p > 2)


def test_slice_retimes_to_zero():
    trace = requests((5, 1), (10, 1), (20, 1))
    assert [r.at_s for r in sim.slice_trace(trace, 8, 10)] == [2]
    assert sim.offered_load(trace, 0, 20) == pytest.approx(0.1)
    assert sim.trace_span_s(trace) == 30


def test_percentile_interpolates_between_ranks():
    assert sim.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert math.isnan(sim.percentile([], 0.5))


def test_live_replica_seconds_hold_each_reading_until_the_next():
    polls = [{"t": -0.1, "replicas": 2}, {"t": 1.0, "replicas": 4}, {"t": 2.5, "replicas": 1}]
    assert replica_seconds_from_polls(polls, end_s=3.0) == pytest.approx(2 * 1 + 4 * 1.5 + 0.5)
