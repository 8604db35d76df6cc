"""Several `inferfront serve` instances sharing one --cluster-dir, and real HTTP clients for them.

    with cluster_factory(tmp_path) as start:          # usually inside a fixture
        cluster = start(cluster_config([r.url for r in replicas], limit=1))
        cluster.instances            # ClusterInstance (a RouterHandle) per instance, by index
        cluster.coordinator_of("iris/blue")   # the instance that coordinates it, by its views

Each instance gets its own request and admin ports (so a client knows which instance served
it; `share_port=True` puts them all on one port, SO_REUSEPORT) and the instance id `fe-<index>`.
`ClusterInstance.kill()` is SIGKILL; `Cluster.restart(i)` starts instance i again under the same
id (new ports). The load helpers (`burst`, `LoadLoop`) speak HTTP/1.1 over raw asyncio sockets,
keep-alive, with every wait bounded; `send_and_hold` leaves requests outstanding until the test
closes their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import free_port, wait_until
from tests.router import RouterHandle

ENDPOINT = "iris"
DEPLOYMENT = "blue"
KEY = f"{ENDPOINT}/{DEPLOYMENT}"
SCORE_PATH = f"/api/v1/endpoint/{ENDPOINT}/score"
REQUEST_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5.0


def cluster_config(
    urls: list[str],
    *,
    limit: int = 1,
    max_queued: int = 2000,
    max_queue_wait_ms: int = 20_000,
    request_timeout_ms: int = 30_000,
) -> dict[str, Any]:
    """One endpoint, one `urls` deployment, queue settings generous enough that only a broken
    router (not a busy one) fails a request."""
    return {
        "server": {"drain_timeout_s": 1.0},
        "endpoints": [
            {
                "name": ENDPOINT,
                "auth_mode": "none",
                "traffic": {DEPLOYMENT: 100},
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        "urls": urls,
                        "request_settings": {
                            "max_concurrent_requests_per_instance": limit,
                            "max_queued_requests": max_queued,
                            "max_queue_wait_ms": max_queue_wait_ms,
                            "request_timeout_ms": request_timeout_ms,
                        },
                    }
                ],
            }
        ],
    }


# -- processes --------------------------------------------------------------------------------


class ClusterInstance(RouterHandle):
    """One `inferfront serve --cluster-dir D --instance-id ID`."""

    def __init__(
        self,
        config_path: Path,
        cluster_dir: Path,
        instance_id: str,
        shared_port: int | None = None,
    ) -> None:
        extra = ["--cluster-dir", str(cluster_dir), "--instance-id", instance_id]
        if shared_port is not None:
            extra += ["--port", str(shared_port)]  # the last --port wins over RouterHandle's
        super().__init__(config_path, tuple(extra))
        if shared_port is not None:
            self.port = shared_port
            self.url = f"http://127.0.0.1:{shared_port}"
        self.instance_id = instance_id

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye; the kernel closes its sockets and drops its locks."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def cluster_view(self) -> dict[str, Any]:
        return httpx.get(f"{self.admin_url}/admin/v1/cluster", timeout=5.0).json()

    def coordinators(self) -> dict[str, str | None]:
        """deployment key -> coordinator id, as this instance sees it."""
        view = self.cluster_view()
        return {role["deployment"]: role["coordinator"] for role in view["coordinators"]}

    def errors(self) -> list[str]:
        """stderr lines worth showing when a test fails: errors and tracebacks."""
        keep = ("ERROR", "Traceback", "Error", "Exception", "  File ")
        return [line for line in list(self.stderr) if any(word in line for word in keep)]

    def access_log(self) -> list[dict[str, Any]]:
        """The JSON lines written so far on stdout (other lines are skipped)."""
        lines = []
        for line in list(self.stdout):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines


class Cluster:
    def __init__(
        self, tmp_path: Path, config: dict[str, Any], size: int, share_port: bool = False
    ) -> None:
        # share_port: every instance listens for requests on one port (SO_REUSEPORT), as
        # behind a single address; clients can no longer pick an instance then.
        self.shared_port = free_port() if share_port else None
        self.state_dir = tmp_path / "cluster-state"
        self.config_path = tmp_path / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.instances: list[ClusterInstance] = []
        self.retired: list[ClusterInstance] = []  # killed and replaced by a restart
        # Started together, so start-up overlaps; see wait_ready().
        for index in range(size):
            self.instances.append(self._launch(index))

    def wait_ready(self) -> None:
        for instance in self.instances:
            instance.wait_ready()

    def _launch(self, index: int) -> ClusterInstance:
        return ClusterInstance(self.config_path, self.state_dir, f"fe-{index}", self.shared_port)

    def live(self) -> list[ClusterInstance]:
        return [instance for instance in self.instances if instance.alive]

    def by_id(self, instance_id: str) -> ClusterInstance:
        return next(i for i in self.instances if i.instance_id == instance_id)

    def index_of(self, instance_id: str) -> int:
        return next(n for n, i in enumerate(self.instances) if i.instance_id == instance_id)

    def agreed_coordinator(self, key: str = KEY) -> str | None:
        """The coordinator of `key` if every live instance names the same live member."""
        live_ids = {instance.instance_id for instance in self.live()}
        seen = {instance.coordinators().get(key) for instance in self.live()}
        if len(seen) == 1:
            (coordinator,) = seen
            if coordinator in live_ids:
                return coordinator
        return None

    def wait_agreement(self, key: str = KEY, timeout: float = 10.0) -> ClusterInstance:
        """Wait until every live instance sees every live member and the same coordinator."""

        def agreed() -> str | None:
            live_ids = sorted(instance.instance_id for instance in self.live())
            for instance in self.live():
                members = sorted(m["id"] for m in instance.cluster_view()["members"])
                if members != live_ids:
                    return None
            return self.agreed_coordinator(key)

        coordinator = wait_until(agreed, timeout=timeout, interval=0.05, message="agreement")
        return self.by_id(coordinator)

    def coordinator_of(self, key: str = KEY) -> ClusterInstance:
        return self.wait_agreement(key)

    def restart(self, index: int) -> ClusterInstance:
        """Start instance `index` again under the same id (it must be dead)."""
        old = self.instances[index]
        assert not old.alive
        self.retired.append(old)
        fresh = self._launch(index)
        self.instances[index] = fresh
        fresh.wait_ready()
        return fresh

    def stop_all(self) -> None:
        for instance in [*self.instances, *self.retired]:
            if instance.alive:
                instance.stop()


class ClusterFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clusters: list[Cluster] = []

    def __call__(self, config: dict[str, Any], size: int = 3, share_port: bool = False) -> Cluster:
        directory = self.tmp_path / f"cluster-{len(self.clusters)}"
        directory.mkdir()
        cluster = Cluster(directory, config, size, share_port)
        self.clusters.append(cluster)  # stopped at teardown even if it never gets ready
        cluster.wait_ready()
        return cluster

    def stop_all(self) -> None:
        for cluster in self.clusters:
            cluster.stop_all()


@contextlib.contextmanager
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """For a fixture: `factory(config, size=3, share_port=False)` -> a started `Cluster`;
    every instance it started is stopped on exit."""
    factory = ClusterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


# -- HTTP clients -----------------------------------------------------------------------------


class Broken(Exception):
    """The connection failed mid-request (reset, closed early, or no answer in time)."""


class HttpConnection:
    """One keep-alive HTTP/1.1 client connection on raw asyncio streams."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), CONNECT_TIMEOUT_S
        )

    async def post(
        self,
        target: str,
        body: bytes = b"{}",
        timeout: float = REQUEST_TIMEOUT_S,
        on_sent: Callable[[], None] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """POST and read the whole answer; `on_sent` is called once the request is written."""
        try:
            return await asyncio.wait_for(self._post(target, body, on_sent), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            self.close()
            raise Broken(f"{type(exc).__name__}: {exc}") from exc

    async def send(self, target: str, body: bytes = b"{}") -> None:
        """Write a POST and return without reading the answer."""
        await asyncio.wait_for(self._write_request(target, body), CONNECT_TIMEOUT_S)

    async def _write_request(self, target: str, body: bytes) -> None:
        assert self.writer is not None
        self.writer.write(
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await self.writer.drain()

    async def _post(
        self, target: str, body: bytes, on_sent: Callable[[], None] | None
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        await self._write_request(target, body)
        if on_sent is not None:
            on_sent()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._read_chunked()
        else:
            payload = await self.reader.read()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])

    @property
    def is_open(self) -> bool:
        return self.writer is not None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def send_and_hold(port: int, count: int, query: str = "") -> list[HttpConnection]:
    """`count` requests, each on its own connection, sent and not read: with `&mode=hang` they
    stay in flight (or queued) until the caller closes the connections it gets back."""
    connections = [HttpConnection(port) for _ in range(count)]
    try:
        for index, connection in enumerate(connections):
            await connection.open()
            await connection.send(f"{SCORE_PATH}?hold={index}{query}")
    except BaseException:
        for connection in connections:
            connection.close()
        raise
    return connections


@dataclass
class Outcome:
    """One request as its client saw it (monotonic times)."""

    instance: str
    started: float
    ended: float
    status: int | None  # None: no answer (see `error`)
    error: str | None = None
    replica: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


async def post_once(
    connection: HttpConnection,
    instance: str,
    target: str,
    on_sent: Callable[[], None] | None = None,
) -> Outcome:
    started = time.monotonic()
    try:
        if not connection.is_open:
            await connection.open()
        status, headers, _ = await connection.post(target, on_sent=on_sent)
    except Broken as exc:
        return Outcome(instance, started, time.monotonic(), None, str(exc))
    except (OSError, TimeoutError) as exc:
        connection.close()
        return Outcome(instance, started, time.monotonic(), None, f"connect: {exc!r}")
    return Outcome(instance, started, time.monotonic(), status, None, headers.get("x-replica"))


async def burst(
    targets: list[tuple[str, int]],
    clients: int,
    per_client: int,
    query: str = "",
    sent: Counter[str] | None = None,
) -> list[Outcome]:
    """`clients` concurrent clients, spread round-robin over `targets` (instance id, port),
    each sending `per_client` requests one after another on one keep-alive connection.
    `sent["requests"]` counts requests fully written, for tests that wait for arrivals."""

    def count_sent() -> None:
        if sent is not None:
            sent["requests"] += 1

    async def client(index: int) -> list[Outcome]:
        instance, port = targets[index % len(targets)]
        connection = HttpConnection(port)
        outcomes = []
        try:
            for n in range(per_client):
                target = f"{SCORE_PATH}?c={index}&n={n}{query}"
                outcomes.append(await post_once(connection, instance, target, count_sent))
        finally:
            connection.close()
        return outcomes

    results = await asyncio.gather(*(client(index) for index in range(clients)))
    return [outcome for outcomes in results for outcome in outcomes]


@dataclass
class LoadLoop:
    """Constant load on one instance: `workers` clients, each sending back to back until stopped,
    `max_requests` each, or `deadline` (monotonic). A worker whose connection is refused stops
    (the instance is gone); one whose connection breaks reconnects."""

    instance: str
    port: int
    workers: int
    query: str
    deadline: float
    max_requests: int = 2000
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self._worker(n)) for n in range(self.workers)]

    async def _worker(self, number: int) -> None:
        connection = HttpConnection(self.port)
        try:
            for n in range(self.max_requests):
                if self.stopped.is_set() or time.monotonic() >= self.deadline:
                    return
                target = f"{SCORE_PATH}?w={number}&n={n}{self.query}"
                outcome = await post_once(connection, self.instance, target)
                self.outcomes.append(outcome)
                if outcome.error is not None and outcome.error.startswith("connect"):
                    return
        finally:
            connection.close()

    async def stop(self) -> None:
        self.stopped.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), REQUEST_TIMEOUT_S + 5)

    def successes_after(self, moment: float) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.started >= moment)

    def failures(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for outcome in self.outcomes:
            if not outcome.ok:
                kinds[outcome.error.split(":")[0] if outcome.error else str(outcome.status)] += 1
        return kinds


def longest_gap(outcomes: list[Outcome], start: float, end: float) -> tuple[float, float]:
    """The longest time within [start, end] with no successful request completing:
    (its length, its beginning)."""
    moments = sorted(o.ended for o in outcomes if o.ok and start <= o.ended <= end)
    points = [start, *moments, end]
    return max((b - a, a) for a, b in itertools.pairwise(points))
