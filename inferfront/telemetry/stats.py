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
_PHASES = 3  # queue wait, upstream, total


class DeploymentStats:
    """What happened to one deployment's requests, by status code and by phase.

    The three phase histograms live interleaved in one flat list, their sums first, then bucket
    by bucket one count per phase: with many deployments a request finds its deployment's
    counters cold in the CPU cache, and a fast request's three counts and the sums then share
    one or two cache lines instead of three histogram objects with a list each.
    `queue_wait`, `upstream` and `total` are copies for readers (the /metrics scrape).

    Most requests take a slot at once: a zero queue wait is not written per request but
    counted at read time (every request is in `total`), two fewer updates on the hot path.
    """

    __slots__ = ("counts", "responses", "retries")

    def __init__(self) -> None:
        self.responses: dict[int, int] = {}
        # [sum queue wait, sum upstream, sum total (seconds),
        #  then for each bucket: queue wait count, upstream count, total count]
        # queue wait: waiting for a replica slot; upstream: slot granted -> response complete;
        # total: request head parsed -> response complete.
        self.counts: list[float] = [0] * (_PHASES + _PHASES * _BUCKETS)
        self.retries = 0

    def record(self, status: int, queue_s: float, upstream_s: float, total_s: float) -> None:
        responses = self.responses
        responses[status] = responses.get(status, 0) + 1
        counts = self.counts
        if queue_s:
            counts[0] += queue_s
            counts[3 + 3 * bisect_left(LATENCY_BUCKETS, queue_s)] += 1
        counts[1] += upstream_s
        counts[2] += total_s
        counts[4 + 3 * bisect_left(LATENCY_BUCKETS, upstream_s)] += 1
        counts[5 + 3 * bisect_left(LATENCY_BUCKETS, total_s)] += 1

    @property
    def queue_wait(self) -> Histogram:
        return self._histogram(0)

    @property
    def upstream(self) -> Histogram:
        return self._histogram(1)

    @property
    def total(self) -> Histogram:
        return self._histogram(2)

    def _histogram(self, phase: int) -> Histogram:
        histogram = Histogram()
        histogram.counts = [int(n) for n in self.counts[_PHASES + phase :: _PHASES]]
        histogram.sum = float(self.counts[phase])
        if phase == 0:  # the requests that did not wait: in the first bucket
            requests = sum(self.counts[_PHASES + 2 :: _PHASES])
            histogram.counts[0] += requests - sum(histogram.counts)
        return histogram
