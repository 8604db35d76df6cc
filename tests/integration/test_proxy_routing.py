"""End-to-end routing through a real router process: URL shapes, traffic split, pinning, mirror,
keys, forwarded headers, request ids and the access log, as a client and a replica see them.

One router (module scope) serves several endpoints, each built for a group of tests; every test
uses its own endpoint or resets the model servers it counts on, so the order does not matter.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest

from tests.helpers import (
    ModelServerHandle,
    ThreadedReplica,
    start_model_servers,
    stop_servers,
    wait_until,
)
from tests.router import RouterFactory, RouterHandle

HTTP_TIMEOUT = 10.0
NO_ROUTE = (
    "No route found or no valid deployments to route to, please check that the endpoint has at "
    "least one deployment with positive weight values or use a deployment specific header to route."
)
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PRIMARY_KEY = "primary-9f8e7d6c5b4a"
SECONDARY_KEY = "secondary-0a1b2c3d4e5f"
SPLIT_REQUESTS = 2000
MIRROR_PERCENT = 20
MIRROR_REQUESTS = 200


class HangingReplica(ThreadedReplica):
    """A replica that passes its readiness probe (`GET /`) and never answers anything else.

    Runs in a thread of the test process on a real loopback socket; `received` counts the
    requests it holds. Everything it holds is let go at `close()`.
    """

    def __init__(self) -> None:
        self.release = threading.Event()  # before the server starts: requests wait on it
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        self.release.wait()
        request.close_connection = True

    def close(self) -> None:
        self.release.set()
        super().close()


class Cluster:
    """The module's router and the replicas behind each of its endpoints."""

    def __init__(
        self, handle: RouterHandle, servers: dict[str, ModelServerHandle], hanging: HangingReplica
    ) -> None:
        self.router = handle
        self.servers = servers
        self.hanging = hanging

    def url(self, endpoint: str, rest: str = "score") -> str:
        return f"{self.router.url}/api/v1/endpoint/{endpoint}/{rest}"


SERVER_NAMES = ("b0", "g0", "s-blue", "s-green", "l0", "h0", "m-live", "dead0", "k0")


def _deployment(name: str, servers: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "urls": servers, **extra}


def _endpoint(
    name: str, traffic: dict[str, int], deployments: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "auth_mode": "none",
        "traffic": traffic,
        "deployments": deployments,
        **extra,
    }


def cluster_config(urls: dict[str, str], hanging_url: str) -> dict[str, Any]:
    return {
        "endpoints": [
            # Both deployments echo; green takes no traffic unless pinned.
            _endpoint(
                "iris",
                {"blue": 100, "green": 0},
                [
                    _deployment("blue", [urls["b0"]]),
                    _deployment("green", [urls["g0"]]),
                ],
            ),
            _endpoint(
                "custom",
                {"blue": 100},
                [
                    _deployment("blue", [urls["b0"]], scoring_route="/v2/models/iris/infer"),
                ],
            ),
            _endpoint("dark", {}, [_deployment("blue", [urls["b0"]])]),
            _endpoint(
                "split",
                {"blue": 90, "green": 10},
                [
                    _deployment("blue", [urls["s-blue"]]),
                    _deployment("green", [urls["s-green"]]),
                ],
            ),
            _endpoint(
                "mirrored",
                {"live": 100},
                [
                    _deployment("live", [urls["l0"]]),
                    _deployment(
                        "shadow",
                        [urls["h0"]],
                        request_settings={"max_concurrent_requests_per_instance": 8},
                    ),
                ],
                mirror_traffic={"shadow": MIRROR_PERCENT},
            ),
            _endpoint(
                "mirror-hang",
                {"live": 100},
                [
                    _deployment("live", [urls["m-live"]]),
                    _deployment(
                        "shadow", [hanging_url], request_settings={"request_timeout_ms": 1500}
                    ),
                ],
                mirror_traffic={"shadow": 50},
            ),
            _endpoint(
                "mirror-dead",
                {"live": 100},
                [
                    _deployment("live", [urls["m-live"]]),
                    _deployment("shadow", [urls["dead0"]]),
                ],
                mirror_traffic={"shadow": 50},
            ),
            {
                "name": "keyed",
                "auth_mode": "key",
                "keys": {"primary": PRIMARY_KEY, "secondary": SECONDARY_KEY},
                "traffic": {"blue": 100},
                "deployments": [_deployment("blue", [urls["k0"]])],
            },
        ]
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    servers = start_model_servers(SERVER_NAMES)
    hanging = HangingReplica()
    factory = RouterFactory(Path(tmp_path_factory.mktemp("routing")))
    try:
        by_name = {s.name: s for s in servers}
        handle = factory(cluster_config({n: s.url for n, s in by_name.items()}, hanging.url))
        yield Cluster(handle, by_name, hanging)
    finally:
        factory.stop_all()
        hanging.close()
        stop_servers(servers)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        yield http


def echoed(response: httpx.Response) -> dict[str, Any]:
    """The model server's echo of what it received (path, query, headers, body digest)."""
    assert response.status_code == 200, response.text
    return response.json()


def access_log(handle: RouterHandle) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(handle.stdout) if line.startswith("{")]


def log_line_for(handle: RouterHandle, request_id: str) -> dict[str, Any]:
    def line() -> list[dict[str, Any]]:
        return [entry for entry in access_log(handle) if entry["request_id"] == request_id]

    lines = wait_until(line, message=f"access log line for {request_id}")
    assert len(lines) == 1, lines
    return lines[0]


def assert_azure_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["error"]["code"] == code
    assert GUID.match(document["request_id"])
    assert document["request_id"] == response.headers["x-request-id"]
    return document


# ==========================================================================================
# URL shapes and the path the replica sees
# ==========================================================================================


def test_endpoint_url_reaches_the_scoring_route_with_the_query(
    cluster: Cluster, client: httpx.Client
) -> None:
    seen = echoed(client.post(cluster.url("iris", "score?alpha=1&beta=two%20words"), content=b"{}"))
    assert seen["replica"] == "b0"
    assert seen["path"] == "/score"
    assert seen["query"] == "alpha=1&beta=two%20words"
    assert seen["method"] == "POST"


def test_endpoint_url_forwards_other_paths_as_they_are(
    cluster: Cluster, client: httpx.Client
) -> None:
    seen = echoed(client.get(cluster.url("iris", "swagger.json?version=2")))
    assert seen["path"] == "/swagger.json"
    assert seen["query"] == "version=2"
    assert seen["method"] == "GET"


def test_v1_service_url_reaches_the_scoring_route(cluster: Cluster, client: httpx.Client) -> None:
    response = client.post(f"{cluster.router.url}/api/v1/service/iris/score?x=1", content=b"{}")
    seen = echoed(response)
    assert (seen["path"], seen["query"]) == ("/score", "x=1")


def test_host_name_routes_to_the_endpoint(cluster: Cluster, client: httpx.Client) -> None:
    host = {"Host": "iris.westeurope.inference.example.com"}
    seen = echoed(client.post(f"{cluster.router.url}/score?q=7", content=b"{}", headers=host))
    assert (seen["replica"], seen["path"], seen["query"]) == ("b0", "/score", "q=7")
    seen = echoed(client.get(f"{cluster.router.url}/swagger.json", headers=host))
    assert seen["path"] == "/swagger.json"


def test_scoring_route_is_honoured_for_every_url_shape(
    cluster: Cluster, client: httpx.Client
) -> None:
    by_endpoint_url = echoed(client.post(cluster.url("custom", "score?a=b"), content=b"{}"))
    by_service_url = echoed(
        client.post(f"{cluster.router.url}/api/v1/service/custom/score", content=b"{}")
    )
    by_host = echoed(
        client.post(
            f"{cluster.router.url}/score", content=b"{}", headers={"Host": "custom.example.com"}
        )
    )
    assert by_endpoint_url["path"] == "/v2/models/iris/infer"
    assert by_endpoint_url["query"] == "a=b"
    assert by_service_url["path"] == "/v2/models/iris/infer"
    assert by_host["path"] == "/v2/models/iris/infer"


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/api/v1/endpoint/nosuch/score", None),
        ("/api/v1/service/nosuch/score", None),
        ("/score", "nosuch.example.com"),
        ("/somewhere/else", None),
    ],
)
def test_unknown_endpoint_is_404_with_azures_message(
    cluster: Cluster, client: httpx.Client, path: str, host: str | None
) -> None:
    headers = {"Host": host} if host else {}
    response = client.post(cluster.router.url + path, content=b"{}", headers=headers)
    assert assert_azure_error(response, 404, "NotFound")["error"]["message"] == NO_ROUTE


def test_endpoint_without_positive_traffic_is_404_unless_pinned(
    cluster: Cluster, client: httpx.Client
) -> None:
    response = client.post(cluster.url("dark"), content=b"{}")
    assert assert_azure_error(response, 404, "NotFound")["error"]["message"] == NO_ROUTE
    pinned = client.post(
        cluster.url("dark"), content=b"{}", headers={"azureml-model-deployment": "blue"}
    )
    assert echoed(pinned)["replica"] == "b0"


# ==========================================================================================
# Deployment choice: pinning, weighted split
# ==========================================================================================


def test_pinned_deployment_is_served_even_at_zero_percent(
    cluster: Cluster, client: httpx.Client
) -> None:
    for _ in range(3):
        response = client.post(
            cluster.url("iris"), content=b"{}", headers={"azureml-model-deployment": "green"}
        )
        assert echoed(response)["replica"] == "g0"
        assert response.headers["azureml-model-deployment"] == "green"
    unpinned = client.post(cluster.url("iris"), content=b"{}")
    assert unpinned.headers["azureml-model-deployment"] == "blue"


def test_unknown_pinned_deployment_is_404(cluster: Cluster, client: httpx.Client) -> None:
    response = client.post(
        cluster.url("iris"), content=b"{}", headers={"azureml-model-deployment": "purple"}
    )
    assert_azure_error(response, 404, "NotFound")
    assert "azureml-model-deployment" not in response.headers


class KeepAliveClient:
    """Sequential requests on one raw keep-alive connection, parsed with llhttp.

    Thousands of requests through httpx take seconds of client CPU; this keeps the split test
    measuring the router, and it reads only what the test needs (status and headers).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT)
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[dict[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self.responses.append({})

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1][name.lower()] = value

    def on_headers_complete(self) -> None:
        self.responses[-1][b":status"] = str(self.parser.get_status_code()).encode()

    def request(self, raw: bytes) -> dict[bytes, bytes]:
        wanted = len(self.responses) + 1
        self.sock.sendall(raw)
        while len(self.responses) < wanted or b":done" not in self.responses[-1]:
            data = self.sock.recv(65536)
            assert data, "the router closed the connection"
            self.parser.feed_data(data)
        return self.responses[-1]

    def on_message_complete(self) -> None:
        self.responses[-1][b":done"] = b""

    def close(self) -> None:
        self.sock.close()


def test_weighted_split_sends_ninety_ten(cluster: Cluster) -> None:
    raw = b"POST /api/v1/endpoint/split/score HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    counts = {b"blue": 0, b"green": 0}
    client = KeepAliveClient(cluster.router.port)
    try:
        for _ in range(SPLIT_REQUESTS):
            response = client.request(raw)
            assert response[b":status"] == b"200"
            counts[response[b"azureml-model-deployment"]] += 1
    finally:
        client.close()
    green_percent = 100 * counts[b"green"] / SPLIT_REQUESTS
    assert abs(green_percent - 10) <= 1, counts
    # The replicas agree with what the client was told.
    assert cluster.servers["s-green"].stats(history=False)["requests"] == counts[b"green"]
    assert cluster.servers["s-blue"].stats(history=False)["requests"] == counts[b"blue"]


# ==========================================================================================
# Mirror traffic
# ==========================================================================================


def shadow_inflight(cluster: Cluster, endpoint: str) -> int:
    return cluster.router.deployment(endpoint, "shadow")["inflight"]


def test_mirror_receives_its_percent_and_the_client_gets_the_live_answer(
    cluster: Cluster, client: httpx.Client
) -> None:
    shadow = cluster.servers["h0"]
    shadow.reset()
    for index in range(MIRROR_REQUESTS):
        response = client.post(cluster.url("mirrored", f"score?i={index}"), content=b"{}")
        assert echoed(response)["replica"] == "l0"
        assert response.headers["azureml-model-deployment"] == "live"
    expected = MIRROR_REQUESTS * MIRROR_PERCENT // 100
    wait_until(
        lambda: shadow.stats(history=False)["completed"] >= expected * 0.9,
        message="mirror copies arrive",
    )
    wait_until(lambda: shadow_inflight(cluster, "mirrored") == 0, message="copies finish")
    copies = shadow.stats(history=False)["requests"]
    assert expected * 0.9 <= copies <= expected, copies
    assert cluster.servers["l0"].stats(history=False)["requests"] >= MIRROR_REQUESTS


def test_pinned_requests_are_not_mirrored(cluster: Cluster, client: httpx.Client) -> None:
    shadow = cluster.servers["h0"]
    wait_until(lambda: shadow_inflight(cluster, "mirrored") == 0)
    shadow.reset()
    for _ in range(20):
        response = client.post(
            cluster.url("mirrored"), content=b"{}", headers={"azureml-model-deployment": "live"}
        )
        assert echoed(response)["replica"] == "l0"
    assert shadow.stats(history=False)["requests"] == 0


def test_hanging_mirror_does_not_hold_up_clients(cluster: Cluster, client: httpx.Client) -> None:
    hanging = cluster.hanging
    # Every second request is copied: send until the hanging mirror holds one copy.
    for _ in range(4):
        assert echoed(client.post(cluster.url("mirror-hang"), content=b"{}"))["replica"] == "m-live"
    wait_until(lambda: hanging.received >= 1, message="the mirror got a copy")
    held = hanging.received
    # While that copy hangs, clients keep getting the live answer.
    for _ in range(20):
        response = client.post(cluster.url("mirror-hang"), content=b"{}")
        assert echoed(response)["replica"] == "m-live"
    assert shadow_inflight(cluster, "mirror-hang") == 1
    assert hanging.received == held  # no further copies while its only slot is taken
    skipped = cluster.router.metric("inferfront_mirror_copies_skipped")
    assert skipped >= 10  # every second of the 20 requests was meant to be copied
    # The hung copy is bounded by the mirror deployment's own request timeout.
    wait_until(lambda: shadow_inflight(cluster, "mirror-hang") == 0, timeout=10)


def test_dead_mirror_does_not_fail_clients(cluster: Cluster, client: httpx.Client) -> None:
    cluster.servers["dead0"].kill()
    for _ in range(20):
        response = client.post(cluster.url("mirror-dead"), content=b"{}")
        assert echoed(response)["replica"] == "m-live"
    # Copies were tried, and failed, aside.
    wait_until(
        lambda: cluster.router.deployment("mirror-dead", "shadow")["responses"].get("502"),
        message="failed mirror copies are counted on the mirror deployment",
    )


# ==========================================================================================
# Keys
# ==========================================================================================


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", PRIMARY_KEY, f"Basic {PRIMARY_KEY}", f"Bearer {PRIMARY_KEY}x"],
)
def test_missing_or_wrong_key_is_401(
    cluster: Cluster, client: httpx.Client, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    replica = cluster.servers["k0"]
    before = replica.stats(history=False)["requests"]
    response = client.post(cluster.url("keyed"), content=b"{}", headers=headers)
    assert_azure_error(response, 401, "Unauthorized")
    assert replica.stats(history=False)["requests"] == before  # never forwarded


@pytest.mark.parametrize("key", [PRIMARY_KEY, SECONDARY_KEY])
def test_either_key_is_accepted_and_never_forwarded_or_logged(
    cluster: Cluster, client: httpx.Client, key: str
) -> None:
    request_id = str(uuid.uuid4())
    response = client.post(
        cluster.url("keyed"),
        content=b"{}",
        headers={"Authorization": f"Bearer {key}", "x-request-id": request_id},
    )
    seen = echoed(response)
    assert "authorization" not in seen["headers"]
    assert key not in json.dumps(seen)
    log_line_for(cluster.router, request_id)  # the line is written ...
    everything = "\n".join(list(cluster.router.stdout) + list(cluster.router.stderr))
    assert key not in everything  # ... and no key anywhere in the router's output


# ==========================================================================================
# Headers both ways
# ==========================================================================================


def test_hop_by_hop_headers_are_not_forwarded(cluster: Cluster, client: httpx.Client) -> None:
    response = client.post(
        cluster.url("iris"),
        content=b"{}",
        headers={
            "Keep-Alive": "timeout=5, max=100",
            "TE": "trailers",
            "Proxy-Authorization": "Basic dXNlcjpwYXNz",
            "Proxy-Connection": "keep-alive",
            "X-Ordinary": "kept",
        },
    )
    headers = echoed(response)["headers"]
    for name in ("keep-alive", "te", "proxy-authorization", "proxy-connection", "connection"):
        assert name not in headers, name
    assert headers["x-ordinary"] == "kept"


def test_headers_named_in_connection_are_not_forwarded(
    cluster: Cluster, client: httpx.Client
) -> None:
    response = client.post(
        cluster.url("iris"),
        content=b"{}",
        headers={"Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "for-the-proxy-only"},
    )
    assert "x-hop-secret" not in echoed(response)["headers"]


def test_every_proxy_header_is_dropped(cluster: Cluster, client: httpx.Client) -> None:
    # `Proxy:` is the httpoxy header (CGI turns it into HTTP_PROXY); the brief drops all Proxy-*.
    response = client.post(
        cluster.url("iris"),
        content=b"{}",
        headers={"Proxy": "http://attacker.example:3128", "Proxy-Custom": "1"},
    )
    headers = echoed(response)["headers"]
    assert "proxy" not in headers
    assert "proxy-custom" not in headers


def test_forwarded_headers_are_added(cluster: Cluster, client: httpx.Client) -> None:
    fresh = echoed(client.post(cluster.url("iris"), content=b"{}"))["headers"]
    assert fresh["x-forwarded-for"] == "127.0.0.1"
    assert fresh["x-forwarded-proto"] == "http"
    assert fresh["x-forwarded-host"] == cluster.router.url.removeprefix("http://")
    chained = echoed(
        client.post(
            cluster.url("iris"), content=b"{}", headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.2"}
        )
    )["headers"]
    assert chained["x-forwarded-for"] == "203.0.113.7, 10.0.0.2, 127.0.0.1"


def test_forwarded_host_names_the_host_the_client_asked_for(
    cluster: Cluster, client: httpx.Client
) -> None:
    host = "iris.eastus.inference.example.com"
    seen = echoed(client.post(f"{cluster.router.url}/score", content=b"{}", headers={"Host": host}))
    assert seen["headers"]["x-forwarded-host"] == host


def test_request_id_is_generated_when_missing(cluster: Cluster, client: httpx.Client) -> None:
    first = client.post(cluster.url("iris"), content=b"{}")
    second = client.post(cluster.url("iris"), content=b"{}")
    for response in (first, second):
        request_id = response.headers["x-request-id"]
        assert GUID.match(request_id)
        assert response.headers["x-ms-request-id"] == request_id
        assert echoed(response)["headers"]["x-request-id"] == request_id
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("bad", ["not-a-guid", "1234", "{" + "0" * 36 + "}", "g" * 36])
def test_request_id_that_is_not_a_guid_is_replaced(
    cluster: Cluster, client: httpx.Client, bad: str
) -> None:
    response = client.post(cluster.url("iris"), content=b"{}", headers={"x-request-id": bad})
    request_id = response.headers["x-request-id"]
    assert request_id != bad
    assert GUID.match(request_id)
    assert echoed(response)["headers"]["x-request-id"] == request_id


def test_valid_request_id_is_kept(cluster: Cluster, client: httpx.Client) -> None:
    given = str(uuid.uuid4())
    response = client.post(cluster.url("iris"), content=b"{}", headers={"x-request-id": given})
    assert response.headers["x-request-id"] == given
    assert response.headers["x-ms-request-id"] == given
    assert echoed(response)["headers"]["x-request-id"] == given


def test_request_id_is_on_router_errors_too(cluster: Cluster, client: httpx.Client) -> None:
    given = str(uuid.uuid4())
    response = client.post(cluster.url("nosuch"), headers={"x-request-id": given})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == given
    assert response.json()["request_id"] == given


@pytest.mark.parametrize(
    ("sent", "cleaned"),
    [
        ("client-id_42", "client-id_42"),
        ("a.b c/d:e;f\"g'h", "abcdefgh"),
        ("x" * 30 + "-" * 5 + "y" * 20, "x" * 30 + "-" * 5 + "y" * 5),
        ("ünïcode-ok", "ncode-ok"),
    ],
)
def test_client_request_id_is_cleaned_and_echoed(
    cluster: Cluster, client: httpx.Client, sent: str, cleaned: str
) -> None:
    response = client.post(
        cluster.url("iris"),
        content=b"{}",
        headers={"x-ms-client-request-id": sent.encode("utf-8")},
    )
    assert response.headers["x-ms-client-request-id"] == cleaned
    assert echoed(response)["headers"]["x-ms-client-request-id"] == cleaned


def test_response_names_the_deployment(cluster: Cluster, client: httpx.Client) -> None:
    response = client.post(cluster.url("iris"), content=b"{}")
    assert response.headers["azureml-model-deployment"] == "blue"


@pytest.mark.parametrize("status", [201, 400, 418, 500, 503])
def test_replica_status_and_body_pass_through(
    cluster: Cluster, client: httpx.Client, status: int
) -> None:
    response = client.post(cluster.url("iris", f"score?status={status}"), content=b"abc")
    assert response.status_code == status
    document = response.json()  # the replica's own body, not a router error
    assert document["replica"] == "b0"
    assert document["bytes"] == 3
    assert response.headers["x-replica"] == "b0"
    assert response.headers["azureml-model-deployment"] == "blue"


# ==========================================================================================
# Access log
# ==========================================================================================


def test_access_log_has_one_line_per_request(cluster: Cluster, client: httpx.Client) -> None:
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for request_id in ids:
        client.post(
            cluster.url("iris", "score?status=418"),
            content=b"hello",
            headers={"x-request-id": request_id},
        )
    for request_id in ids:
        line = log_line_for(cluster.router, request_id)
        assert line["endpoint"] == "iris"
        assert line["deployment"] == "blue"
        assert line["replica"] == "blue-0"
        assert line["status"] == 418
        assert line["method"] == "POST"
        assert line["path"] == "/api/v1/endpoint/iris/score?status=418"
        assert line["bytes_in"] == 5
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["time"])
        for field in ("total_ms", "queue_ms", "upstream_ms"):
            assert isinstance(line[field], float) and line[field] >= 0, field
        assert line["queue_ms"] + line["upstream_ms"] <= line["total_ms"] + 0.01


def test_access_log_records_router_errors(cluster: Cluster, client: httpx.Client) -> None:
    request_id = str(uuid.uuid4())
    client.post(cluster.url("nosuch"), headers={"x-request-id": request_id})
    line = log_line_for(cluster.router, request_id)
    assert line["status"] == 404
    assert line["endpoint"] is None
    assert line["deployment"] is None
    assert line["replica"] is None
