"""Start a real router process for integration tests (`inferfront serve` on loopback ports)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO_ROOT, free_port, stop_process

READY_TIMEOUT = 30.0


class RouterHandle:
    """A running `inferfront serve`; stdout (access log) and stderr are collected in lists."""

    def __init__(self, config_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.port = free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inferfront",
                "serve",
                "-c",
                str(config_path),
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin_port),
                *extra_args,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._readers = [
            threading.Thread(
                target=self._collect, args=(self.process.stdout, self.stdout), daemon=True
            ),
            threading.Thread(
                target=self._collect, args=(self.process.stderr, self.stderr), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream, lines: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"router exited with {self.process.returncode}:\n" + "\n".join(self.stderr)
                )
            try:
                if httpx.get(f"{self.admin_url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # polling interval while waiting for readiness, not synchronisation
        raise AssertionError("router not ready in time:\n" + "\n".join(self.stderr))

    def deployments(self) -> dict[str, Any]:
        return httpx.get(f"{self.admin_url}/admin/v1/deployments", timeout=5.0).json()

    def deployment(self, endpoint: str, name: str) -> dict[str, Any]:
        for ep in self.deployments()["endpoints"]:
            if ep["name"] == endpoint:
                for dep in ep["deployments"]:
                    if dep["name"] == name:
                        return dep
        raise KeyError((endpoint, name))

    def metrics(self) -> str:
        return httpx.get(f"{self.admin_url}/metrics", timeout=5.0).text

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (the first whose labels include `labels`)."""
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        raise KeyError(f"no sample {name} {labels}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        return stop_process(self.process, timeout=15.0)


class RouterFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.handles: list[RouterHandle] = []

    def __call__(
        self, config: dict[str, Any], *, wait: bool = True, extra_args: tuple[str, ...] = ()
    ) -> RouterHandle:
        path = self.tmp_path / f"router-{len(self.handles)}.yaml"
        path.write_text(yaml.safe_dump(config))
        handle = RouterHandle(path, extra_args)
        self.handles.append(handle)
        if wait:
            handle.wait_ready()
        return handle

    def stop_all(self) -> None:
        for handle in self.handles:
            if handle.process.poll() is None:
                handle.stop()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterFactory]:
    """`router(config)` starts `inferfront serve` with that configuration; all stop at the end."""
    factory = RouterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def endpoint_config(
    urls: list[str] | None = None,
    *,
    name: str = "endpoint",
    deployment: str = "blue",
    command: list[str] | None = None,
    request_settings: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    **deployment_extra: Any,
) -> dict[str, Any]:
    """One endpoint with one deployment (all traffic), auth off: the common test shape."""
    dep: dict[str, Any] = {"name": deployment, **deployment_extra}
    if command is not None:
        dep["command"] = command
    else:
        dep["urls"] = urls
    if request_settings:
        dep["request_settings"] = request_settings
    config: dict[str, Any] = {
        "endpoints": [
            {"name": name, "auth_mode": "none", "traffic": {deployment: 100}, "deployments": [dep]}
        ]
    }
    if server:
        config["server"] = server
    return config
