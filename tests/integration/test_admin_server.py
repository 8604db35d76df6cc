"""The admin HTTP server on a real loopback socket, queried with httpx and raw connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferfront.admin import AdminServer
from inferfront.telemetry.metrics import Metrics
from tests.unit.test_metrics import FakeDeployment, busy_deployment

IO_TIMEOUT = 10.0
SCALING = {
    "current": 2,
    "ready": 1,
    "starting": 1,
    "desired": 2,
    "utilization": 0.5,
    "utilization_avg": 0.4,
    "decisions": [{"at": "2026-01-01T00:00:00.000Z", "from": 1, "to": 2, "reason": "load"}],
}


class Readiness:
    def __init__(self) -> None:
        self.ready = True
        self.reason = ""

    def __call__(self) -> tuple[bool, str]:
        return self.ready, self.reason


class Cluster:
    """What the app would hand the admin server: deployments, readiness, extra gauges."""

    def __init__(self) -> None:
        self.blue = busy_deployment()  # iris/blue: 4 in flight, 1 queued
        self.green = FakeDeployment(
            "iris", "green", {"g0": "ready", "g1": "starting"}, limit=1, scaling=dict(SCALING)
        )
        self.digits = FakeDeployment("digits", "default", {"d0": "draining"}, max_queued=0)
        self.green.stats.record(200, 0.0, 0.004, 0.005)
        self.readiness = Readiness()
        self.open_connections = 3

    def deployments(self) -> list[Any]:
        return [self.blue, self.green, self.digits]

    def extra(self) -> list[tuple[str, str, float, dict[str, str]]]:
        return [("router_open_connections", "Open client connections.", self.open_connections, {})]


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[AdminServer]:
    metrics = Metrics(cluster.deployments, cluster.extra)
    server = AdminServer(metrics, cluster.deployments, cluster.readiness)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def client(admin: AdminServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{admin.port}", timeout=IO_TIMEOUT
    ) as http:
        yield http


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


# -- raw HTTP/1.1 helpers (pipelining, closing and malformed requests need the socket) -----------


async def connect(admin: AdminServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", admin.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), IO_TIMEOUT)
    return int(status_line.split()[1]), headers, body


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection."""
    return await asyncio.wait_for(reader.read(), IO_TIMEOUT)


# -- routes -------------------------------------------------------------------------------------


async def test_start_binds_a_port(admin: AdminServer) -> None:
    assert isinstance(admin.port, int)
    assert admin.port > 0


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok"}


async def test_readyz_follows_the_ready_callable(
    client: httpx.AsyncClient, cluster: Cluster
) -> None:
    response = await client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})

    cluster.readiness.ready = False
    cluster.readiness.reason = "no coordinator connection"
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "reason": "no coordinator connection"}

    cluster.readiness.ready = True
    assert (await client.get("/readyz")).status_code == 200


async def test_metrics_exposition(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = samples_of(response.text)
    blue = {"endpoint": "iris", "deployment": "blue"}
    green = {"endpoint": "iris", "deployment": "green"}
    digits = {"endpoint": "digits", "deployment": "default"}
    assert samples[key("inferfront_requests_total", **blue, code="200")] == 2
    assert samples[key("inferfront_requests_total", **blue, code="503")] == 1
    assert samples[key("inferfront_requests_total", **green, code="200")] == 1
    assert samples[key("inferfront_request_duration_seconds_count", **blue)] == 3
    assert samples[key("inferfront_request_queue_wait_seconds_bucket", **blue, le="+Inf")] == 3
    assert samples[key("inferfront_request_upstream_seconds_bucket", **green, le="0.005")] == 1
    assert samples[key("inferfront_queue_length", **blue)] == 1
    assert samples[key("inferfront_replica_inflight", **blue, replica="r0")] == 2
    assert samples[key("inferfront_replicas_ready", **blue)] == 2
    assert samples[key("inferfront_replicas", **green, state="starting")] == 1
    assert samples[key("inferfront_replicas", **digits, state="draining")] == 1
    assert samples[key("inferfront_retries_total", **blue)] == 2
    assert samples[key("inferfront_desired_replicas", **green)] == 2
    assert samples[key("inferfront_utilization", **green)] == 0.5
    assert samples[key("inferfront_utilization_average", **green)] == 0.4
    assert samples[key("inferfront_scaling_decisions_total", **green)] == 1
    assert key("inferfront_desired_replicas", **blue) not in samples
    assert samples[key("inferfront_router_open_connections")] == 3


async def test_metrics_reflect_live_state(client: httpx.AsyncClient, cluster: Cluster) -> None:
    blue = {"endpoint": "iris", "deployment": "blue"}
    before = samples_of((await client.get("/metrics")).text)
    assert before[key("inferfront_queue_length", **blue)] == 1

    table = cluster.blue.table
    table.release(table.replicas["r0"])  # the queued request takes the freed slot
    table.release(table.replicas["r1"])
    cluster.blue.stats.record(502, 0.0, 0.1, 0.1)
    cluster.open_connections = 9

    after = samples_of((await client.get("/metrics")).text)
    assert after[key("inferfront_queue_length", **blue)] == 0
    assert after[key("inferfront_replica_inflight", **blue, replica="r0")] == 2
    assert after[key("inferfront_replica_inflight", **blue, replica="r1")] == 1
    assert after[key("inferfront_requests_total", **blue, code="502")] == 1
    assert after[key("inferfront_router_open_connections")] == 9


async def test_deployments_view(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/v1/deployments")
    assert response.status_code == 200
    document = response.json()
    assert [endpoint["name"] for endpoint in document["endpoints"]] == ["iris", "digits"]
    iris = document["endpoints"][0]
    blue, green = iris["deployments"]
    assert blue == {
        "name": "blue",
        "queue_length": 1,
        "inflight": 4,
        "limit_per_replica": 2,
        "max_queued": 10,
        "replicas": [
            {"name": "r0", "address": "127.0.0.1:9100", "state": "ready", "inflight": 2},
            {"name": "r1", "address": "127.0.0.1:9101", "state": "ready", "inflight": 2},
            {"name": "r2", "address": "127.0.0.1:9102", "state": "unready", "inflight": 0},
            {"name": "r3", "address": None, "state": "starting", "inflight": 0},
        ],
        "scaling": None,
        "responses": {"200": 2, "503": 1},
    }
    assert green["name"] == "green"
    assert green["limit_per_replica"] == 1
    assert green["scaling"] == SCALING
    assert green["responses"] == {"200": 1}
    (digits,) = document["endpoints"][1]["deployments"]
    assert digits["max_queued"] == 0
    assert digits["replicas"] == [
        {"name": "d0", "address": "127.0.0.1:9100", "state": "draining", "inflight": 0}
    ]


async def test_unknown_path_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope", params={"x": "1"})
    assert response.status_code == 404
    assert response.json() == {"error": "not found", "path": "/nope"}
    assert (await client.get("/metrics/")).status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "PATCH"])
async def test_only_get_is_allowed(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/metrics", content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    if method != "HEAD":
        assert response.json() == {"error": "method not allowed"}
    # the connection survives: the body was consumed and the next request is answered
    assert (await client.get("/healthz")).status_code == 200


async def test_query_string_is_ignored_for_routing(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz?verbose=1")
    assert response.json() == {"status": "ok"}


async def test_extra_json_routes(admin: AdminServer, client: httpx.AsyncClient) -> None:
    calls = []

    def cluster_view() -> dict[str, Any]:
        calls.append(1)
        return {"instances": [{"name": "fe-0", "state": "up"}], "calls": len(calls)}

    async def remote_view() -> list[int]:
        await asyncio.sleep(0)  # a real view would await a peer here
        return [1, 2, 3]

    admin.add_json_route("/admin/v1/cluster", cluster_view)
    admin.add_json_route("/admin/v1/remote", remote_view)
    response = await client.get("/admin/v1/cluster")
    assert response.status_code == 200
    assert response.json() == {"instances": [{"name": "fe-0", "state": "up"}], "calls": 1}
    assert (await client.get("/admin/v1/cluster")).json()["calls"] == 2
    assert (await client.get("/admin/v1/remote")).json() == [1, 2, 3]
    assert (await client.post("/admin/v1/cluster")).status_code == 405
    with pytest.raises(ValueError):
        admin.add_json_route("/metrics", cluster_view)
    with pytest.raises(ValueError):
        admin.add_json_route("no-slash", cluster_view)


async def test_failing_route_is_500_and_the_connection_survives(
    admin: AdminServer, client: httpx.AsyncClient
) -> None:
    def broken() -> object:
        raise RuntimeError("view exploded")

    async def broken_later() -> object:
        raise RuntimeError("async view exploded")

    admin.add_json_route("/broken", broken)
    admin.add_json_route("/broken-later", broken_later)
    for path in ("/broken", "/broken-later"):
        response = await client.get(path)
        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
    assert (await client.get("/healthz")).status_code == 200


# -- connection handling ------------------------------------------------------------------------


async def test_keep_alive_and_pipelining_answer_in_order(admin: AdminServer) -> None:
    async def slow_view() -> str:
        for _ in range(3):
            await asyncio.sleep(0)
        return "slow"

    admin.add_json_route("/slow", slow_view)
    reader, writer = await connect(admin)
    try:
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        answers = [await read_response(reader) for _ in range(3)]
        assert [(status, body) for status, _, body in answers] == [
            (200, b'"slow"\n'),
            (200, b'{"status":"ok"}\n'),
            (404, b'{"error":"not found","path":"/nope"}\n'),
        ]
        assert all("connection" not in headers for _, headers, _ in answers)
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n")  # same connection, later
        status, _, _ = await read_response(reader)
        assert status == 200
    finally:
        writer.close()


async def test_connection_close_is_honoured(admin: AdminServer) -> None:
    reader, writer = await connect(admin)
    try:
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await read_eof(reader) == b""  # the second request is never answered
    finally:
        writer.close()


async def test_http_10(admin: AdminServer) -> None:
    reader, writer = await connect(admin)
    try:
        writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "keep-alive")
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await read_eof(reader) == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000, 413),
    ],
    ids=["garbage", "duplicate-length", "upgrade", "long-url", "many-headers", "big-body"],
)
async def test_bad_requests_are_refused_and_closed(
    admin: AdminServer, request_bytes: bytes, status: int
) -> None:
    reader, writer = await connect(admin)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" + request_bytes)
        first, _, _ = await read_response(reader)
        assert first == 200  # what came before the bad request is still answered
        refused, headers, body = await read_response(reader)
        assert (refused, headers["connection"]) == (status, "close")
        assert b'"error"' in body
        assert await read_eof(reader) == b""
    finally:
        writer.close()


async def test_idle_connections_are_closed(cluster: Cluster) -> None:
    metrics = Metrics(cluster.deployments)
    server = AdminServer(metrics, cluster.deployments, cluster.readiness, idle_timeout=0.05)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await read_eof(reader) == b""  # closed by the server once idle
        writer.close()
    finally:
        await server.close()


async def test_close_drops_open_connections_and_the_listener(cluster: Cluster) -> None:
    server = AdminServer(Metrics(cluster.deployments), cluster.deployments, cluster.readiness)
    await server.start("127.0.0.1", 0)
    reader, writer = await connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    await server.close()
    assert await read_eof(reader) == b""
    writer.close()
    with pytest.raises(OSError):
        await connect(server)
    await server.close()  # closing twice is harmless
