"""UtilizationWindow and Sample: windows, units, bounded memory. Explicit times, no clock."""

import math

import pytest

from inferfront.scaling.sampler import Sample, UtilizationWindow, nearest_rank, utilization


def tick(i: int) -> float:
    """The i-th 100 ms sample time, as the exact float a driver would compute from a counter."""
    return i / 10


def filled(demands: list[float], replicas: int = 1, horizon_s: float = 100.0) -> UtilizationWindow:
    """Samples at 0.1, 0.2, ... with the given demand (as busy replicas)."""
    window = UtilizationWindow(horizon_s)
    for i, demand in enumerate(demands, start=1):
        window.add(Sample(tick(i), demand, 0, replicas))
    return window


def test_demand_counts_queue_in_replicas_and_busy_as_inflight_over_concurrency():
    sample = Sample.observe(1.0, inflight=8, queued=4, replicas=2, concurrency=4)
    assert sample.busy == 2.0
    assert sample.demand == 3.0
    assert sample.utilization == 1.5


def test_every_slot_taken_is_utilization_one():
    assert Sample.observe(0.0, inflight=12, queued=0, replicas=3, concurrency=4).utilization == 1.0
    assert Sample.observe(0.0, inflight=3, queued=0, replicas=3).utilization == 1.0


@pytest.mark.parametrize(
    ("demand", "replicas", "expected"),
    [(0.0, 0, 0.0), (1.0, 0, math.inf), (0.25, 0, math.inf), (3.0, 4, 0.75), (0.0, 2, 0.0)],
)
def test_utilization(demand, replicas, expected):
    assert utilization(demand, replicas) == expected


def test_sample_rejects_nonsense():
    with pytest.raises(ValueError):
        Sample(0.0, -1.0, 0, 1)
    with pytest.raises(ValueError):
        Sample(0.0, 0.0, 0, 1, concurrency=0)


def test_mean_peak_and_sustained_over_half_open_window():
    window = filled([1.0, 2.0, 3.0, 10.0, 4.0])  # at 0.1 .. 0.5
    # (0.2, 0.5] holds the samples at 0.3, 0.4, 0.5
    assert window.mean_demand(0.5, 0.3) == pytest.approx((3 + 10 + 4) / 3)
    assert window.peak_demand(0.5, 0.3) == 10.0
    assert window.sustained_demand(0.5, 0.3) == 3.0
    assert [s.at for s in window.samples(0.5, 0.3)] == [0.3, 0.4, 0.5]


def test_empty_window_answers_none():
    window = filled([1.0])
    assert window.mean_demand(5.0, 1.0) is None
    assert window.peak_demand(5.0, 1.0) is None
    assert window.sustained_demand(5.0, 1.0) is None
    assert window.average(5.0, 1.0) == 0.0
    assert UtilizationWindow(1.0).latest is None


def test_average_is_utilization_against_latest_replicas():
    window = filled([2.0] * 10, replicas=4)
    assert window.average(1.0, 1.0) == 0.5


def test_samples_after_now_are_ignored():
    window = filled([1.0, 1.0, 9.0])
    assert window.mean_demand(0.2, 1.0) == 1.0


def test_interval_means_newest_first_with_none_for_empty_intervals():
    window = UtilizationWindow(100.0)
    for i in range(1, 31):  # 0.1 .. 3.0
        at = tick(i)
        if 1.0 < at <= 2.0:
            continue  # a sampler stall: the middle second has no samples
        window.add(Sample(at, 5.0 if at > 2.0 else 1.0, 0, 1))
    assert window.interval_means(3.0, 4, 1.0) == [5.0, None, 1.0, None]  # (-1, 0] before any


def test_memory_bounded_by_horizon():
    window = UtilizationWindow(horizon_s=2.0)
    for i in range(1, 1001):
        window.add(Sample(tick(i), 1.0, 0, 1))
    assert len(window) == 20  # samples in (98.0, 100.0]
    assert window.oldest_at == pytest.approx(98.1)


def test_out_of_order_sample_is_rejected():
    window = filled([1.0, 1.0])
    with pytest.raises(ValueError):
        window.add(Sample(0.1, 1.0, 0, 1))


def test_interval_means_count_complete_intervals_aligned_on_absolute_time():
    window = filled([1.0] * 10 + [2.0] * 10 + [3.0] * 10)  # (0,1] -> 1, (1,2] -> 2, (2,3] -> 3
    # At 2.5 the interval (2, 3] is still filling up: left out, whenever in it one asks.
    assert window.interval_means(2.5, 2, 1.0) == [2.0, 1.0]
    assert window.interval_means(2.1, 2, 1.0) == [2.0, 1.0]
    assert window.interval_means(3.0, 2, 1.0) == [3.0, 2.0]


def test_nearest_rank_never_interpolates():
    values = [float(v) for v in range(1, 61)]  # 1 .. 60
    assert nearest_rank(values, 0.9) == 54.0
    assert nearest_rank([0.0, 0.0, 0.0, 8.0], 0.9) == 8.0  # few values: the largest
    assert nearest_rank([3.0, 1.0, 2.0], 0.5) == 2.0
    assert nearest_rank([5.0], 1.0) == 5.0
    with pytest.raises(ValueError):
        nearest_rank([], 0.9)
