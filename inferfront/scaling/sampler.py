"""Observations of one deployment's load, and the sliding window the scaling policy reads.

Units. Demand is counted in *replica-equivalents* so that utilization 1.0 means every slot is taken:

    busy        = requests in flight / C            (C = max_concurrent_requests_per_instance)
    demand      = busy + queued / C
    utilization = demand / replicas                 (replicas = current, starting ones included)

With C = 1 and the router enforcing the limit, `busy` is exactly the seed's "replicas busy
processing a request". A queued request needs one slot, i.e. 1/C of a replica, which is why the
queue is divided by C too. With no replica at all, any demand gives infinite utilization.

The window assumes the driver samples on a fixed tick (at least every 100 ms): then the plain mean
of the samples inside a window is its time average. Pure data structure: no clock, no I/O; times
are float seconds from whatever monotonic clock the caller uses.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

# Sample times are sums of float steps; this keeps a sample sitting on a window edge on the side
# the arithmetic intended.
EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation of a deployment at time `at`."""

    at: float
    busy: float  # busy-equivalents: requests in flight / concurrency
    queued: int  # requests waiting in the router's queue
    replicas: int  # current replicas, starting ones included (capacity to come)
    ready: int = 0  # replicas ready to serve; reported, not used by the decision
    concurrency: int = 1  # max_concurrent_requests_per_instance

    def __post_init__(self) -> None:
        if self.busy < 0 or self.queued < 0 or self.replicas < 0 or self.ready < 0:
            raise ValueError(f"negative count in {self!r}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")

    @classmethod
    def observe(
        cls,
        at: float,
        *,
        inflight: int,
        queued: int,
        replicas: int,
        ready: int = 0,
        concurrency: int = 1,
    ) -> Sample:
        """Build a sample from raw counts: total requests in flight across replicas."""
        return cls(at, inflight / concurrency, queued, replicas, ready, concurrency)

    @property
    def demand(self) -> float:
        """Replicas' worth of work present: busy-equivalents plus the queue, in replicas."""
        return self.busy + self.queued / self.concurrency

    @property
    def utilization(self) -> float:
        return utilization(self.demand, self.replicas)


def utilization(demand: float, replicas: int) -> float:
    """demand / replicas; infinite when there is demand and no replica at all."""
    if replicas > 0:
        return demand / replicas
    return math.inf if demand > 0 else 0.0


class UtilizationWindow:
    """The most recent samples of one deployment, oldest first.

    Memory is bounded by time: adding a sample drops those older than `horizon_s` before it, so
    with a 100 ms tick and the policy's default 121 s horizon at most ~1210 samples are held.
    """

    def __init__(self, horizon_s: float) -> None:
        if horizon_s <= 0:
            raise ValueError("horizon_s must be positive")
        self.horizon_s = horizon_s
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        latest = self.latest
        if latest is not None and sample.at < latest.at:
            raise ValueError(f"sample at {sample.at} is older than the latest at {latest.at}")
        self._samples.append(sample)
        oldest_kept = sample.at - self.horizon_s
        while self._samples[0].at <= oldest_kept:
            self._samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def latest(self) -> Sample | None:
        return self._samples[-1] if self._samples else None

    @property
    def oldest_at(self) -> float | None:
        return self._samples[0].at if self._samples else None

    def samples(self, now: float, seconds: float) -> list[Sample]:
        """Samples taken in (now - seconds, now], oldest first."""
        return list(reversed(list(self._newest_first(now, seconds))))

    def _newest_first(self, now: float, seconds: float) -> Iterator[Sample]:
        start = now - seconds + EPSILON
        for sample in reversed(self._samples):
            if sample.at > now + EPSILON:
                continue  # a simulator may ask about a time before its latest sample
            if sample.at < start:
                return
            yield sample

    def mean_demand(self, now: float, seconds: float) -> float | None:
        """Average demand over (now - seconds, now]; None when no sample fell in it."""
        demands = [s.demand for s in self._newest_first(now, seconds)]
        return sum(demands) / len(demands) if demands else None

    def peak_demand(self, now: float, seconds: float) -> float | None:
        return max((s.demand for s in self._newest_first(now, seconds)), default=None)

    def sustained_demand(self, now: float, seconds: float) -> float | None:
        """The lowest demand over (now - seconds, now]: a level held for that whole time."""
        return min((s.demand for s in self._newest_first(now, seconds)), default=None)

    def average(self, now: float, seconds: float) -> float:
        """Average utilization over (now - seconds, now] against the latest replica count."""
        mean = self.mean_demand(now, seconds)
        latest = self.latest
        if mean is None or latest is None:
            return 0.0
        return utilization(mean, latest.replicas)

    def interval_means(self, now: float, count: int, interval_s: float) -> list[float | None]:
        """Mean demand of the `count` most recent *complete* intervals, newest first.

        Intervals are aligned on absolute time, (k*interval_s, (k+1)*interval_s], and one is
        complete once its end is at or before `now`; the interval still filling up is left out.
        So the answer changes only when an interval closes, however often it is asked. None
        stands for an interval without samples (a sampler stall, or before the first sample).
        """
        newest = math.floor(now / interval_s + EPSILON) - 1  # the last complete interval
        oldest = newest - count + 1
        sums = [0.0] * count
        counts = [0] * count
        for sample in reversed(self._samples):
            k = math.ceil(sample.at / interval_s - EPSILON) - 1
            if k > newest:
                continue  # the interval still filling up, or a time after `now`
            if k < oldest:
                break
            sums[newest - k] += sample.demand
            counts[newest - k] += 1
        return [total / n if n else None for total, n in zip(sums, counts, strict=True)]


def nearest_rank(values: list[float], fraction: float) -> float:
    """The smallest value with at least `fraction` of the values at or below it (0 < fraction
    <= 1). Never interpolates: with few values a high fraction is simply the maximum."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered) - EPSILON))
    return ordered[rank - 1]
