"""Per-deployment counters updated on the hot path.

Plain integers and lists instead of prometheus-client metric objects: a labelled Counter/Histogram
update takes a lock and a label lookup (several microseconds per request, measured); these are
read only when /metrics is scraped (see telemetry/metrics.py).
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in seconds, shared by every latency histogram.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    """Cumulative-at-scrape histogram: per-bucket counts, a sum and a count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last slot is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


_BUCKETS = len(LATENCY_BUCKETS) + 1  # per histogram, the last one +Inf
# Where each phase's histogram starts in DeploymentStats.counts; its sum follows the three.
_QUEUE, _UPSTREAM, _TOTAL = 0, _BUCKETS, 2 * _BUCKETS
_SUMS = 3 * _BUCKETS


class DeploymentStats:
    """What happened to one deployment's requests, by status code and by phase.

    The three phase histograms live in one flat list: with many deployments a request finds its
    deployment's counters cold in the CPU cache, and one list is fewer cache lines to fetch than
    three histogram objects with a list each. `queue_wait`, `upstream` and `total` are copies
    for readers (the /metrics scrape).
    """

    __slots__ = ("counts", "responses", "retries")

    def __init__(self) -> None:
        self.responses: dict[int, int] = {}
        # Bucket counts of queue wait (time waiting for a replica slot), upstream (slot granted
        # -> response complete) and total (request head parsed -> response complete), then
        # their three sums in seconds.
        self.counts: list[float] = [0] * (_SUMS + 3)
        self.retries = 0

    def record(self, status: int, queue_s: float, upstream_s: float, total_s: float) -> None:
        responses = self.responses
        responses[status] = responses.get(status, 0) + 1
        counts = self.counts
        counts[bisect_left(LATENCY_BUCKETS, queue_s)] += 1
        counts[_UPSTREAM + bisect_left(LATENCY_BUCKETS, upstream_s)] += 1
        counts[_TOTAL + bisect_left(LATENCY_BUCKETS, total_s)] += 1
        counts[_SUMS] += queue_s
        counts[_SUMS + 1] += upstream_s
        counts[_SUMS + 2] += total_s

    @property
    def queue_wait(self) -> Histogram:
        return self._histogram(_QUEUE, 0)

    @property
    def upstream(self) -> Histogram:
        return self._histogram(_UPSTREAM, 1)

    @property
    def total(self) -> Histogram:
        return self._histogram(_TOTAL, 2)

    def _histogram(self, start: int, phase: int) -> Histogram:
        histogram = Histogram()
        histogram.counts = [int(n) for n in self.counts[start : start + _BUCKETS]]
        histogram.sum = float(self.counts[_SUMS + phase])
        return histogram
