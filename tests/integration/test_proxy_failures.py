"""Replica failures through a real router process: refused connections (retry, out of routing,
back after a probe), a crash mid-answer, a close before answering (retry or 502), a replica that
exits, a replica that hangs (504), while the router keeps serving a calm endpoint throughout.

One router (module scope) serves one endpoint per scenario with its own replicas, so a scenario
that kills or breaks its replicas touches nothing else.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    ModelServerHandle,
    ThreadedReplica,
    start_model_servers,
    stop_servers,
    wait_until,
)
from tests.router import RouterFactory, RouterHandle

HTTP_TIMEOUT = 10.0
DEPLOYMENT = "blue"
REPLAY_BUFFER = 65536  # the router's default replay_buffer_bytes
VICTIM_TIMEOUT_MS = 2000


class ClosingReplica(ThreadedReplica):
    """A replica that passes its readiness probe and closes every other request's connection
    after reading the request, without a byte of answer. Runs in a thread on a real socket."""

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        # Read the whole body first: closing with unread input would send a reset.
        request.rfile.read(int(request.headers.get("Content-Length", "0")))
        request.close_connection = True


class DyingReplica:
    """A replica that dies on its first scoring request, the way `mode=exit` does, but in a
    fixed order: it stops listening, then drops the request's connection unanswered. So the
    router's retry is refused for certain (a dying process closes both at about the same
    time, and a retry may slip in before its listener is gone). A raw listener rather than a
    ThreadedReplica, since only a raw listener can be closed before the connection is."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.died = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self.listener:
            while True:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    return
                with conn:
                    head = b""
                    while b"\r\n\r\n" not in head and (piece := conn.recv(65536)):
                        head += piece
                    if head.startswith(b"GET / "):  # the readiness probe
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n"
                            b"Connection: close\r\n\r\nHealthy"
                        )
                        continue
                    self.listener.close()
                    self.died.set()
                    return  # `with conn` closes it: no answer at all

    def close(self) -> None:
        self.listener.close()


# Scenario endpoint -> (model servers, request settings). "flaky" also gets the closing replica.
SCENARIOS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "calm": (("calm0",), {"max_concurrent_requests_per_instance": 4}),
    # A request a bug strands ends at these short deadlines rather than the default 5 s.
    "pair": (("p0", "p1"), {"request_timeout_ms": 1500}),
    "warm": (("w0", "w1"), {"request_timeout_ms": 1500}),
    "crash": (("x0",), {}),
    "flaky": (("good0",), {"request_timeout_ms": 1500}),
    "closing": (("cb0", "cb1"), {}),
    "hang": (("hg0",), {"request_timeout_ms": 1000}),
    "victim-a": (("va0",), {"request_timeout_ms": VICTIM_TIMEOUT_MS}),
    # Gets the dying replica only.
    "victim-b": ((), {"request_timeout_ms": VICTIM_TIMEOUT_MS}),
}


class Cluster:
    def __init__(
        self,
        handle: RouterHandle,
        servers: dict[str, ModelServerHandle],
        closer: ClosingReplica,
        dying: DyingReplica,
    ) -> None:
        self.router = handle
        self.servers = servers
        self.closer = closer
        self.dying = dying

    def url(self, endpoint: str, query: str = "") -> str:
        return f"{self.router.url}/api/v1/endpoint/{endpoint}/score{query}"

    def deployment(self, endpoint: str) -> dict[str, Any]:
        return self.router.deployment(endpoint, DEPLOYMENT)

    def replica_states(self, endpoint: str) -> dict[str, str]:
        return {r["address"]: r["state"] for r in self.deployment(endpoint)["replicas"]}

    def retries(self, endpoint: str) -> float:
        for family in text_string_to_metric_families(self.router.metrics()):
            for sample in family.samples:
                if (
                    sample.name == "inferfront_retries_total"
                    and sample.labels["endpoint"] == endpoint
                ):
                    return sample.value
        raise KeyError(endpoint)


def _endpoint(name: str, urls: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "auth_mode": "none",
        "traffic": {DEPLOYMENT: 100},
        "deployments": [{"name": DEPLOYMENT, "urls": urls, "request_settings": settings}],
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    names = [name for servers, _ in SCENARIOS.values() for name in servers]
    servers = {s.name: s for s in start_model_servers(names)}
    closer = ClosingReplica()
    dying = DyingReplica()
    extra = {"flaky": [closer.url], "victim-b": [dying.url]}
    endpoints = []
    for name, (replicas, settings) in SCENARIOS.items():
        urls = extra.get(name, []) + [servers[s].url for s in replicas]
        endpoints.append(_endpoint(name, urls, settings))
    config = {"server": {"drain_timeout_s": 1.0}, "endpoints": endpoints}
    factory = RouterFactory(Path(tmp_path_factory.mktemp("failures")))
    try:
        yield Cluster(factory(config), servers, closer, dying)
    finally:
        factory.stop_all()
        closer.close()
        dying.close()
        stop_servers(servers.values())


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        yield http


class Bystander:
    """Keeps requesting the calm endpoint from a thread; every answer must be a 200."""

    PACE_S = 0.01  # between requests: a steady trickle, not a load test

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=HTTP_TIMEOUT) as http:
            while not self._stop.is_set():
                try:
                    self.outcomes.append(http.post(self.url, content=b"{}").status_code)
                except httpx.HTTPError as exc:
                    self.outcomes.append(repr(exc))
                self._stop.wait(self.PACE_S)

    def stop(self) -> list[int | str]:
        self._stop.set()
        self._thread.join(timeout=HTTP_TIMEOUT)
        return self.outcomes


@pytest.fixture(autouse=True)
def bystander(cluster: Cluster) -> Iterator[Bystander]:
    """The router keeps serving others while each test breaks its own replicas."""
    watcher = Bystander(cluster.url("calm"))
    wait_until(lambda: watcher.outcomes, message="the bystander got a first answer")
    yield watcher
    outcomes = watcher.stop()
    assert outcomes and set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]


def assert_router_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code


def access_log_line(cluster: Cluster, request_id: str) -> dict[str, Any]:
    def find() -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in list(cluster.router.stdout)
            if line.startswith("{") and request_id in line
        ]

    (line,) = wait_until(find, message=f"access log line for {request_id}")
    return line


# ==========================================================================================
# Refused connections
# ==========================================================================================


class OneWriteClient:
    """Keep-alive requests written with one send each, answers parsed by llhttp.

    The whole request reaches the router before it connects anywhere (as with most clients
    and small bodies), which makes what happens next independent of packet timing; httpx and
    http.client write the head and the body separately.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body = b""
        self.complete = False

    def on_message_begin(self) -> None:
        self.status, self.body, self.complete = 0, b"", False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def post(self, path: str, body: bytes = b"{}") -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
        self.complete = False
        self.sock.sendall(head.encode() + body)
        while not self.complete:
            data = self.sock.recv(65536)
            assert data, "the router closed the connection"
            self.parser.feed_data(data)
        return self.status, self.body

    def close(self) -> None:
        self.sock.close()


def test_refused_replica_is_retried_on_another_replica(cluster: Cluster) -> None:
    dead = cluster.servers["w1"]
    path = "/api/v1/endpoint/warm/score"
    client = OneWriteClient(cluster.router.port)
    try:
        # Both replicas have served, so the router holds a warm connection to each (the usual
        # case in production).
        answered_by = {json.loads(client.post(path)[1])["replica"] for _ in range(2)}
        assert answered_by == {"w0", "w1"}
        dead.stop()
        # Sequential requests alternate between the replicas: one of these two goes to the
        # dead one first, is refused, and is retried on the live one; the client never knows.
        for _ in range(2):
            status, body = client.post(path)
            assert status == 200, body
            assert json.loads(body)["replica"] == "w0"
    finally:
        client.close()
    assert cluster.retries("warm") >= 1


def test_refused_replica_is_taken_out_of_routing_until_it_is_back(
    cluster: Cluster, client: httpx.Client
) -> None:
    alive, dead = cluster.servers["p0"], cluster.servers["p1"]
    dead_address = f"127.0.0.1:{dead.port}"
    dead.stop()
    # Two sequential requests alternate between the replicas: one is refused by the dead one
    # (and retried on the live one).
    for _ in range(2):
        assert client.post(cluster.url("pair"), content=b"{}").status_code == 200
    assert cluster.replica_states("pair")[dead_address] != "ready"
    # Out of routing: every request goes to the live replica, and nothing is retried any more.
    retries = cluster.retries("pair")
    for _ in range(6):
        response = client.post(cluster.url("pair"), content=b"{}")
        assert response.status_code == 200
        assert response.json()["replica"] == "p0"
    assert cluster.retries("pair") == retries

    # A replica listening on that port again is found by the router's probe and routed to.
    (back,) = start_model_servers(["p1-back"], extra_args=["--port", str(dead.port)])
    try:
        wait_until(
            lambda: cluster.replica_states("pair")[dead_address] == "ready",
            message="the router's probe finds the replica back",
        )
        answered_by = {
            client.post(cluster.url("pair"), content=b"{}").json()["replica"] for _ in range(4)
        }
        assert answered_by == {"p0", "p1-back"}
        assert alive.is_alive()
    finally:
        back.stop()


# ==========================================================================================
# Answers cut short
# ==========================================================================================


def test_crash_mid_answer_cuts_the_client_response(cluster: Cluster, client: httpx.Client) -> None:
    server = cluster.servers["x0"]
    request_id = str(uuid.uuid4())
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(
            cluster.url("crash", "?mode=crash_mid"),
            content=b"{}",
            headers={"x-request-id": request_id},
        )
    assert access_log_line(cluster, request_id)["status"] == 502
    # Nothing is left hanging: the slot is back and the next request is served.
    wait_until(lambda: cluster.deployment("crash")["inflight"] == 0)
    wait_until(lambda: server.stats(history=False)["inflight"] == 0)
    assert client.post(cluster.url("crash"), content=b"{}").status_code == 200


def test_close_before_answer_is_retried_with_the_body(
    cluster: Cluster, client: httpx.Client
) -> None:
    body = b"x" * 10_000
    before = cluster.closer.received
    # Two sequential requests: one of them is sent to the closing replica first.
    for _ in range(2):
        response = client.post(cluster.url("flaky"), content=body)
        assert response.status_code == 200
        seen = response.json()
        assert seen["replica"] == "good0"
        assert (seen["bytes"], seen["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert cluster.closer.received > before
    assert cluster.retries("flaky") >= 1


def test_close_before_answer_with_a_body_too_large_to_replay_is_502(
    cluster: Cluster, client: httpx.Client
) -> None:
    body = b"y" * (REPLAY_BUFFER * 3)
    before = cluster.closer.received
    statuses = sorted(client.post(cluster.url("flaky"), content=body).status_code for _ in range(2))
    assert statuses == [200, 502]  # the one sent to the closing replica could not be replayed
    assert cluster.closer.received == before + 1


def test_close_before_answer_everywhere_is_502_after_the_retries(
    cluster: Cluster, client: httpx.Client
) -> None:
    servers = [cluster.servers["cb0"], cluster.servers["cb1"]]
    response = client.post(cluster.url("closing", "?mode=close_before"), content=b"{}")
    assert_router_error(response, 502, "BadGateway")
    attempts = sum(server.stats(history=False)["requests"] for server in servers)
    assert attempts == 3  # the first attempt and the two retries of `server.retries`
    assert client.post(cluster.url("closing"), content=b"{}").status_code == 200


# ==========================================================================================
# A replica that exits, a replica that hangs
# ==========================================================================================


def test_replica_exiting_mid_request_is_taken_out_of_routing(
    cluster: Cluster, client: httpx.Client
) -> None:
    victim = cluster.servers["va0"]
    response = client.post(cluster.url("victim-a", "?mode=exit"), content=b"{}")
    assert response.status_code in (502, 504)  # 502 expected: see the test below
    assert victim.wait_exit() == 3
    wait_until(lambda: cluster.replica_states("victim-a")[f"127.0.0.1:{victim.port}"] != "ready")
    assert cluster.deployment("victim-a")["inflight"] == 0


def test_replica_dying_mid_request_gives_502_at_once(
    cluster: Cluster, client: httpx.Client
) -> None:
    started = time.monotonic()
    response = client.post(cluster.url("victim-b"), content=b"{}")
    elapsed = time.monotonic() - started
    assert cluster.dying.died.is_set()
    assert_router_error(response, 502, "BadGateway")
    assert elapsed < VICTIM_TIMEOUT_MS / 1000  # not held until the request deadline


def test_hanging_replica_gives_504_while_others_are_served(
    cluster: Cluster, client: httpx.Client
) -> None:
    server = cluster.servers["hg0"]
    outcome: list[httpx.Response] = []
    hanging = threading.Thread(
        target=lambda: outcome.append(
            httpx.post(cluster.url("hang", "?mode=hang"), content=b"{}", timeout=HTTP_TIMEOUT)
        )
    )
    hanging.start()
    wait_until(lambda: server.stats(history=False)["inflight"] == 1)
    # While it hangs, another endpoint's requests are answered.
    for _ in range(5):
        assert client.post(cluster.url("crash"), content=b"{}").status_code == 200
    assert hanging.is_alive()
    hanging.join(timeout=HTTP_TIMEOUT)
    (response,) = outcome
    assert_router_error(response, 504, "GatewayTimeout")
    wait_until(lambda: server.stats(history=False)["inflight"] == 0)
    assert client.post(cluster.url("hang"), content=b"{}").status_code == 200
