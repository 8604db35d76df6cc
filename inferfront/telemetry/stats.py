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


class DeploymentStats:
    """What happened to one deployment's requests, by status code and by phase."""

    __slots__ = ("queue_wait", "responses", "retries", "total", "upstream")

    def __init__(self) -> None:
        self.responses: dict[int, int] = {}
        self.queue_wait = Histogram()  # time waiting for a replica slot
        self.upstream = Histogram()  # slot granted -> response complete
        self.total = Histogram()  # request head parsed -> response complete
        self.retries = 0

    def record(self, status: int, queue_s: float, upstream_s: float, total_s: float) -> None:
        responses = self.responses
        responses[status] = responses.get(status, 0) + 1
        self.queue_wait.observe(queue_s)
        self.upstream.observe(upstream_s)
        self.total.observe(total_s)
