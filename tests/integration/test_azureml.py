"""Azure ML's own model server (azmlinfsrv) behind the router: the example in examples/azureml
(score.py, inferfront.yaml) run as it is, with real azmlinfsrv replicas started by the router.

azmlinfsrv takes a few seconds to start (gunicorn, the scikit-learn import, init()): every wait
below polls the admin API with a generous deadline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import REPO_ROOT, wait_until
from tests.router import RouterFactory, RouterHandle

pytest.importorskip("azureml_inference_server_http", reason="the optional extra `azureml`")

EXAMPLE = REPO_ROOT / "examples" / "azureml"
ENDPOINT = "azureml"
DEPLOYMENT = "blue"
SCORE_URL = f"/api/v1/endpoint/{ENDPOINT}/score"
START_WAIT = 120.0  # azmlinfsrv replicas starting on a busy 2-core machine
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
RUN_FAILED_BODY = {
    "message": "An unexpected error occurred in scoring script. Check the logs for more info."
}


def example_config() -> dict[str, Any]:
    """examples/azureml/inferfront.yaml, with `cwd` made absolute: the test writes the
    configuration into a temporary folder, and a relative cwd resolves against the file."""
    config = yaml.safe_load((EXAMPLE / "inferfront.yaml").read_text())
    for endpoint in config["endpoints"]:
        for deployment in endpoint["deployments"]:
            deployment["cwd"] = str(EXAMPLE)
    config["server"] = {"access_log": False}
    return config


def scaling(handle: RouterHandle) -> dict[str, Any]:
    return handle.deployment(ENDPOINT, DEPLOYMENT)["scaling"]


@pytest.fixture(scope="module")
def azureml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterHandle]:
    factory = RouterFactory(tmp_path_factory.mktemp("azureml"))
    try:
        handle = factory(example_config())
        wait_until(
            lambda: scaling(handle)["ready"] >= 1,
            timeout=START_WAIT,
            interval=0.1,
            message="the first azmlinfsrv replica answers GET / (init() done)",
        )
        yield handle
    finally:
        factory.stop_all()


@pytest.fixture
def client(azureml: RouterHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=azureml.url, timeout=30.0) as http:
        yield http


def test_prediction_round_trips(client: httpx.Client) -> None:
    response = client.post(SCORE_URL, json={"data": IRIS_ROWS})

    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": ["setosa", "virginica", "versicolor"],
        "classes": ["setosa", "versicolor", "virginica"],
    }
    # azmlinfsrv's own headers come through the router.
    assert response.headers["x-ms-run-function-failed"] == "False"
    assert response.headers["x-ms-server-version"].startswith("azmlinfsrv/")
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0


def test_run_that_raises_passes_the_model_servers_error_through(
    azureml: RouterHandle, client: httpx.Client
) -> None:
    replica = "http://" + azureml.deployment(ENDPOINT, DEPLOYMENT)["replicas"][0]["address"]
    direct = httpx.post(f"{replica}/score", json={"raise": True}, timeout=30.0)

    routed = client.post(SCORE_URL, json={"raise": True})

    for response in (direct, routed):
        assert response.status_code == 500
        assert response.json() == RUN_FAILED_BODY
        assert response.headers["x-ms-run-function-failed"] == "True"
    assert routed.content == direct.content
    assert routed.headers["content-type"] == direct.headers["content-type"]
    # The replica is still fine: run() raising is the request's failure, not the replica's.
    assert client.post(SCORE_URL, json={"data": IRIS_ROWS[:1]}).status_code == 200


class SlowClients:
    """Threads looping slow scoring requests (run() sleeps) through the router until stopped."""

    def __init__(self, url: str, clients: int, sleep_ms: int) -> None:
        self.url = url
        self.body = {"sleep_ms": sleep_ms, "data": IRIS_ROWS[:1]}
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=60.0) as http:
            while not self._stop.is_set():
                try:
                    status = http.post(f"{self.url}{SCORE_URL}", json=self.body).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.statuses[status] += 1

    def stop(self) -> Counter[int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return self.statuses


def test_slow_run_under_concurrent_load_adds_replicas(
    azureml: RouterHandle, record_property: Any
) -> None:
    assert scaling(azureml)["current"] == 1
    # Four clients, one request at a time per replica: demand 4 needs ceil(4 / 0.7) = 6,
    # capped at max_instances (3).
    load = SlowClients(azureml.url, clients=4, sleep_ms=300)
    started = time.monotonic()
    try:
        wait_until(
            lambda: scaling(azureml)["current"] == 3,
            timeout=10.0,
            interval=0.05,
            message="the autoscaler asks for 3 replicas",
        )
        asked = time.monotonic() - started
        wait_until(
            lambda: scaling(azureml)["ready"] == 3,
            timeout=START_WAIT,
            interval=0.1,
            message="3 azmlinfsrv replicas ready",
        )
        ready = time.monotonic() - started
    finally:
        statuses = load.stop()

    record_property("azureml_replicas_asked_s", round(asked, 3))
    record_property("azureml_replicas_ready_s", round(ready, 3))
    measured = f"3 replicas asked for after {asked:.2f} s, all ready after {ready:.2f} s"
    print(measured)
    decisions = scaling(azureml)["decisions"]
    # Up from 1 to 3, in one step or more (a queue is decided on at every sample).
    ups = [(d["from"], d["to"]) for d in decisions if d["to"] > d["from"]]
    assert ups and ups[0][0] == 1 and ups[-1][1] == 3, (measured, decisions)
    assert set(statuses) == {200}, (measured, statuses)
