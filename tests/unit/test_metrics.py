"""The /metrics exposition, built from real SlotTable and DeploymentStats objects at scrape time."""

from __future__ import annotations

from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferfront.routing.slots import Replica, SlotTable
from inferfront.telemetry.metrics import (
    CONTENT_TYPE,
    REPLICA_STATES,
    DeploymentView,
    Metrics,
    cumulative_buckets,
)
from inferfront.telemetry.stats import LATENCY_BUCKETS, DeploymentStats, Histogram

SampleKey = tuple[str, frozenset[tuple[str, str]]]


class FakeDeployment:
    """A DeploymentView over a real routing table and real stats; lifecycle states are given."""

    def __init__(
        self,
        endpoint: str,
        name: str,
        replicas: dict[str, str],
        limit: int = 2,
        max_queued: int = 10,
        scaling: dict[str, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self.table = SlotTable(limit=limit, max_queued=max_queued)
        self.stats = DeploymentStats()
        self.states = dict(replicas)
        self.scaling = scaling
        for index, (replica, state) in enumerate(replicas.items()):
            if state != "starting":  # a starting replica is not in the routing table yet
                self.table.add(Replica(replica, "127.0.0.1", 9100 + index), ready=state == "ready")

    def replica_states(self) -> dict[str, str]:
        return dict(self.states)

    def scaling_snapshot(self) -> dict[str, Any] | None:
        return self.scaling


class Waiter:
    def __init__(self) -> None:
        self.active = True
        self.granted: list[Replica] = []

    def grant(self, replica: Replica) -> None:
        self.granted.append(replica)


def busy_deployment() -> FakeDeployment:
    """r0 and r1 hold 2 requests each, r2 is unready, r3 starting; one request waits."""
    view = FakeDeployment(
        "iris", "blue", {"r0": "ready", "r1": "ready", "r2": "unready", "r3": "starting"}
    )
    table = view.table
    taken = [table.try_acquire() for _ in range(4)]
    assert [r.name for r in taken if r] == ["r0", "r1", "r0", "r1"]
    assert table.try_acquire() is None  # every slot is taken
    table.enqueue(Waiter())
    stats = view.stats
    stats.record(200, queue_s=0.0002, upstream_s=0.02, total_s=0.021)
    stats.record(200, queue_s=0.3, upstream_s=1.5, total_s=1.8)
    stats.record(503, queue_s=5.0, upstream_s=0.0, total_s=5.0)
    stats.retries = 2
    return view


def scrape(metrics: Metrics) -> dict[SampleKey, float]:
    body, _ = metrics.render()
    return parse(body.decode())


def parse(text: str) -> dict[SampleKey, float]:
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[SampleKey, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def family_names(metrics: Metrics) -> set[str]:
    body, _ = metrics.render()
    return {family.name for family in text_string_to_metric_families(body.decode())}


def test_fake_deployment_satisfies_the_protocol() -> None:
    view: DeploymentView = busy_deployment()
    assert view.table.inflight == 4


def test_requests_by_code_and_retries() -> None:
    samples = scrape(Metrics(lambda: [busy_deployment()]))
    dep = {"endpoint": "iris", "deployment": "blue"}
    assert value(samples, "inferfront_requests_total", **dep, code="200") == 2
    assert value(samples, "inferfront_requests_total", **dep, code="503") == 1
    assert value(samples, "inferfront_retries_total", **dep) == 2


def test_histograms_are_cumulative_with_count_and_sum() -> None:
    samples = scrape(Metrics(lambda: [busy_deployment()]))
    dep = {"endpoint": "iris", "deployment": "blue"}
    name = "inferfront_request_queue_wait_seconds"
    # queue waits were 0.0002, 0.3 and 5.0 seconds
    assert value(samples, name + "_bucket", **dep, le="0.0005") == 1
    assert value(samples, name + "_bucket", **dep, le="0.25") == 1
    assert value(samples, name + "_bucket", **dep, le="0.5") == 2
    assert value(samples, name + "_bucket", **dep, le="5.0") == 3
    assert value(samples, name + "_bucket", **dep, le="+Inf") == 3
    assert value(samples, name + "_count", **dep) == 3
    assert value(samples, name + "_sum", **dep) == pytest.approx(5.3002)
    bucket_count = sum(1 for sample_name, labels in samples if sample_name == name + "_bucket")
    assert bucket_count == len(LATENCY_BUCKETS) + 1
    assert value(samples, "inferfront_request_upstream_seconds_count", **dep) == 3
    upstream = "inferfront_request_upstream_seconds"  # 0.02, 1.5 and 0.0 seconds
    assert value(samples, upstream + "_bucket", **dep, le="0.0005") == 1
    assert value(samples, upstream + "_bucket", **dep, le="0.025") == 2
    assert value(samples, upstream + "_bucket", **dep, le="1.0") == 2
    assert value(samples, upstream + "_bucket", **dep, le="2.5") == 3
    assert value(samples, upstream + "_sum", **dep) == pytest.approx(1.52)
    assert value(samples, "inferfront_request_duration_seconds_bucket", **dep, le="0.025") == 1
    assert value(samples, "inferfront_request_duration_seconds_sum", **dep) == pytest.approx(6.821)


def test_routing_table_gauges() -> None:
    samples = scrape(Metrics(lambda: [busy_deployment()]))
    dep = {"endpoint": "iris", "deployment": "blue"}
    assert value(samples, "inferfront_queue_length", **dep) == 1
    assert value(samples, "inferfront_replicas_ready", **dep) == 2
    assert value(samples, "inferfront_replica_inflight", **dep, replica="r0") == 2
    assert value(samples, "inferfront_replica_inflight", **dep, replica="r1") == 2
    assert value(samples, "inferfront_replica_inflight", **dep, replica="r2") == 0
    states = {
        state: value(samples, "inferfront_replicas", **dep, state=state) for state in REPLICA_STATES
    }
    assert states == {"starting": 1, "ready": 2, "unready": 1, "draining": 0}


def test_values_are_read_live_at_every_scrape() -> None:
    view = busy_deployment()
    metrics = Metrics(lambda: [view])
    dep = {"endpoint": "iris", "deployment": "blue"}
    assert value(scrape(metrics), "inferfront_queue_length", **dep) == 1
    view.table.release(view.table.replicas["r0"])  # the waiter gets r0's slot
    view.stats.record(200, 0.0, 0.01, 0.01)
    view.states["r3"] = "ready"
    samples = scrape(metrics)
    assert value(samples, "inferfront_queue_length", **dep) == 0
    assert value(samples, "inferfront_requests_total", **dep, code="200") == 3
    assert value(samples, "inferfront_replicas", **dep, state="starting") == 0
    assert value(samples, "inferfront_replicas", **dep, state="ready") == 3


def test_several_deployments_and_endpoints_are_labelled_apart() -> None:
    blue = busy_deployment()
    green = FakeDeployment("iris", "green", {"g0": "ready"})
    digits = FakeDeployment("digits", "default", {"d0": "draining"})
    green.stats.record(404, 0.0, 0.001, 0.001)
    samples = scrape(Metrics(lambda: [blue, green, digits]))
    green_labels = {"endpoint": "iris", "deployment": "green"}
    digits_labels = {"endpoint": "digits", "deployment": "default"}
    assert value(samples, "inferfront_requests_total", **green_labels, code="404") == 1
    assert value(samples, "inferfront_replicas_ready", **green_labels) == 1
    assert value(samples, "inferfront_replicas", **digits_labels, state="draining") == 1
    assert value(samples, "inferfront_request_duration_seconds_count", **digits_labels) == 0
    assert value(samples, "inferfront_queue_length", endpoint="iris", deployment="blue") == 1


def test_scaling_metrics_only_for_autoscaled_deployments() -> None:
    plain = busy_deployment()
    assert not family_names(Metrics(lambda: [plain])) & {
        "inferfront_desired_replicas",
        "inferfront_utilization",
        "inferfront_utilization_average",
        "inferfront_scaling_decisions",
    }
    scaled = FakeDeployment(
        "iris",
        "green",
        {"g0": "ready", "g1": "starting"},
        scaling={
            "current": 2,
            "ready": 1,
            "starting": 1,
            "desired": 3,
            "utilization": 0.85,
            "utilization_avg": 0.72,
            "decisions": [
                {"at": "2026-01-01T00:00:00.000Z", "from": 1, "to": 2, "reason": "utilization"},
                {"at": "2026-01-01T00:00:10.000Z", "from": 2, "to": 3, "reason": "utilization"},
            ],
        },
    )
    samples = scrape(Metrics(lambda: [plain, scaled]))
    dep = {"endpoint": "iris", "deployment": "green"}
    assert value(samples, "inferfront_desired_replicas", **dep) == 3
    assert value(samples, "inferfront_utilization", **dep) == pytest.approx(0.85)
    assert value(samples, "inferfront_utilization_average", **dep) == pytest.approx(0.72)
    assert value(samples, "inferfront_scaling_decisions_total", **dep) == 2
    blue = frozenset({"endpoint": "iris", "deployment": "blue"}.items())
    assert ("inferfront_desired_replicas", blue) not in samples

    assert scaled.scaling is not None
    scaled.scaling["decisions_total"] = 41  # a bounded history with a running total
    samples = scrape(Metrics(lambda: [scaled]))
    assert value(samples, "inferfront_scaling_decisions_total", **dep) == 41


def test_extra_gauges_are_prefixed_and_grouped() -> None:
    def extra() -> list[tuple[str, str, float, dict[str, str]]]:
        return [
            ("router_open_connections", "Client connections open.", 7, {}),
            ("router_instance_info", "This router instance.", 1, {"instance": "fe-0"}),
            ("inferfront_router_peers", "Peers by state.", 2, {"state": "up"}),
            ("inferfront_router_peers", "Peers by state.", 1, {"state": "down"}),
        ]

    samples = scrape(Metrics(lambda: [], extra))
    assert value(samples, "inferfront_router_open_connections") == 7
    assert value(samples, "inferfront_router_instance_info", instance="fe-0") == 1
    assert value(samples, "inferfront_router_peers", state="up") == 2
    assert value(samples, "inferfront_router_peers", state="down") == 1


def test_no_deployments_still_renders() -> None:
    body, content_type = Metrics(lambda: []).render()
    assert content_type == CONTENT_TYPE
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "inferfront_queue_length" in {
        family.name for family in text_string_to_metric_families(body.decode())
    }


def test_uses_its_own_registry_not_the_global_one() -> None:
    metrics = Metrics(lambda: [busy_deployment()])
    assert metrics.registry is not prometheus_client.REGISTRY
    assert b"inferfront_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    # Registering twice in different instances must not clash either.
    Metrics(lambda: []).render()


def test_provider_is_not_called_until_scraped() -> None:
    calls = []

    def provider() -> list[DeploymentView]:
        calls.append(1)
        return []

    metrics = Metrics(provider)
    assert calls == []
    metrics.render()
    assert calls == [1]


def test_cumulative_buckets() -> None:
    histogram = Histogram()
    for seconds in (0.0001, 0.0005, 0.003, 0.003, 100.0):
        histogram.observe(seconds)
    buckets = cumulative_buckets(histogram)
    assert buckets[0] == ("0.0005", 2)  # le is inclusive: 0.0005 falls in the first bucket
    assert dict(buckets)["0.005"] == 4
    assert dict(buckets)["60.0"] == 4
    assert buckets[-1] == ("+Inf", 5)
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)


def test_requests_that_did_not_wait_count_in_the_first_queue_wait_bucket() -> None:
    # A zero wait is not written per request; the histogram still counts every request.
    stats = DeploymentStats()
    stats.record(200, 0.0, 0.01, 0.01)
    stats.record(200, 0.0, 0.02, 0.02)
    stats.record(503, 0.3, 0.0, 0.3)
    queue_wait = stats.queue_wait
    assert queue_wait.count == 3 and queue_wait.sum == pytest.approx(0.3)
    assert queue_wait.counts[0] == 2
    assert queue_wait.counts[LATENCY_BUCKETS.index(0.5)] == 1
    assert stats.upstream.count == 3 and stats.total.count == 3
    assert cumulative_buckets(queue_wait)[-1] == ("+Inf", 3)
