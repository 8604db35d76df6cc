"""The controllable model server, exercised as a real process over loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httptools
import httpx
import pytest

from tests.conftest import ModelServerFactory
from tests.helpers import (
    REPO_ROOT,
    ModelServerHandle,
    RawResponse,
    ResponseCollector,
    async_wait_until,
    free_port,
    wait_until,
)
from tests.servers.model_server import download_body

SOCKET_TIMEOUT = 10.0


def read_responses(sock: socket.socket, count: int) -> list[RawResponse]:
    """Read until `count` complete responses arrived or the server closed the connection."""
    collector = ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    while sum(response.complete for response in collector.responses) < count:
        data = sock.recv(65536)
        if not data:
            break
        parser.feed_data(data)
        if collector.responses and not collector.responses[-1].status:
            collector.responses[-1].status = parser.get_status_code()
    return collector.responses


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


@pytest.fixture
def server(model_server: ModelServerFactory) -> ModelServerHandle:
    return model_server("r0")


@pytest.fixture
def client(server: ModelServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT) as http:
        yield http


def connect(server: ModelServerHandle) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)


def test_health_can_be_flipped_and_is_not_counted(
    server: ModelServerHandle, client: httpx.Client
) -> None:
    response = client.get("/")
    assert (response.status_code, response.text) == (200, "Healthy")

    server.set_health(503)
    assert client.get("/").status_code == 503
    server.set_health(200)
    assert client.get("/").text == "Healthy"

    stats = server.stats()
    assert stats["requests"] == 0
    assert stats["health_checks"] == 3
    assert stats["timeline"] == []


def test_score_echoes_body_hash_and_headers(server: ModelServerHandle, client: httpx.Client):
    body = b'{"data": [[1, 2, 3, 4]]}'
    response = client.post("/score", content=body, headers={"X-Custom-Thing": "Value"})

    assert response.status_code == 200
    assert response.headers["x-replica"] == "r0"
    answer = response.json()
    assert answer["replica"] == "r0"
    assert answer["path"] == "/score"
    assert answer["method"] == "POST"
    assert answer["bytes"] == len(body)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["headers"]["x-custom-thing"] == "Value"
    assert answer["headers"]["content-length"] == str(len(body))

    other = client.put("/any/other/path?x=1").json()
    assert (other["path"], other["method"], other["query"]) == ("/any/other/path", "PUT", "x=1")
    assert other["sha256"] == hashlib.sha256(b"").hexdigest()

    stats = server.stats()
    assert (stats["requests"], stats["completed"], stats["inflight"]) == (2, 2, 0)
    assert len(stats["timeline"]) == 2


def test_chunked_upload_hash_matches(client: httpx.Client) -> None:
    pieces = [os.urandom(size) for size in (1, 4095, 70_000, 3, 1_000_000)]

    def generate() -> Iterator[bytes]:
        yield from pieces

    # A generator body makes httpx send Transfer-Encoding: chunked.
    answer = client.post("/score", content=generate()).json()

    whole = b"".join(pieces)
    assert answer["headers"]["transfer-encoding"] == "chunked"
    assert answer["bytes"] == len(whole)
    assert answer["sha256"] == hashlib.sha256(whole).hexdigest()


def test_large_content_length_upload_hash_matches(client: httpx.Client) -> None:
    body = os.urandom(8 * 1024 * 1024 + 7)
    answer = client.post("/upload", content=body).json()
    assert answer["bytes"] == len(body)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()


def test_status_parameter_keeps_json_body(client: httpx.Client) -> None:
    response = client.post("/score?status=503", content=b"x")
    assert response.status_code == 503
    assert response.json()["bytes"] == 1


def test_invalid_parameters_are_rejected(client: httpx.Client) -> None:
    assert client.post("/score?mode=nonsense").status_code == 400
    assert client.post("/score?delay_ms=soon").status_code == 400
    assert client.post("/score?status=99").status_code == 400
    assert client.post("/control/health?status=42").status_code == 400


def test_delay_holds_the_request_in_flight(server: ModelServerHandle, client: httpx.Client):
    response = client.post("/score?delay_ms=150")
    assert response.status_code == 200
    [(started, ended)] = server.stats()["timeline"]
    assert ended - started >= 0.15


@pytest.mark.parametrize("chunked", [False, True])
def test_sized_download(client: httpx.Client, chunked: bool) -> None:
    size = 3 * 64 * 1024 + 123
    query = f"/download?size={size}" + ("&chunked=1" if chunked else "")
    with client.stream("GET", query) as response:
        received = b"".join(response.iter_bytes())
        headers = response.headers

    assert received == download_body(size)
    if chunked:
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
    else:
        assert headers["content-length"] == str(size)


def test_small_and_empty_downloads(client: httpx.Client) -> None:
    assert client.get("/d?size=10").content == download_body(10)
    assert client.get("/d?size=0").content == b""
    assert client.get("/d?size=5&chunked=1").content == download_body(5)


def test_chunked_json_answer(client: httpx.Client) -> None:
    response = client.post("/score?chunked=1", content=b"abc")
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()


def test_crash_mid_sends_part_of_the_body_then_closes(
    server: ModelServerHandle, client: httpx.Client
) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /score?mode=crash_mid HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
        )
        received = read_until_closed(sock)

    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 100000" in head
    assert len(body) == 10

    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/score?mode=crash_mid")
    wait_until(lambda: server.stats()["inflight"] == 0, message="crashed requests ended")
    stats = server.stats()
    assert (stats["requests"], stats["completed"]) == (2, 0)


def test_close_before_answers_nothing(server: ModelServerHandle) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /score?mode=close_before HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until_closed(sock) == b""
    wait_until(lambda: server.stats()["inflight"] == 0)


def test_hang_keeps_the_request_in_flight_until_the_client_leaves(
    server: ModelServerHandle,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /score?mode=hang HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: server.stats()["inflight"] == 1, message="hanging request in flight")
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # nothing was answered
    wait_until(lambda: server.stats()["inflight"] == 0, message="closing ends the request")
    assert server.stats()["completed"] == 0


def test_sse_streams_events_at_increasing_times(server: ModelServerHandle, client: httpx.Client):
    events = []
    with client.stream("GET", "/score?mode=sse&events=4&interval_ms=20") as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))

    assert events == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    times = server.stats()["sse_events"]
    assert len(times) == 4
    assert all(later > earlier for earlier, later in itertools.pairwise(times))
    assert times[-1] - times[0] >= 3 * 0.020


def test_exit_mode_ends_the_process(server: ModelServerHandle, client: httpx.Client) -> None:
    with pytest.raises(httpx.TransportError):
        client.post("/score?mode=exit", content=b"bye")
    assert server.wait_exit() == 3


def test_kill_leaves_nothing_listening(server: ModelServerHandle) -> None:
    server.kill()
    assert server.returncode == -9
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)


async def test_peak_inflight_with_twenty_concurrent_delayed_requests(
    server: ModelServerHandle,
) -> None:
    release = asyncio.Event()

    async def body_finished_on_release() -> AsyncIterator[bytes]:
        # The head arrives at once (request in flight); the body ends only on release, so all
        # twenty are provably in flight together without relying on timing.
        yield b"first part "
        await release.wait()
        yield b"last part"

    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as http:
        calls = [
            asyncio.create_task(http.post("/score?delay_ms=50", content=body_finished_on_release()))
            for _ in range(20)
        ]
        await async_wait_until(
            lambda: _inflight_is(server, 20), message="20 requests in flight at the server"
        )
        release.set()
        responses = await asyncio.gather(*calls)

    assert all(response.status_code == 200 for response in responses)
    expected_hash = hashlib.sha256(b"first part last part").hexdigest()
    assert all(response.json()["sha256"] == expected_hash for response in responses)
    stats = await server.astats()
    assert stats["peak_inflight"] == 20
    assert (stats["inflight"], stats["requests"], stats["completed"]) == (0, 20, 20)
    assert len(stats["timeline"]) == 20
    assert all(end - start >= 0.05 for start, end in stats["timeline"])


async def _inflight_is(server: ModelServerHandle, count: int) -> bool:
    return (await server.astats(history=False))["inflight"] == count


def test_stats_reset(server: ModelServerHandle, client: httpx.Client) -> None:
    client.post("/score")
    client.get("/score?mode=sse&events=1")
    assert client.get("/stats/reset").status_code == 405
    assert client.post("/stats/reset").json() == {"reset": True}

    stats = server.stats()
    assert (stats["requests"], stats["peak_inflight"], stats["inflight"]) == (0, 0, 0)
    assert stats["timeline"] == []
    assert stats["sse_events"] == []
    assert stats["name"] == "r0"
    assert "timeline" not in server.stats(history=False)


def test_pipelined_requests_are_answered_in_order(server: ModelServerHandle) -> None:
    pipeline = (
        b"POST /first?delay_ms=50 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /third HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nde\r\n0\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(pipeline)
        responses = read_responses(sock, 3)

    paths = [json.loads(response.body)["path"] for response in responses]
    assert paths == ["/first", "/second", "/third"]
    assert json.loads(responses[2].body)["sha256"] == hashlib.sha256(b"de").hexdigest()


def test_keep_alive_reuses_one_connection(server: ModelServerHandle) -> None:
    with connect(server) as sock:
        for index in range(3):
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n%d" % index)
            [response] = read_responses(sock, 1)
            assert response.status == 200
            assert "connection" not in response.headers


def test_connection_close_is_honoured(server: ModelServerHandle) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /score HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in received


def test_malformed_request_gets_400_and_close(server: ModelServerHandle) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 400 ")


def test_fixed_response_mode(model_server: ModelServerFactory) -> None:
    server = model_server("bench", extra_args=["--fixed-response"])
    with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT) as http:
        response = http.post("/score?mode=crash_mid&delay_ms=100000", content=b"ignored")
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        assert http.get("/").text == "Healthy"
    stats = server.stats()
    assert (stats["name"], stats["requests"], stats["completed"]) == ("bench", 1, 1)


def test_several_servers_start_in_parallel(model_server: ModelServerFactory) -> None:
    servers = model_server.many(["a", "b", "c"])
    assert len({server.port for server in servers}) == 3
    names = [httpx.post(f"{server.url}/score").json()["replica"] for server in servers]
    assert names == ["a", "b", "c"]


def test_runs_as_a_script_on_a_given_port() -> None:
    port = free_port()
    script = REPO_ROOT / "tests" / "servers" / "model_server.py"
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--name", "script"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd="/",
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().decode().strip() == f"READY {port}"
        answer = httpx.post(f"http://127.0.0.1:{port}/score", timeout=SOCKET_TIMEOUT).json()
        assert answer["replica"] == "script"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()  # type: ignore[union-attr]
