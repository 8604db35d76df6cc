"""Streaming through a real router process: server-sent events, chunked answers, a 50 MB download,
a 100 MB upload with bounded router memory, HTTP/1.0 clients, Expect: 100-continue and pipelining
(the last three on raw sockets, to control every byte).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest

from tests.helpers import (
    ModelServerHandle,
    RawResponse,
    ResponseCollector,
    start_model_servers,
    wait_until,
)
from tests.router import RouterFactory, RouterHandle, endpoint_config
from tests.servers.model_server import PATTERN_BLOCK, download_body

HTTP_TIMEOUT = 30.0
SOCKET_TIMEOUT = 10.0
MB = 1024 * 1024
DOWNLOAD_BYTES = 50 * MB
UPLOAD_BYTES = 100 * MB
RSS_GROWTH_LIMIT = 50 * MB
SSE_EVENTS = 5
SSE_INTERVAL_MS = 200
ENDPOINT = "stream"
SCORE_PATH = f"/api/v1/endpoint/{ENDPOINT}/score"
PIPE_ENDPOINT = "pipelined"


@dataclass
class Stream:
    router: RouterHandle
    server: ModelServerHandle
    pipe_server: ModelServerHandle

    @property
    def url(self) -> str:
        return self.router.url + SCORE_PATH


def _endpoint(name: str, url: str, **settings: int) -> dict[str, Any]:
    return endpoint_config([url], name=name, request_settings=settings)["endpoints"][0]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stream]:
    server, pipe_server = start_model_servers(["st0", "pipe0"])
    factory = RouterFactory(Path(tmp_path_factory.mktemp("streaming")))
    config = {
        "server": {"drain_timeout_s": 1.0},
        "endpoints": [
            # Large bodies take seconds through a loaded test machine: no 504 here.
            _endpoint(
                ENDPOINT,
                server.url,
                request_timeout_ms=120_000,
                max_concurrent_requests_per_instance=4,
            ),
            # Pipelining has its own replica and a short timeout: a request a bug strands
            # there frees itself soon and never touches the streaming tests.
            _endpoint(
                PIPE_ENDPOINT,
                pipe_server.url,
                request_timeout_ms=2000,
                max_concurrent_requests_per_instance=4,
            ),
        ],
    }
    try:
        yield Stream(factory(config), server, pipe_server)
    finally:
        factory.stop_all()
        server.stop()
        pipe_server.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        yield http


def pattern_sha256(size: int) -> str:
    """sha256 of the model server's `?size=N` body, computed a block at a time."""
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(PATTERN_BLOCK))
    for _ in range(whole):
        digest.update(PATTERN_BLOCK)
    digest.update(PATTERN_BLOCK[:rest])
    return digest.hexdigest()


def pattern_chunks(size: int) -> Iterator[bytes]:
    whole, rest = divmod(size, len(PATTERN_BLOCK))
    for _ in range(whole):
        yield PATTERN_BLOCK
    if rest:
        yield PATTERN_BLOCK[:rest]


# ==========================================================================================
# Raw HTTP/1.x on a socket
# ==========================================================================================


class RawConnection(ResponseCollector):
    """A client socket plus an llhttp response parser; responses are collected in order."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.parser = httptools.HttpResponseParser(self)
        self.eof = False

    # httptools callback (the others are ResponseCollector's)
    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, count: int) -> list[RawResponse]:
        """Read until `count` complete responses (or EOF, which ends a close-delimited body)."""
        while not self.eof and sum(r.complete for r in self.responses) < count:
            self._feed(self.sock.recv(65536))
        return self.responses

    def read_interim(self) -> bytes:
        """Bytes up to the end of one header block, without parsing (for `100 Continue`)."""
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(1)
            assert piece, f"connection closed after {data!r}"
            data += piece
        return data

    def wait_closed(self) -> None:
        while not self.eof:
            self._feed(self.sock.recv(65536))

    def _feed(self, data: bytes) -> None:
        if not data:
            self.eof = True
            if self.responses and not self.responses[-1].complete:
                self.parser.feed_data(b"")  # llhttp ends a close-delimited body on EOF
            return
        self.parser.feed_data(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(stream: Stream) -> Iterator[RawConnection]:
    connection = RawConnection(stream.router.port)
    try:
        yield connection
    finally:
        connection.close()


# ==========================================================================================
# Server-sent events and chunked answers
# ==========================================================================================


def test_sse_events_reach_the_client_as_they_are_written(
    stream: Stream, client: httpx.Client
) -> None:
    stream.server.reset()
    received: list[tuple[float, str]] = []
    query = f"?mode=sse&events={SSE_EVENTS}&interval_ms={SSE_INTERVAL_MS}"
    with client.stream("POST", stream.url + query, content=b"{}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data:"):
                received.append((time.time(), line))
    assert [line for _, line in received] == [f'data: {{"i": {i}}}' for i in range(SSE_EVENTS)]
    written = stream.server.stats()["sse_events"]
    assert len(written) == SSE_EVENTS
    # The client had event 0 before the replica had even written its last event.
    assert received[0][0] < written[-1]


def test_chunked_answer_is_reassembled(stream: Stream, client: httpx.Client) -> None:
    response = client.post(stream.url + "?chunked=1", content=b"abc")
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.json()["bytes"] == 3


def test_large_chunked_download(stream: Stream, client: httpx.Client) -> None:
    size = 3 * MB + 17
    response = client.get(stream.url + f"?size={size}&chunked=1")
    assert response.status_code == 200
    assert response.content == download_body(size)


def test_chunked_upload_reaches_the_replica(stream: Stream, client: httpx.Client) -> None:
    size = 2 * MB + 5
    response = client.post(stream.url, content=pattern_chunks(size))  # no length: chunked
    seen = response.json()
    assert (seen["bytes"], seen["sha256"]) == (size, pattern_sha256(size))
    assert seen["headers"]["transfer-encoding"] == "chunked"


def download(
    stream: Stream, client: httpx.Client, size: int, piece_bytes: int | None, pause_s: float
) -> None:
    """GET `size` bytes, reading pieces of `piece_bytes` with `pause_s` between them; checks
    the body, and that the router's memory grew by less than the limit meanwhile."""
    digest = hashlib.sha256()
    received = 0
    baseline = stream.router.rss_bytes()
    peak = baseline
    with client.stream("GET", stream.url + f"?size={size}") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(size)
        for index, piece in enumerate(response.iter_bytes(chunk_size=piece_bytes)):
            digest.update(piece)
            received += len(piece)
            if index % 16 == 0:
                peak = max(peak, stream.router.rss_bytes())
            if pause_s:
                time.sleep(pause_s)
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)
    assert peak - baseline < RSS_GROWTH_LIMIT, (baseline, peak)


def test_50mb_download_is_streamed(stream: Stream, client: httpx.Client) -> None:
    download(stream, client, DOWNLOAD_BYTES, None, 0.0)


# The slow reader's pause between reads: shapes its pace (slower than the replica sends), it
# synchronises nothing.
SLOW_READER_PAUSE_S = 0.002


def test_a_slow_reader_makes_the_router_wait_instead_of_buffering(
    stream: Stream, client: httpx.Client
) -> None:
    """100 MB read more slowly than the replica sends them: the router stops reading the
    replica while the client's socket is full, and holds no more than the limit."""
    download(stream, client, UPLOAD_BYTES, 256 * 1024, SLOW_READER_PAUSE_S)


def test_100mb_upload_streams_with_bounded_router_memory(
    stream: Stream, client: httpx.Client
) -> None:
    handle = stream.router
    baseline = handle.rss_bytes()
    peak = baseline

    def body() -> Iterator[bytes]:
        nonlocal peak
        for index, piece in enumerate(pattern_chunks(UPLOAD_BYTES)):
            if index % 32 == 0:
                peak = max(peak, handle.rss_bytes())
            yield piece

    response = client.post(
        stream.url, content=body(), headers={"Content-Length": str(UPLOAD_BYTES)}
    )
    seen = response.json()
    assert seen["bytes"] == UPLOAD_BYTES
    assert seen["sha256"] == pattern_sha256(UPLOAD_BYTES)
    assert peak - baseline < RSS_GROWTH_LIMIT, (baseline, peak)


# ==========================================================================================
# HTTP/1.0, Expect: 100-continue, pipelining
# ==========================================================================================


def test_http10_without_keep_alive_gets_an_answer_then_close(raw: RawConnection) -> None:
    raw.send(f"POST {SCORE_PATH} HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello".encode())
    (response,) = raw.read_until(1)
    assert response.status == 200
    assert response.headers["content-length"] == str(len(response.body))
    assert b'"bytes": 5' in response.body
    raw.wait_closed()


def test_http10_keep_alive_serves_several_requests(raw: RawConnection) -> None:
    request = f"GET {SCORE_PATH}?n=%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    for index in range(3):
        raw.send((request % index).encode())
        response = raw.read_until(index + 1)[index]
        assert response.status == 200
        assert response.headers["connection"].lower() == "keep-alive"
        assert f'"query": "n={index}"'.encode() in response.body
    assert not raw.eof


def test_http10_client_gets_a_chunked_answer_close_delimited(raw: RawConnection) -> None:
    raw.send(f"GET {SCORE_PATH}?chunked=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
    (response,) = raw.read_until(1)
    raw.wait_closed()
    assert response.status == 200
    assert "transfer-encoding" not in response.headers  # HTTP/1.0 knows no chunking
    assert b'"path": "/score"' in response.body
    assert response.body.endswith(b"}")


def test_expect_100_continue(raw: RawConnection) -> None:
    raw.send(
        f"POST {SCORE_PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    interim = raw.read_interim()
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
    raw.send(b"hello world")
    (response,) = raw.read_until(1)
    assert response.status == 200
    assert b'"bytes": 11' in response.body
    assert b'"expect"' not in response.body  # the replica never sees the Expect header
    assert hashlib.sha256(b"hello world").hexdigest().encode() in response.body


def test_expect_100_continue_refused_without_reading_the_body(raw: RawConnection) -> None:
    raw.send(
        b"POST /api/v1/endpoint/nosuch/score HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    (response,) = raw.read_until(1)
    assert response.status == 404  # final answer at once, never a 100 first
    assert response.headers["connection"] == "close"


PIPELINED = 6  # more than the router reads ahead of its answers, so it pauses and resumes


def test_pipelined_requests_are_answered_in_order(stream: Stream) -> None:
    path = f"/api/v1/endpoint/{PIPE_ENDPOINT}/score"
    requests = []
    for index in range(PIPELINED):
        if index % 2:
            body = f"body-{index}".encode()
            head = f"POST {path}?n={index} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}"
            requests.append(f"{head}\r\n\r\n".encode() + body)
        else:
            requests.append(f"GET {path}?n={index} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    connection = RawConnection(stream.router.port)
    try:
        connection.send(b"".join(requests))  # all at once, before any answer
        responses = connection.read_until(PIPELINED)
    finally:
        connection.close()
    assert [r.status for r in responses] == [200] * PIPELINED
    for index, response in enumerate(responses):
        seen = json.loads(response.body)
        assert seen["query"] == f"n={index}"
        assert seen["bytes"] == (len(f"body-{index}") if index % 2 else 0)
    wait_until(lambda: stream.router.deployment(PIPE_ENDPOINT, "blue")["inflight"] == 0)


def test_router_holds_nothing_after_streaming(stream: Stream) -> None:
    wait_until(lambda: stream.router.deployment(ENDPOINT, "blue")["inflight"] == 0)
    wait_until(lambda: stream.server.stats(history=False)["inflight"] == 0)
