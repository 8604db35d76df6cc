"""The endpoint's traffic split (smooth weighted round-robin) and mirror selection."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from inferfront.routing.traffic import Mirror, TrafficSplit

WEIGHT_SETS = [
    {"blue": 100},
    {"blue": 90, "green": 10},
    {"blue": 50, "green": 50},
    {"a": 33, "b": 33, "c": 34},
    {"blue": 1, "green": 99},
    {"blue": 70, "green": 0, "red": 30},
    {"blue": 0, "green": 100},
]


def picks(split: TrafficSplit, count: int) -> list[str | None]:
    return [split.pick() for _ in range(count)]


def gaps(sequence: list[str | None], value: str) -> set[int]:
    """The distances between successive occurrences of `value`."""
    positions = [index for index, item in enumerate(sequence) if item == value]
    return {later - earlier for earlier, later in pairwise(positions)}


def longest_run(sequence: list[str | None], value: str) -> int:
    longest = run = 0
    for item in sequence:
        run = run + 1 if item == value else 0
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=lambda w: "/".join(map(str, w.values())))
def test_shares_match_weights_over_10000_picks(weights: dict[str, int]) -> None:
    counts = Counter(picks(TrafficSplit(weights), 10_000))
    for name, weight in weights.items():
        share = 100 * counts[name] / 10_000
        assert abs(share - weight) <= 1, (name, share, weight)
        assert counts[name] == weight * 100  # the algorithm is exact, not just close
    assert set(counts) == {name for name, weight in weights.items() if weight}


@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=lambda w: "/".join(map(str, w.values())))
def test_every_window_of_100_picks_is_exact(weights: dict[str, int]) -> None:
    sequence = picks(TrafficSplit(weights), 1_000)
    for start in range(len(sequence) - 100 + 1):
        window = Counter(sequence[start : start + 100])
        for name, weight in weights.items():
            assert window[name] == weight, (start, name)


def test_fifty_fifty_alternates() -> None:
    sequence = picks(TrafficSplit({"blue": 50, "green": 50}), 1_000)
    assert longest_run(sequence, "blue") == 1
    assert longest_run(sequence, "green") == 1


def test_minority_is_spread_evenly() -> None:
    sequence = picks(TrafficSplit({"blue": 90, "green": 10}), 1_000)
    assert gaps(sequence, "green") == {10}
    assert longest_run(sequence, "blue") == 9


def test_three_way_split_has_no_long_runs() -> None:
    sequence = picks(TrafficSplit({"a": 33, "b": 33, "c": 34}), 1_000)
    for name in "abc":
        assert longest_run(sequence, name) <= 2


def test_one_percent_is_spread_not_bunched() -> None:
    sequence = picks(TrafficSplit({"blue": 1, "green": 99}), 1_000)
    assert sequence.count("blue") == 10
    assert gaps(sequence, "blue") == {100}


def test_zero_weight_deployment_is_never_chosen() -> None:
    sequence = picks(TrafficSplit({"blue": 0, "green": 100, "red": 0}), 500)
    assert set(sequence) == {"green"}


@pytest.mark.parametrize("weights", [{}, {"blue": 0}, {"blue": 0, "green": 0}])
def test_nothing_to_pick_returns_none(weights: dict[str, int]) -> None:
    split = TrafficSplit(weights)
    assert picks(split, 10) == [None] * 10


def test_same_weights_give_the_same_sequence() -> None:
    weights = {"a": 20, "b": 45, "c": 35}
    assert picks(TrafficSplit(weights), 300) == picks(TrafficSplit(weights), 300)


def test_weights_need_not_sum_to_100() -> None:
    counts = Counter(picks(TrafficSplit({"blue": 3, "green": 1}), 400))
    assert counts == {"blue": 300, "green": 100}


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError):
        TrafficSplit({"blue": 110, "green": -10})


def test_split_keeps_the_configured_weights() -> None:
    weights = {"blue": 70, "green": 0, "red": 30}
    split = TrafficSplit(weights)
    weights["blue"] = 0  # the split holds its own copy
    assert split.weights == {"blue": 70, "green": 0, "red": 30}


@pytest.mark.parametrize("percent", range(1, 51))
def test_mirror_takes_exactly_percent_of_calls(percent: int) -> None:
    mirror = Mirror("shadow", percent)
    taken = [mirror.take() for _ in range(10_000)]
    assert taken.count("shadow") == percent * 100
    assert set(taken) <= {"shadow", None}
    # Every window of 100 consecutive calls mirrors exactly `percent` of them (evenly spread).
    flags = [item is not None for item in taken[:1_000]]
    for start in range(len(flags) - 100 + 1):
        assert sum(flags[start : start + 100]) == percent


def test_mirror_spreads_calls_evenly() -> None:
    mirror = Mirror("shadow", 25)
    taken = [mirror.take() for _ in range(100)]
    assert gaps(taken, "shadow") == {4}


@pytest.mark.parametrize(("deployment", "percent"), [(None, 0), (None, 30), ("shadow", 0)])
def test_no_mirror(deployment: str | None, percent: int) -> None:
    mirror = Mirror(deployment, percent)
    assert [mirror.take() for _ in range(200)] == [None] * 200


def test_mirror_at_100_percent_takes_every_call() -> None:
    mirror = Mirror("shadow", 100)
    assert [mirror.take() for _ in range(50)] == ["shadow"] * 50


@pytest.mark.parametrize("percent", [-1, 101])
def test_mirror_percent_out_of_range_is_rejected(percent: int) -> None:
    with pytest.raises(ValueError):
        Mirror("shadow", percent)
