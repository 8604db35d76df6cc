"""Trace replay for the autoscaling benchmark: traces, a discrete-event router, and references.

Everything runs in *trace time* (seconds from the first arrival). The live benchmark compresses
time by a factor k; this module never does: it is the model the live run is compared with.

Service time. Traces carry token counts, not durations, so a replica's service time is

    service_ms = base_ms + prefill_ms_per_token * prompt_tokens
                         + decode_ms_per_token * output_tokens

(defaults 0 + 0.2 x prompt + 20 x output: the capacity planner's model, planner.py).

The simulated router (`simulate_autoscaled`) is the live one reduced to its decisions:

* FIFO queue; replicas with one request at a time (max_concurrent_requests_per_instance = 1);
  a free replica takes the head of the queue at once (LRU among free ones).
* The router's limits: more than `max_queued` waiting -> 429 at once; queued longer than
  `max_queue_wait_s` -> 503 (no timer while scaling from zero with nothing ready, as in
  exchange.py); past `request_timeout_s` -> 504 (a replica serving it is freed).
* The autoscaler as autoscaler.py drives it: a `Sample` every `sample_interval_s`; the real
  `decide()` every polling interval and on every sample showing requests queued; `scale_to()`
  on a change (or, at a scheduled decision, when the replicas differ from the desired count).
  Scaling from zero, a request queued with nothing ready wakes it at once (`wake()`).
* The runtime as local.py: new replicas are "starting" for `cold_start_s` and count as current
  replicas (capacity to come); surplus replicas are picked not-ready first, then least busy,
  newest first; a draining replica takes nothing new and stops when its request finishes.
* Replica-seconds integrate every replica that exists (starting, ready or draining) over
  [0, span].

References on the same replay:

* `smallest_fixed_fleet`: the fewest always-ready replicas that keep at most `max_fraction` of
  requests waiting longer than `wait_limit_s` (binary search over fixed-fleet simulations).
* `hindsight_bound`: per window of 10 s, just enough replicas for that window with no wait at
  all: the peak number of requests in service if each started on arrival (an infinite fleet).
  Also the looser floor ceil(offered load) = work arriving in the window / window length.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inferfront.scaling import planner
from inferfront.scaling.policy import (
    Decision,
    ScalePolicy,
    ScaleState,
    ceil_replicas,
    decide,
    initial_state,
)
from inferfront.scaling.sampler import EPSILON, Sample, UtilizationWindow

TRACES_DIR = Path("/work/shared/traces")
TRACE_FILES = {
    "azure": TRACES_DIR / "AzureLLMInferenceTrace_conv_2023.csv",
    "mooncake": TRACES_DIR / "mooncake_FAST25_conversation_trace.jsonl",
}
SERVEGEN_FILE = TRACES_DIR / "DERIVED_servegen_aggregate_rate_10min.csv"
HINDSIGHT_WINDOW_S = 10.0
WAIT_LIMIT_S = 0.5
MAX_LATE_FRACTION = 0.01


# -- requests and the service-time model --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceRequest:
    at_s: float  # arrival, seconds from the start of the replay
    prompt_tokens: int
    output_tokens: int
    service_s: float  # time one replica needs for it (the service-time model applied)


@dataclass(frozen=True)
class ServiceModel:
    base_ms: float = 0.0
    prefill_ms_per_token: float = planner.DEFAULT_PREFILL_MS_PER_TOKEN
    decode_ms_per_token: float = planner.DEFAULT_DECODE_MS_PER_TOKEN

    def service_s(self, prompt_tokens: int, output_tokens: int) -> float:
        prefill = self.prefill_ms_per_token * prompt_tokens
        return (self.base_ms + prefill + self.decode_ms_per_token * output_tokens) / 1000

    def describe(self) -> str:
        return (
            f"service_ms = {self.base_ms:g} + {self.prefill_ms_per_token:g} x prompt_tokens"
            f" + {self.decode_ms_per_token:g} x output_tokens"
        )


def load_trace(path: Path, model: ServiceModel, seed: int = 0) -> list[TraceRequest]:
    """An Azure or Mooncake request trace as requests sorted by arrival.

    Mooncake timestamps are rounded to ~3 s steps; the requests of one step are spread uniformly
    (seeded, so replays repeat) over the step, since arriving all at once is an artefact.
    """
    kind = planner.detect_format(path)
    if kind == planner.AZURE:
        arrivals = planner._read_azure(path)  # the planner's reader: one parser for both tools
    elif kind == planner.MOONCAKE:
        arrivals = spread_rounded_timestamps(planner._read_mooncake(path), random.Random(seed))
    else:
        raise ValueError(f"{path}: a {kind} trace has rates, not requests; it can only shape one")
    arrivals = sorted(arrivals, key=lambda arrival: arrival[0])
    return [TraceRequest(at, p, o, model.service_s(p, o)) for at, p, o in arrivals]


def spread_rounded_timestamps(
    arrivals: Sequence[tuple[float, int, int]], rng: random.Random
) -> list[tuple[float, int, int]]:
    """Spread requests sharing a timestamp over [t, next distinct timestamp)."""
    times = sorted({at for at, _, _ in arrivals})
    if len(times) < 2:
        return list(arrivals)
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    typical_gap = gaps[len(gaps) // 2]
    next_time = dict(zip(times, [*times[1:], times[-1] + typical_gap], strict=True))
    return [(at + rng.random() * (next_time[at] - at), p, o) for at, p, o in arrivals]


def slice_trace(
    requests: Sequence[TraceRequest], start_s: float, duration_s: float
) -> list[TraceRequest]:
    """Requests arriving in [start_s, start_s + duration_s), re-timed to start at 0."""
    end = start_s + duration_s
    return [
        TraceRequest(r.at_s - start_s, r.prompt_tokens, r.output_tokens, r.service_s)
        for r in requests
        if start_s <= r.at_s < end
    ]


def trace_span_s(requests: Sequence[TraceRequest], window_s: float = HINDSIGHT_WINDOW_S) -> float:
    """The replay's length: the last arrival rounded up to a whole hindsight window."""
    last = max((r.at_s for r in requests), default=0.0)
    return max(window_s, math.ceil(last / window_s + EPSILON) * window_s)


def offered_load(requests: Sequence[TraceRequest], start_s: float, length_s: float) -> float:
    """Replicas' worth of work arriving in [start_s, start_s + length_s) (Little's law)."""
    end = start_s + length_s
    return sum(r.service_s for r in requests if start_s <= r.at_s < end) / length_s


# -- bursty variants: the same requests, re-timed by a rate multiplier ---------------------------


def warp_trace(
    requests: Sequence[TraceRequest], multipliers: Sequence[float], span_s: float
) -> list[TraceRequest]:
    """Re-time arrivals so the rate follows `multipliers` (equal steps over [0, span_s)).

    The multipliers are normalised to mean 1, so the span, the requests and their order stay the
    same: arrival t moves to tau with integral_0^tau m = t. Where m is high, arrivals bunch.
    """
    if not multipliers or min(multipliers) < 0 or sum(multipliers) <= 0:
        raise ValueError("multipliers must be non-negative with a positive sum")
    mean = sum(multipliers) / len(multipliers)
    rates = [m / mean for m in multipliers]
    step = span_s / len(rates)
    cumulative = [0.0]  # integral of m up to each step's start
    for rate in rates:
        cumulative.append(cumulative[-1] + rate * step)

    def new_time(t: float) -> float:
        k = min(bisect.bisect_right(cumulative, t) - 1, len(rates) - 1)
        while rates[k] == 0:  # an idle step holds no arrivals: the next busy one takes t
            k += 1
        return k * step + (t - cumulative[k]) / rates[k]

    return [
        TraceRequest(new_time(r.at_s), r.prompt_tokens, r.output_tokens, r.service_s)
        for r in requests
    ]


def onoff_multipliers(
    span_s: float, period_s: float = 600.0, on_s: float = 120.0, on_rate: float = 3.0
) -> list[float]:
    """A synthetic on/off shape, one value per 10 s: `on_rate` x the mean for `on_s` of every
    `period_s`, the rest at the rate that keeps the mean at 1."""
    if not 0 < on_s < period_s or on_rate * on_s > period_s:
        raise ValueError("need 0 < on_s < period_s and on_rate * on_s <= period_s")
    off_rate = (period_s - on_rate * on_s) / (period_s - on_s)
    steps = max(1, round(span_s / 10))
    return [on_rate if (k * 10) % period_s < on_s else off_rate for k in range(steps)]


def servegen_multipliers(path: Path = SERVEGEN_FILE, model: str = "deepseek-r1") -> list[float]:
    """One day of a ServeGen model's 10-minute rates (144 values): a real diurnal shape which,
    squeezed onto an hour, gives swings every 25 s between 0.27x and 2.7x the mean."""
    rates: dict[float, float] = {}
    with path.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            if row["model"] == model:
                rates[float(row["window_start_s"])] = float(row["total_rate_rps"])
    if not rates:
        raise ValueError(f"model {model!r} not in {path}")
    return [rates[start] for start in sorted(rates)][:144]


# -- results --------------------------------------------------------------------------------------

OK, QUEUE_FULL, QUEUE_TIMEOUT, TIMEOUT = 200, 429, 503, 504


@dataclass
class Outcome:
    """Per request, in arrival order: queue wait, latency (end - arrival) and status."""

    wait_s: list[float]
    latency_s: list[float]
    status: list[int]


@dataclass(frozen=True)
class ReplayStats:
    requests: int
    served: int  # answered 200
    p50_ms: float
    p99_ms: float
    waited_over: int  # waited longer than the limit in the queue, or rejected (429/503/504)
    waited_over_pct: float
    rejected: dict[str, int]  # status -> count, for 429, 503, 504
    replica_seconds: float
    mean_replicas: float

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(
    outcome: Outcome, replica_seconds: float, span_s: float, wait_limit_s: float = WAIT_LIMIT_S
) -> ReplayStats:
    served = [lat for lat, st in zip(outcome.latency_s, outcome.status, strict=True) if st == OK]
    late = sum(
        1
        for wait, st in zip(outcome.wait_s, outcome.status, strict=True)
        if st != OK or wait > wait_limit_s + EPSILON
    )
    total = len(outcome.status)
    return ReplayStats(
        requests=total,
        served=len(served),
        p50_ms=percentile(served, 0.50) * 1000,
        p99_ms=percentile(served, 0.99) * 1000,
        waited_over=late,
        waited_over_pct=100 * late / total if total else 0.0,
        rejected={str(c): outcome.status.count(c) for c in (QUEUE_FULL, QUEUE_TIMEOUT, TIMEOUT)},
        replica_seconds=replica_seconds,
        mean_replicas=replica_seconds / span_s if span_s else 0.0,
    )


# -- the autoscaled router ------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSettings:
    policy: ScalePolicy
    sample_interval_s: float = 0.1
    cold_start_s: float = 2.0
    initial_replicas: int = 1  # ready at t = 0 (the deployment was running)
    max_queue_wait_s: float = math.inf
    request_timeout_s: float = math.inf
    max_queued: int | None = None  # None: unbounded
    span_s: float | None = None  # replica-seconds over [0, span]; default trace_span_s()
    timeline_every_s: float = 10.0
    # The decision under test: the real one; another only for what-if experiments.
    decide_fn: Callable[[ScalePolicy, UtilizationWindow, ScaleState, float], Decision] = decide


@dataclass
class AutoscaledResult:
    outcome: Outcome
    stats: ReplayStats
    span_s: float
    scale_changes: int  # decisions that changed the desired count
    peak_replicas: int
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)
    # (t, replicas existing, ready, queued) every `timeline_every_s`


# Event kinds, in the order they are handled when they fall on the same instant: a finished
# request frees its slot before anyone asks for one, and the sample sees the result of both.
_DONE, _DEADLINE, _QUEUE_TIMEOUT, _READY = range(4)
_STARTING, _SERVING, _DRAINING, _STOPPED = "starting", "ready", "draining", "stopped"
_PENDING, _QUEUED, _IN_SERVICE = 0, 1, 2


@dataclass(eq=False)
class _Replica:
    index: int
    launched_at: float
    state: str = _STARTING
    busy: bool = False


class _AutoscaledRouter:
    """One replay: the event loop, the router's queue and slots, the runtime and the autoscaler."""

    def __init__(self, requests: Sequence[TraceRequest], settings: SimSettings) -> None:
        if settings.sample_interval_s <= 0 or settings.cold_start_s < 0:
            raise ValueError("sample_interval_s must be > 0 and cold_start_s >= 0")
        self.requests = requests
        self.settings = settings
        self.policy = settings.policy
        self.span = settings.span_s if settings.span_s is not None else trace_span_s(requests)
        n = len(requests)
        self.phase = [_PENDING] * n
        self.status = [0] * n
        self.start = [math.nan] * n
        self.end = [math.nan] * n
        self.serving_on: list[_Replica | None] = [None] * n
        self.events: list[tuple[float, int, int, int]] = []  # (time, kind, seq, subject)
        self.seq = 0
        self.queue: deque[int] = deque()
        self.queued = 0
        self.inflight = 0
        self.free: deque[_Replica] = deque()  # ready and idle, least recently used first
        self.replicas: list[_Replica] = []
        self.live = 0  # starting + ready: the runtime's `current`
        self.ready = 0
        self.existing = 0  # live + draining: what costs replica-seconds
        self.peak = 0
        self.area = 0.0
        self.area_at = 0.0
        self.window = self.policy.new_window()
        self.state = initial_state(0, 0.0)  # run() sets both once the initial fleet exists
        self.next_decision = self.policy.polling_interval_s
        self.changes = 0
        self.timeline: list[tuple[float, int, int, int]] = []

    # -- replicas: the runtime ----------------------------------------------------------------

    def _account(self, now: float) -> None:
        until = min(now, self.span)
        if until > self.area_at:
            self.area += self.existing * (until - self.area_at)
            self.area_at = until

    def _launch(self, now: float, ready_at: float | None = None) -> None:
        self._account(now)
        replica = _Replica(len(self.replicas), now)
        self.replicas.append(replica)
        self.live += 1
        self.existing += 1
        self.peak = max(self.peak, self.existing)
        if ready_at is None:
            self._push(now + self.settings.cold_start_s, _READY, replica.index)
        else:
            self._become_ready(replica, now)

    def _become_ready(self, replica: _Replica, now: float) -> None:
        if replica.state != _STARTING:
            return  # scaled away while starting
        replica.state = _SERVING
        self.ready += 1
        self._hand_out(replica, now)

    def _scale_to(self, count: int, now: float) -> None:
        live = [r for r in self.replicas if r.state in (_STARTING, _SERVING)]
        for _ in range(count - len(live)):
            self._launch(now)
        surplus = len(live) - count
        if surplus > 0:
            ranked = sorted(
                live, key=lambda r: (r.state == _SERVING, r.busy, -r.launched_at, -r.index)
            )
            for replica in ranked[:surplus]:
                self._drain(replica, now)

    def _drain(self, replica: _Replica, now: float) -> None:
        if replica.state == _SERVING:
            self.ready -= 1
            if replica in self.free:
                self.free.remove(replica)
        replica.state = _DRAINING
        self.live -= 1
        if not replica.busy:
            self._stop(replica, now)

    def _stop(self, replica: _Replica, now: float) -> None:
        self._account(now)
        replica.state = _STOPPED
        self.existing -= 1

    # -- requests: the router -----------------------------------------------------------------

    def _push(self, at: float, kind: int, subject: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, kind, self.seq, subject))

    def _arrive(self, i: int, now: float) -> None:
        settings = self.settings
        if math.isfinite(settings.request_timeout_s):
            self._push(now + settings.request_timeout_s, _DEADLINE, i)
        if self.free:
            self._serve(i, self.free.popleft(), now)
            return
        if settings.max_queued is not None and self.queued >= settings.max_queued:
            self._finish(i, QUEUE_FULL, now)
            return
        self.phase[i] = _QUEUED
        self.queue.append(i)
        self.queued += 1
        if self.ready or self.policy.min_instances > 0:
            if math.isfinite(settings.max_queue_wait_s):
                self._push(now + settings.max_queue_wait_s, _QUEUE_TIMEOUT, i)
        else:
            self._step(now)  # scaling from zero: the router wakes the autoscaler at once

    def _serve(self, i: int, replica: _Replica, now: float) -> None:
        self.phase[i] = _IN_SERVICE
        self.start[i] = now
        self.serving_on[i] = replica
        replica.busy = True
        self.inflight += 1
        self._push(now + self.requests[i].service_s, _DONE, i)

    def _finish(self, i: int, status: int, now: float) -> None:
        if self.phase[i] == _QUEUED:
            self.queued -= 1  # left in the deque; skipped when it reaches the head
        self.phase[i] = _PENDING
        self.status[i] = status
        self.end[i] = now

    def _release(self, i: int, now: float) -> None:
        replica = self.serving_on[i]
        assert replica is not None
        self.serving_on[i] = None
        replica.busy = False
        self.inflight -= 1
        if replica.state == _DRAINING:
            self._stop(replica, now)
        elif replica.state == _SERVING:
            self._hand_out(replica, now)

    def _hand_out(self, replica: _Replica, now: float) -> None:
        """A replica has a free slot: the oldest waiter gets it, else it joins the free list."""
        while self.queue:
            head = self.queue.popleft()
            if self.phase[head] == _QUEUED:
                self.queued -= 1
                self._serve(head, replica, now)
                return
        self.free.append(replica)

    def _handle(self, kind: int, i: int, now: float) -> None:
        """One event; `i` is a replica index for _READY, a request index otherwise."""
        if kind == _READY:
            self._become_ready(self.replicas[i], now)
            return
        phase = self.phase[i]
        if kind == _DONE:
            if phase == _IN_SERVICE:  # not if it timed out meanwhile
                self._finish(i, OK, now)
                self._release(i, now)
        elif kind == _QUEUE_TIMEOUT:
            if phase == _QUEUED:
                self._finish(i, QUEUE_TIMEOUT, now)
        elif kind == _DEADLINE:
            if phase == _QUEUED:
                self._finish(i, TIMEOUT, now)
            elif phase == _IN_SERVICE:
                self._finish(i, TIMEOUT, now)
                self._release(i, now)

    # -- the autoscaler -------------------------------------------------------------------------

    def _step(self, now: float) -> None:
        """Autoscaler.step: sample; decide each polling interval, and at once on any sample that
        shows requests queued (an early decision leaves the cadence alone)."""
        self.window.add(
            Sample.observe(
                now, inflight=self.inflight, queued=self.queued, replicas=self.live,
                ready=self.ready,
            )
        )  # fmt: skip
        scheduled = now >= self.next_decision - EPSILON
        if not scheduled and not self.queued:
            return
        if scheduled:
            self.next_decision = now + self.policy.polling_interval_s
        decision = self.settings.decide_fn(self.policy, self.window, self.state, now)
        self.state = decision.state
        if decision.changed:
            self.changes += 1
            self._scale_to(decision.desired, now)
        elif scheduled and decision.desired != self.live:
            self._scale_to(decision.desired, now)  # re-sync once per interval

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> AutoscaledResult:
        settings = self.settings
        for _ in range(settings.initial_replicas):
            self._launch(0.0, ready_at=0.0)
        self.state = initial_state(self.live, 0.0)
        self.next_decision = self.policy.polling_interval_s
        dt = settings.sample_interval_s
        timeline_ticks = max(1, round(settings.timeline_every_s / dt))
        requests, n = self.requests, len(self.requests)
        next_arrival, tick = 0, 0
        give_up_at = self.span + 24 * 3600  # a replay that never drains is a bug: stop anyway
        while True:
            tick_at = tick * dt
            arrival_at = requests[next_arrival].at_s if next_arrival < n else math.inf
            event_at = self.events[0][0] if self.events else math.inf
            if event_at <= arrival_at and event_at <= tick_at:
                at, kind, _, subject = heapq.heappop(self.events)
                self._handle(kind, subject, at)
            elif arrival_at <= tick_at:
                self._arrive(next_arrival, arrival_at)
                next_arrival += 1
            else:
                finished = next_arrival >= n and not self.events and not self.queued
                if (finished and tick_at >= self.span) or tick_at > give_up_at:
                    break
                self._step(tick_at)
                if tick % timeline_ticks == 0:
                    self.timeline.append((tick_at, self.existing, self.ready, self.queued))
                tick += 1
        self._account(self.span)
        outcome = self._outcome()
        return AutoscaledResult(
            outcome=outcome,
            stats=summarize(outcome, self.area, self.span),
            span_s=self.span,
            scale_changes=self.changes,
            peak_replicas=self.peak,
            timeline=self.timeline,
        )

    def _outcome(self) -> Outcome:
        waits, latencies = [], []
        for r, started, ended, status in zip(
            self.requests, self.start, self.end, self.status, strict=True
        ):
            waits.append((started if status == OK else ended) - r.at_s)
            latencies.append(ended - r.at_s)
        return Outcome(waits, latencies, list(self.status))


def simulate_autoscaled(
    requests: Sequence[TraceRequest], settings: SimSettings
) -> AutoscaledResult:
    """Replay `requests` (sorted by arrival) through the simulated router and autoscaler."""
    return _AutoscaledRouter(requests, settings).run()


# -- references -----------------------------------------------------------------------------------


def simulate_fixed(requests: Sequence[TraceRequest], replicas: int) -> Outcome:
    """A fixed fleet of always-ready replicas and a FIFO queue: the earliest free replica takes
    the next request in arrival order (exact for identical replicas, no limits)."""
    if replicas < 1:
        raise ValueError("a fixed fleet needs at least one replica")
    free_at = [0.0] * replicas
    waits, latencies = [], []
    for r in requests:
        start = max(r.at_s, heapq.heappop(free_at))
        heapq.heappush(free_at, start + r.service_s)
        waits.append(start - r.at_s)
        latencies.append(start - r.at_s + r.service_s)
    return Outcome(waits, latencies, [OK] * len(requests))


def late_fraction(outcome: Outcome, wait_limit_s: float = WAIT_LIMIT_S) -> float:
    if not outcome.wait_s:
        return 0.0
    return sum(1 for w in outcome.wait_s if w > wait_limit_s + EPSILON) / len(outcome.wait_s)


@dataclass(frozen=True)
class FixedFleet:
    replicas: int
    outcome: Outcome
    stats: ReplayStats


def smallest_fixed_fleet(
    requests: Sequence[TraceRequest],
    span_s: float,
    wait_limit_s: float = WAIT_LIMIT_S,
    max_fraction: float = MAX_LATE_FRACTION,
) -> FixedFleet:
    """The fewest replicas keeping at most `max_fraction` of requests waiting over the limit.

    Binary search: more replicas never make a FIFO queue wait longer, and the peak concurrency
    of an infinite fleet (nobody waits at all) bounds the answer from above.
    """
    low, high = 1, max(1, peak_concurrency(requests))
    while low < high:
        middle = (low + high) // 2
        if late_fraction(simulate_fixed(requests, middle), wait_limit_s) <= max_fraction:
            high = middle
        else:
            low = middle + 1
    outcome = simulate_fixed(requests, low)
    return FixedFleet(low, outcome, summarize(outcome, low * span_s, span_s, wait_limit_s))


def _service_edges(requests: Sequence[TraceRequest]) -> list[tuple[float, int]]:
    """(time, +1 start / -1 end) of every request served on arrival; ends first on ties."""
    edges = [(r.at_s, 1) for r in requests] + [(r.at_s + r.service_s, -1) for r in requests]
    edges.sort()
    return edges


def peak_concurrency(requests: Sequence[TraceRequest]) -> int:
    level = peak = 0
    for _, delta in _service_edges(requests):
        level += delta
        peak = max(peak, level)
    return peak


@dataclass(frozen=True)
class HindsightBound:
    window_s: float
    no_wait: list[int]  # per window: peak concurrency if every request started on arrival
    offered: list[int]  # per window: ceil(work arriving in it / window length)

    @property
    def replica_seconds(self) -> float:
        return sum(self.no_wait) * self.window_s

    @property
    def offered_replica_seconds(self) -> float:
        return sum(self.offered) * self.window_s


def hindsight_bound(
    requests: Sequence[TraceRequest], span_s: float, window_s: float = HINDSIGHT_WINDOW_S
) -> HindsightBound:
    """Just enough replicas per window, known in hindsight (see the module docstring)."""
    windows = max(1, math.ceil(span_s / window_s - EPSILON))
    edges = _service_edges(requests)
    no_wait: list[int] = []
    level, j = 0, 0
    for k in range(windows):
        start, end = k * window_s, (k + 1) * window_s
        while j < len(edges) and edges[j][0] < start:
            level += edges[j][1]
            j += 1
        peak = level
        while j < len(edges) and edges[j][0] < end:
            level += edges[j][1]
            peak = max(peak, level)
            j += 1
        no_wait.append(peak)
    work = [0.0] * windows
    for r in requests:
        k = math.floor(r.at_s / window_s)
        if k < windows:
            work[k] += r.service_s
    offered = [ceil_replicas(w / window_s) for w in work]
    return HindsightBound(window_s, no_wait, offered)
