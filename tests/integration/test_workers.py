"""`inferfront serve --workers 3`: three front-ends on one port under a supervisor that owns the
replicas. Killing the worker that coordinates a deployment must not restart or duplicate its
replicas: another worker takes the role over and routes to the same replica processes."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.helpers import REPO_ROOT, wait_until
from tests.router import RouterFactory, RouterHandle, endpoint_config

REPLICA = [sys.executable, "-m", "tests.servers.model_server", "--port", "{port}", "--name", "r"]


def cluster(handle: RouterHandle) -> dict[str, Any]:
    return httpx.get(f"{handle.admin_url}/admin/v1/cluster", timeout=5.0).json()


def coordinator_of(view: dict[str, Any], key: str) -> str | None:
    return next(c["coordinator"] for c in view["coordinators"] if c["deployment"] == key)


def coordinated(handle: RouterHandle, key: str, not_by: str | None) -> dict[str, Any] | None:
    """The cluster view once someone other than `not_by` coordinates `key`."""
    view = cluster(handle)
    return view if coordinator_of(view, key) not in (None, not_by) else None


def replica_pids(view: dict[str, Any], key: str) -> set[int]:
    return {r["pid"] for r in view["replicas"][key]}


def score(handle: RouterHandle, client: httpx.Client) -> int:
    url = f"{handle.url}/api/v1/endpoint/workers/score?delay_ms=20"
    return client.post(url, content=b"{}").status_code


def test_killing_the_coordinating_worker_keeps_the_replicas(router: RouterFactory) -> None:
    config = endpoint_config(
        name="workers",
        command=REPLICA,
        cwd=str(REPO_ROOT),
        instance_count=2,
        request_settings={"max_queued_requests": 200, "max_queue_wait_ms": 10000},
    )
    handle = router(config, extra_args=("--workers", "3"))
    key = "workers/blue"
    view = wait_until(
        lambda: coordinated(handle, key, not_by=None), message="a worker coordinates it"
    )
    pids_before = replica_pids(view, key)
    assert len(pids_before) == 2
    # Roles are spread over instances started together; here one deployment has one coordinator.
    coordinator = coordinator_of(view, key)
    worker = next(w for w in view["workers"] if f"worker-{w['index']}" == coordinator)

    with httpx.Client(timeout=15.0) as client:
        assert {score(handle, client) for _ in range(10)} == {200}
        os.kill(worker["pid"], signal.SIGKILL)
        after = wait_until(
            lambda: coordinated(handle, key, not_by=coordinator),
            timeout=5.0,
            message="another worker takes the deployment over",
        )
        # The new coordinator adopted the running replicas: same processes, none started.
        assert replica_pids(after, key) == pids_before
        # New connections land on surviving (or restarted) workers and are all served.
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: score(handle, client), range(40)))
        assert codes == [200] * 40
    restarted = wait_until(
        lambda: next(
            (w for w in cluster(handle)["workers"] if w["index"] == worker["index"] and w["alive"]),
            None,
        ),
        message="the supervisor restarts the killed worker",
    )
    assert restarted["restarts"] == 1
    assert replica_pids(cluster(handle), key) == pids_before
