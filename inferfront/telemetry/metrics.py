"""Prometheus exposition built from the plain hot-path counters at scrape time.

The request path only bumps integers in `DeploymentStats` and `SlotTable`; this module turns
them into metric families when /metrics is scraped, so serving a request costs nothing extra.
Everything lives in a private `CollectorRegistry`: the process-global registry would mix in
whatever other libraries register and would survive between tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from inferfront.routing.slots import SlotTable
from inferfront.telemetry.stats import LATENCY_BUCKETS, DeploymentStats, Histogram

PREFIX = "inferfront_"

# What generate_latest() writes. Not prometheus_client.CONTENT_TYPE_LATEST: newer releases point
# that at text format 1.0.0, which generate_latest() does not produce.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Every lifecycle state is exported, zero included, so dashboards see a steady set of series.
REPLICA_STATES: tuple[str, ...] = ("starting", "ready", "unready", "draining")

# Bucket bounds as Prometheus writes them ("0.0005", ..., "+Inf"), computed once.
_LE_LABELS: tuple[str, ...] = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")

ExtraGauge = tuple[str, str, float, dict[str, str]]  # (name, help, value, labels)


class DeploymentView(Protocol):
    """What the metrics and admin views need to know about one deployment."""

    endpoint: str
    name: str
    table: SlotTable
    stats: DeploymentStats

    def replica_states(self) -> dict[str, str]:
        """Replica name -> "starting" | "ready" | "unready" | "draining"."""
        ...

    def scaling_snapshot(self) -> dict[str, Any] | None:
        """None until autoscaling exists for the deployment; see module docs of scaling."""
        ...


def cumulative_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Per-bucket counts (last one +Inf) -> Prometheus cumulative (le, count) pairs."""
    running = 0
    buckets = []
    for le, count in zip(_LE_LABELS, histogram.counts, strict=True):
        running += count
        buckets.append((le, running))
    return buckets


class _Families:
    """The metric families of one scrape, filled deployment by deployment."""

    def __init__(self) -> None:
        dep = ["endpoint", "deployment"]
        p = PREFIX
        self.requests = CounterMetricFamily(
            p + "requests_total", "Responses sent, by status code.", labels=[*dep, "code"]
        )
        self.queue_wait = HistogramMetricFamily(
            p + "request_queue_wait_seconds", "Time spent waiting for a replica slot.", labels=dep
        )
        self.upstream = HistogramMetricFamily(
            p + "request_upstream_seconds",
            "Time from slot granted to response complete.",
            labels=dep,
        )
        self.duration = HistogramMetricFamily(
            p + "request_duration_seconds",
            "Time from request head parsed to response complete.",
            labels=dep,
        )
        self.queue_length = GaugeMetricFamily(
            p + "queue_length", "Requests waiting for a replica slot.", labels=dep
        )
        self.replica_inflight = GaugeMetricFamily(
            p + "replica_inflight", "Requests in flight per replica.", labels=[*dep, "replica"]
        )
        self.replicas_ready = GaugeMetricFamily(
            p + "replicas_ready", "Replicas ready and taking traffic.", labels=dep
        )
        self.replicas = GaugeMetricFamily(
            p + "replicas", "Replicas by lifecycle state.", labels=[*dep, "state"]
        )
        self.retries = CounterMetricFamily(
            p + "retries_total", "Requests retried on another replica.", labels=dep
        )
        self.desired = GaugeMetricFamily(
            p + "desired_replicas", "Replica count the autoscaler asks for.", labels=dep
        )
        self.utilization = GaugeMetricFamily(
            p + "utilization", "Current utilization (in flight / capacity).", labels=dep
        )
        self.utilization_avg = GaugeMetricFamily(
            p + "utilization_average",
            "Utilization averaged over the autoscaler window.",
            labels=dep,
        )
        self.decisions = CounterMetricFamily(
            p + "scaling_decisions_total", "Scaling decisions taken.", labels=dep
        )

    def add(self, view: DeploymentView) -> None:
        dep = [view.endpoint, view.name]
        self._add_requests(dep, view.stats)
        self._add_table(dep, view.table)
        self._add_states(dep, view.replica_states())
        snapshot = view.scaling_snapshot()
        if snapshot is not None:
            self._add_scaling(dep, snapshot)

    def _add_requests(self, dep: list[str], stats: DeploymentStats) -> None:
        for code, count in sorted(stats.responses.items()):
            self.requests.add_metric([*dep, str(code)], count)
        for family, histogram in (
            (self.queue_wait, stats.queue_wait),
            (self.upstream, stats.upstream),
            (self.duration, stats.total),
        ):
            family.add_metric(dep, cumulative_buckets(histogram), histogram.sum)
        self.retries.add_metric(dep, stats.retries)

    def _add_table(self, dep: list[str], table: SlotTable) -> None:
        self.queue_length.add_metric(dep, table.queued)
        self.replicas_ready.add_metric(dep, table.ready_count)
        for replica in table.replicas.values():
            self.replica_inflight.add_metric([*dep, replica.name], replica.inflight)

    def _add_states(self, dep: list[str], states: dict[str, str]) -> None:
        counts = dict.fromkeys(REPLICA_STATES, 0)
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            self.replicas.add_metric([*dep, state], count)

    def _add_scaling(self, dep: list[str], snapshot: dict[str, Any]) -> None:
        for family, key in (
            (self.desired, "desired"),
            (self.utilization, "utilization"),
            (self.utilization_avg, "utilization_avg"),
        ):
            value = snapshot.get(key)
            if value is not None:
                family.add_metric(dep, float(value))
        # "decisions" is a recent history (possibly bounded); a monotonic "decisions_total",
        # when the snapshot carries one, is the right counter value.
        total = snapshot.get("decisions_total")
        if total is None:
            total = len(snapshot.get("decisions") or ())
        self.decisions.add_metric(dep, total)

    def __iter__(self) -> Iterator[Metric]:
        yield from (self.requests, self.queue_wait, self.upstream, self.duration)
        yield from (self.queue_length, self.replica_inflight, self.replicas_ready, self.replicas)
        yield self.retries
        for family in (self.desired, self.utilization, self.utilization_avg, self.decisions):
            if family.samples:  # only once some deployment autoscales
                yield family


def _extra_families(gauges: Iterable[ExtraGauge]) -> list[Metric]:
    """Group caller-supplied gauges by name; the first help text seen for a name wins."""
    families: dict[str, Metric] = {}
    for name, help_text, value, labels in gauges:
        full_name = name if name.startswith(PREFIX) else PREFIX + name
        family = families.get(full_name)
        if family is None:
            family = families[full_name] = Metric(full_name, help_text, "gauge")
        family.add_sample(full_name, dict(labels), float(value))
    return list(families.values())


class _Collector:
    """prometheus_client custom collector; reads the live objects on every collect()."""

    def __init__(
        self,
        deployments: Callable[[], Iterable[DeploymentView]],
        extra: Callable[[], Iterable[ExtraGauge]] | None,
    ) -> None:
        self._deployments = deployments
        self._extra = extra

    def describe(self) -> list[Metric]:
        # Registering must not call collect() (the provider may not be ready yet).
        return []

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for view in self._deployments():
            families.add(view)
        yield from families
        if self._extra is not None:
            yield from _extra_families(self._extra())


class Metrics:
    """The router's /metrics: deployment metrics plus optional extra gauges."""

    def __init__(
        self,
        deployments: Callable[[], Iterable[DeploymentView]],
        extra: Callable[[], Iterable[ExtraGauge]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(deployments, extra))

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE
