"""Capacity planner: the seed's sizing formula, and per-bucket plans over each trace format."""

import json
from pathlib import Path

import pytest

from inferfront.scaling.planner import (
    PlanRow,
    detect_format,
    format_plan_table,
    plan_assumptions,
    plan_replicas,
    plan_trace,
)

REAL_AZURE_TRACE = Path("/work/shared/traces/AzureLLMInferenceTrace_conv_2023.csv")


# -- plan_replicas ----------------------------------------------------------------------------


def test_seed_example():
    # The seed: 20 rps, 10 s per request, 1 per container, 70 % -> ceil(285.71) = 286.
    replicas, explanation = plan_replicas(20, 10_000)
    assert replicas == 286
    assert "20 req/s x 10 s = 200 requests" in explanation
    assert "200 / 0.7 = 285.7143 slots" in explanation
    assert explanation.splitlines()[-1].strip() == "replicas = ceil(285.7143) = 286"


@pytest.mark.parametrize(
    ("rps", "latency_ms", "concurrency", "target", "expected"),
    [
        (7, 1000, 1, 0.7, 10),  # 7 / 0.7 is 10.000000000000002 in floats: still 10
        (100, 50, 1, 0.7, 8),  # 5 in flight / 0.7 = 7.14
        (100, 50, 4, 0.7, 2),  # 7.14 slots / 4 per replica = 1.79
        (10, 1000, 1, 1.0, 10),
        (0, 1000, 1, 0.7, 0),
    ],
)
def test_plan_replicas(rps, latency_ms, concurrency, target, expected):
    assert plan_replicas(rps, latency_ms, concurrency, target)[0] == expected


@pytest.mark.parametrize(
    "args", [(-1, 100, 1, 0.7), (1, -1, 1, 0.7), (1, 100, 0, 0.7), (1, 100, 1, 0.0)]
)
def test_plan_replicas_rejects_bad_input(args):
    with pytest.raises(ValueError):
        plan_replicas(*args)


# -- traces -----------------------------------------------------------------------------------


def write_azure(tmp_path: Path) -> Path:
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,1000,100\n"  # t = 0: 0.2 + 2.0 = 2.2 s
        "2023-11-16 18:15:56.6805900,500,50\n"  # t = 10: 0.1 + 1.0 = 1.1 s
        "2023-11-16 18:17:16.1805900,0,300\n"  # t = 89.5: 6.0 s
    )
    return path


def test_azure_trace_buckets_requests_and_models_service_time(tmp_path):
    rows = plan_trace(write_azure(tmp_path), bucket_s=60)
    assert [(r.start_s, r.requests) for r in rows] == [(0.0, 2), (60.0, 1)]
    assert rows[0].rps == pytest.approx(2 / 60)
    assert rows[0].concurrency == pytest.approx(3.3 / 60)
    assert rows[1].concurrency == pytest.approx(6.0 / 60)
    assert [r.replicas for r in rows] == [1, 1]


def test_service_time_model_is_configurable(tmp_path):
    # 10 ms per prompt token: (1000 + 500) x 10 ms + 150 x 20 ms = 18 s of work in a 20 s bucket
    rows = plan_trace(write_azure(tmp_path), bucket_s=20, prefill_ms_per_token=10.0)
    assert rows[0].concurrency == pytest.approx((15.0 + 3.0) / 20)
    assert rows[0].replicas == 2  # 0.9 / 0.7 = 1.29
    fixed = plan_trace(write_azure(tmp_path), bucket_s=20, latency_ms=7000)
    assert fixed[0].concurrency == pytest.approx(14.0 / 20)
    assert fixed[0].replicas == 1  # 0.7 / 0.7 exactly


def test_empty_buckets_between_arrivals_are_kept(tmp_path):
    rows = plan_trace(write_azure(tmp_path), bucket_s=30)
    assert [(r.start_s, r.requests, r.replicas) for r in rows] == [
        (0.0, 2, 1),
        (30.0, 0, 0),
        (60.0, 1, 1),
    ]


def test_mooncake_trace(tmp_path):
    path = tmp_path / "mooncake.jsonl"
    records = [
        {"timestamp": 0, "input_length": 5000, "output_length": 100, "hash_ids": [0, 1]},
        {"timestamp": 3000, "input_length": 5000, "output_length": 100, "hash_ids": [0, 2]},
        {"timestamp": 61000, "input_length": 1000, "output_length": 10, "hash_ids": [3]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    rows = plan_trace(path, bucket_s=60, target=0.5, concurrency=2)
    assert [(r.start_s, r.requests) for r in rows] == [(0.0, 2), (60.0, 1)]
    # bucket 0: 2 x (1.0 + 2.0) s = 6 s of work -> concurrency 0.1 -> ceil(0.1 / 0.5 / 2) = 1
    assert rows[0].concurrency == pytest.approx(0.1)
    assert rows[0].replicas == 1


def write_servegen(tmp_path: Path) -> Path:
    path = tmp_path / "servegen.csv"
    path.write_text(
        "model,window_start_s,total_rate_rps,active_clients\n"
        "small,0,10.0,3\n"
        "small,600,20.0,4\n"
        "small,1200,0.0,0\n"  # missing data
        "large,0,100.0,9\n"
        "large,600,50.0,9\n"
    )
    return path


def test_servegen_rate_trace_uses_its_own_windows_and_a_fixed_latency(tmp_path):
    rows = plan_trace(write_servegen(tmp_path), model="small", latency_ms=2000)
    assert [(r.start_s, r.requests, r.rps) for r in rows] == [
        (0.0, 6000, 10.0),
        (600.0, 12000, 20.0),
        (1200.0, 0, 0.0),
    ]
    assert rows[1].concurrency == pytest.approx(40.0)  # 20 rps x 2 s
    assert rows[1].replicas == 58  # ceil(40 / 0.7) = ceil(57.14)


def test_servegen_sums_models_without_a_filter_and_rebuckets(tmp_path):
    rows = plan_trace(write_servegen(tmp_path), bucket_s=1200)  # default latency 1 s
    assert [(r.start_s, r.rps) for r in rows] == [(0.0, 90.0), (1200.0, 0.0)]
    assert rows[0].replicas == 129  # ceil(90 / 0.7) = ceil(128.57)
    finer = plan_trace(write_servegen(tmp_path), model="large", bucket_s=300)
    assert [r.rps for r in finer] == [100.0, 100.0, 50.0, 50.0]


def test_servegen_unknown_model_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="large, small"):
        plan_trace(write_servegen(tmp_path), model="nope")


def test_format_detection(tmp_path):
    assert detect_format(write_azure(tmp_path)) == "azure"
    assert detect_format(write_servegen(tmp_path)) == "servegen"
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an Azure"):
        plan_trace(other)


def test_format_plan_table():
    rows = [
        PlanRow(0.0, 120, 2.0, 1.5, 3),
        PlanRow(60.0, 600, 10.0, 7.0, 10),
        PlanRow(3600.0, 0, 0.0, 0.0, 0),
    ]
    table = format_plan_table(rows).splitlines()
    assert table[0].split() == ["start", "requests", "rps", "concurrency", "replicas"]
    assert table[3].split() == ["0:01:00", "600", "10.00", "7.00", "10"]
    assert table[4].split()[0] == "1:00:00"
    assert table[-1].startswith("peak 10 replicas at 0:01:00")
    assert format_plan_table([]).splitlines()[0] == table[0]


def test_plan_assumptions_states_the_model():
    assert "0.2 ms x prompt tokens + 20 ms x generated tokens" in plan_assumptions()
    assert "fixed at 500 ms" in plan_assumptions(latency_ms=500)


@pytest.mark.skipif(not REAL_AZURE_TRACE.exists(), reason="real Azure trace not present")
def test_real_azure_trace_smoke():
    rows = plan_trace(REAL_AZURE_TRACE)
    assert 55 <= len(rows) <= 60  # 58 minutes in 60 s buckets
    assert sum(r.requests for r in rows) == 19_366
    assert all(r.replicas >= 1 for r in rows)
    assert "peak" in format_plan_table(rows)
