"""The command line as a user runs it: check, plan, and serve refusing a bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

TRACES = REPO_ROOT.parent / "shared" / "traces"


def inferfront(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferfront", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_summarizes_a_good_file() -> None:
    result = inferfront("check", "-c", "examples/quickstart/inferfront.yaml")
    assert result.returncode == 0, result.stderr
    assert "quickstart" in result.stdout
    assert "blue" in result.stdout


def test_check_names_file_place_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "endpoints:\n"
        "  - name: my-endpoint\n"
        "    auth_mode: none\n"
        "    deployments:\n"
        "      - name: blue\n"
        '        urls: ["http://127.0.0.1:5001"]\n'
        "        request_settings: {request_timout_ms: 100}\n"
    )
    result = inferfront("check", "-c", str(bad))
    assert result.returncode == 1
    assert f"{bad}: endpoints[0].deployments[0].request_settings.request_timout_ms" in result.stderr
    assert "did you mean 'request_timeout_ms'" in result.stderr


def test_serve_refuses_a_bad_file_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: []\n")
    result = inferfront("serve", "-c", str(bad), "--port", "0", "--admin-port", "0")
    assert result.returncode == 1
    assert "endpoints" in result.stderr


def test_plan_from_rates_uses_the_seed_formula() -> None:
    # The seed's example: 20 requests/s of 10 s each, 1 per replica, 70% target -> 286.
    result = inferfront("plan", "--rps", "20", "--latency-ms", "10000")
    assert result.returncode == 0, result.stderr
    assert "replicas = ceil(285.7143) = 286" in result.stdout


def test_plan_needs_rates_or_a_trace() -> None:
    result = inferfront("plan", "--rps", "20")
    assert result.returncode == 2
    assert "--latency-ms" in result.stderr


@pytest.mark.skipif(not TRACES.exists(), reason="shared traces not present")
def test_plan_over_a_real_trace_prints_replicas_per_minute() -> None:
    trace = TRACES / "AzureLLMInferenceTrace_conv_2023.csv"
    result = inferfront("plan", "--trace", str(trace))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("service time = 0.2 ms x prompt tokens")
    rows = [line for line in lines if line.strip().startswith("0:")]
    assert len(rows) >= 50  # about an hour in one-minute rows
    assert all(int(row.split()[-1]) >= 1 for row in rows)


MISSING_COMMAND_DEPLOYMENT = (
    '      - name: blue\n        command: [no-such-model-server, --port, "{port}"]\n'
)


def endpoint_file(path: Path, deployments: str) -> Path:
    """A config file with one endpoint, `my-endpoint`, sending all traffic to `blue`."""
    path.write_text(
        "endpoints:\n"
        "  - name: my-endpoint\n"
        "    auth_mode: none\n"
        "    traffic: {blue: 100}\n"
        "    deployments:\n" + deployments
    )
    return path


def test_serve_names_a_replica_command_that_cannot_start(tmp_path: Path) -> None:
    config = endpoint_file(tmp_path / "missing.yaml", MISSING_COMMAND_DEPLOYMENT)
    result = inferfront("serve", "-c", str(config), "--port", "0", "--admin-port", "0")
    assert result.returncode == 1
    assert "deployment blue: cannot start `no-such-model-server --port {port}`" in result.stderr
    assert "Traceback" not in result.stderr


def test_separate_instances_refuse_replicas_they_would_each_start(tmp_path: Path) -> None:
    green = "      - name: green\n        urls: [http://127.0.0.1:9]\n"
    config = endpoint_file(tmp_path / "local.yaml", green + MISSING_COMMAND_DEPLOYMENT)
    result = inferfront(
        "serve",
        "-c",
        str(config),
        "--port",
        "0",
        "--admin-port",
        "0",
        "--cluster-dir",
        str(tmp_path / "cluster"),
    )
    assert result.returncode == 1
    assert f"{config}: endpoints[0].deployments[1].command: deployment 'blue'" in result.stderr
    assert "--workers N" in result.stderr
    assert "cannot start" not in result.stderr  # refused before anything started
    assert not (tmp_path / "cluster").exists()


def test_serve_says_when_its_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = inferfront(
            "serve", "-c", "examples/configs/minimal.yaml", "--port", str(port), "--admin-port", "0"
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr
