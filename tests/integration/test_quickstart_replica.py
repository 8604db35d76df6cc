"""The quickstart replica (examples/quickstart/replica.py) as a real process on a free port."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO_ROOT, free_port, read_ready_port, stop_process

QUICKSTART = REPO_ROOT / "examples" / "quickstart"
# Importing scikit-learn from a cold disk cache can take several seconds on a CI machine.
START_TIMEOUT = 60.0
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]


def start_replica(directory: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, str(directory / "replica.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=directory,
    )
    try:
        read_ready_port(process, time.monotonic() + START_TIMEOUT)
    except BaseException:
        stop_process(process)
        raise
    return process


@pytest.fixture(scope="module")
def replica_url() -> Iterator[str]:
    port = free_port()
    process = start_replica(QUICKSTART, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture
def client(replica_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replica_url, timeout=10.0) as http:
        yield http


def test_health(client: httpx.Client) -> None:
    response = client.get("/")
    assert (response.status_code, response.text) == (200, "Healthy")


def test_scores_rows(client: httpx.Client) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    response = client.post("/score", json={"data": rows})

    assert response.status_code == 200
    assert response.json() == {
        "predictions": ["setosa", "virginica", "versicolor"],
        "classes": IRIS_CLASSES,
    }


def test_keeps_the_connection_alive(client: httpx.Client) -> None:
    for _ in range(3):
        response = client.post("/score", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
        assert response.status_code == 200
        assert response.headers.get("connection", "") != "close"


def test_chunked_request_body(client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"data": [[5.1, 3.5, '
        yield b"1.4, 0.2]]}"

    response = client.post("/score", content=body(), headers={"Content-Type": "application/json"})
    assert response.json()["predictions"] == ["setosa"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"rows": [[1, 2, 3, 4]]}',
        b'{"data": []}',
        b'{"data": [[1, 2, 3]]}',
        b'{"data": [[1, 2, "three", 4]]}',
        b'{"data": [[1, 2, true, 4]]}',
        b'{"data": [[1, 2, NaN, 4]]}',
    ],
)
def test_bad_input_gets_400_with_a_json_error(client: httpx.Client, body: bytes) -> None:
    response = client.post("/score", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]
    # The connection stays usable after an error.
    assert client.get("/").status_code == 200


def test_unknown_route_gets_404(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.post("/nope", content=b"{}").status_code == 404


def test_swagger_document(client: httpx.Client) -> None:
    document = client.get("/swagger.json").json()
    assert document["openapi"].startswith("3.")
    assert "post" in document["paths"]["/score"]


def test_trains_on_the_fly_when_the_model_is_missing(tmp_path: Path) -> None:
    for name in ("train.py", "replica.py"):
        shutil.copy(QUICKSTART / name, tmp_path / name)
    port = free_port()
    process = start_replica(tmp_path, port)
    try:
        assert (tmp_path / "model.pkl").exists()
        with httpx.Client(timeout=10.0) as idle_keep_alive:
            answer = idle_keep_alive.post(
                f"http://127.0.0.1:{port}/score", json={"data": [[5.1, 3.5, 1.4, 0.2]]}
            ).json()
            assert answer["predictions"] == ["setosa"]
            # SIGTERM ends the replica (exit code 0, before stop_process resorts to SIGKILL)
            # even while a client still holds a keep-alive connection to it.
            assert stop_process(process) == 0
    finally:
        stop_process(process)

    # The model the replica saved is newer than train.py, so training is skipped.
    rerun = subprocess.run(
        [sys.executable, str(tmp_path / "train.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert rerun.stdout.startswith("model up to date")
    assert len(rerun.stdout.splitlines()) == 1
