"""Health probing shared by the replica runtimes: probe settings, the consecutive-result
counting that turns single probe results into health changes, and the readiness watch that
probes one replica on its pace (the HTTP client itself is in `probe_client`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from inferfront.runtime.probe_client import SharedProbes, probe_http

ReplicaState = Literal["starting", "ready", "unready", "draining"]

# A shared probe result is taken when it is at most half the taker's pace old, and never older
# than this: a watch sees its replica about as soon as with probes of its own.
SHARED_RESULT_MAX_AGE_S = 1.0


@dataclass(frozen=True)
class ProbeSpec:
    """One probe's settings, with Azure ML's names and defaults (seconds and counts)."""

    path: str = "/"
    initial_delay: float = 10.0
    period: float = 10.0
    timeout: float = 2.0
    success_threshold: int = 1
    failure_threshold: int = 30

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"probe path must start with '/': {self.path!r}")
        if self.initial_delay < 0:
            raise ValueError("probe initial_delay must not be negative")
        if self.period <= 0 or self.timeout <= 0:
            raise ValueError("probe period and timeout must be positive")
        if self.success_threshold < 1 or self.failure_threshold < 1:
            raise ValueError("probe thresholds must be at least 1")


@dataclass(frozen=True)
class ReplicaInfo:
    """A read-only snapshot of one replica for the admin API. `pid` is None for replicas the
    router did not start; `started_at` is wall-clock seconds since the epoch."""

    name: str
    host: str
    port: int
    pid: int | None
    state: ReplicaState
    restarts: int
    started_at: float


class HealthTracker:
    """Turns a stream of probe results into health changes, Kubernetes-style: an unhealthy
    target needs `success_threshold` consecutive successes to turn healthy, a healthy one
    `failure_threshold` consecutive failures to turn unhealthy. Pure: no I/O, no clock."""

    __slots__ = ("_failures", "_successes", "failure_threshold", "healthy", "success_threshold")

    def __init__(self, spec: ProbeSpec, healthy: bool) -> None:
        self.success_threshold = spec.success_threshold
        self.failure_threshold = spec.failure_threshold
        self.healthy = healthy
        self._successes = 0
        self._failures = 0

    def observe(self, ok: bool) -> bool | None:
        """Record one probe result; returns the new health if it changed, else None."""
        if ok:
            self._failures = 0
            self._successes += 1
            if not self.healthy and self._successes >= self.success_threshold:
                return self._set(True)
        else:
            self._successes = 0
            self._failures += 1
            if self.healthy and self._failures >= self.failure_threshold:
                return self._set(False)
        return None

    def force(self, healthy: bool) -> None:
        """Set health from outside (e.g. the proxy saw connect failures); counting restarts."""
        self._set(healthy)

    def _set(self, healthy: bool) -> bool:
        self.healthy = healthy
        self._successes = 0
        self._failures = 0
        return healthy


class ReadinessWatch:
    """Probes one replica's readiness until cancelled and reports each change to `on_change`.

    Pace: every `startup_poll_s` while not ready (a replica takes traffic as soon as it
    answers), every `spec.period` while ready. `report_failure` takes the replica out at once
    and switches to the fast pace, so the probe brings it back as soon as it answers again.

    The first wait at the ready pace is a random part of the period: replicas that turned ready
    together (a router starting with 1,000 of them) would otherwise be probed in the same
    instant every period, a burst the requests of that moment wait behind.

    With `share`, watches of the same address and probe share recent results (`SharedProbes`):
    a server behind many deployments gets one probe, not one per deployment. After a reported
    failure the next probe is always its own.
    """

    def __init__(
        self,
        host: str,
        port: int,
        spec: ProbeSpec,
        startup_poll_s: float,
        on_change: Callable[[bool], None],
        share: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.spec = spec
        self.startup_poll_s = startup_poll_s
        self.tracker = HealthTracker(spec, healthy=False)
        self._on_change = on_change
        self._waiting: asyncio.Future[bool] | None = None  # a pace wait under way
        self._phase_chosen = False  # the ready pace's random first wait was taken
        self.share = share
        self._own_probe_next = False  # a failure was reported: no result from before it

    @property
    def ready(self) -> bool:
        return self.tracker.healthy

    async def run(self) -> None:
        """Wait a turn, probe, repeat (cancel the task to stop)."""
        while True:
            await self._wait_turn()
            await self.probe_once()

    async def probe_once(self) -> None:
        spec = self.spec
        own = self._own_probe_next
        self._own_probe_next = False
        # A kept connection only confirms a ready replica. One not ready (or just reported
        # refusing connections) shows on a new connection that it takes new ones: kept
        # connections still answering say nothing about that.
        reuse = self.tracker.healthy and not own
        if self.share:
            pace = spec.period if self.tracker.healthy else self.startup_poll_s
            max_age = 0.0 if own else min(SHARED_RESULT_MAX_AGE_S, pace / 2)
            ok = await SharedProbes.for_running_loop().probe(
                self.host, self.port, spec.path, spec.timeout, max_age, reuse=reuse
            )
        else:
            ok = await probe_http(self.host, self.port, spec.path, spec.timeout, reuse=reuse)
        change = self.tracker.observe(ok)
        if change is not None:
            self._on_change(change)

    def report_failure(self) -> bool:
        """Mark not ready (counting starts over); True if it was ready until now."""
        was_ready = self.tracker.healthy
        self.tracker.force(False)
        self._own_probe_next = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(True)  # cut a long ready-pace wait short
        return was_ready

    async def _wait_turn(self) -> None:
        # A future and a timer rather than asyncio.timeout() around an Event: no cancellation
        # and no exception per turn (about 36 against 45 us of user CPU a turn, 1,000 watches
        # of one server on uvloop; a router watching 1,000 replicas takes 100 turns a second).
        loop = asyncio.get_running_loop()
        while True:
            waiting = self._waiting = loop.create_future()
            timer = loop.call_later(self._interval(), _settle, waiting, False)
            try:
                cut_short = await waiting
            finally:
                timer.cancel()
                self._waiting = None
            if not cut_short:
                return

    def _interval(self) -> float:
        if not self.tracker.healthy:
            self._phase_chosen = False
            return self.startup_poll_s
        if self._phase_chosen:
            return self.spec.period
        self._phase_chosen = True
        return self.spec.period * random.uniform(0.05, 1.0)


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)
