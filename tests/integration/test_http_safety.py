"""Adversarial HTTP/1.x input against a real router process in front of a real model server.

Each corpus case (`http_corpus.py`) is sent as raw bytes on a fresh TCP connection. The test reads
the answers with the strict HTTP/1.1 reader of tests/raw_http.py (not llhttp, so the oracle does
not share the router's parser) and checks: the status and the router's JSON error shape; that
the connection closes where it must, or stays usable where it must (a follow-up request on it is
answered correctly); and that nothing smuggled reached the model server (its request count, the
echoed paths, bodies and headers) or was even parsed by the router (its access log).

One router and one model server serve the whole module, so the corpus runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferfront.proxy.http import ERROR_CODES
from tests import raw_http
from tests.conftest import ModelServerFactory
from tests.helpers import ModelServerHandle, async_wait_until, wait_until
from tests.integration.http_corpus import (
    CORPUS,
    ENDPOINT,
    LIMITS,
    NO_SUCH_ENDPOINT,
    SCORE,
    SMUGGLED,
    SMUGGLED_PATH,
    Case,
    cl,
    request,
)
from tests.raw_http import STATUS_LINE, Answer
from tests.router import RouterFactory, RouterHandle, endpoint_config

READ_TIMEOUT = 2.0  # the longest wait for an answer, or for a connection that must close
GUID = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# ==========================================================================================
# The client: a strict raw reader (tests/raw_http.py)
# ==========================================================================================


class RawConnection(raw_http.RawConnection):
    def __init__(self, port: int) -> None:
        super().__init__(port, READ_TIMEOUT)

    def send(self, data: bytes) -> None:
        # The router may close (after answering) before it took every byte of a bad request.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().send(data)


# ==========================================================================================
# The router + model server pair shared by the module
# ==========================================================================================


@dataclass
class Stack:
    router: RouterHandle
    replica: ModelServerHandle
    http: httpx.Client  # kept open: a client per call costs more than the call
    # Access-log request ids of smuggled requests seen while a known-bug (xfail) case ran.
    excused: set[str] = field(default_factory=set)

    @property
    def port(self) -> int:
        return self.router.port

    def replica_stats(self) -> dict[str, Any]:
        answer = self.http.get(f"{self.replica.url}/stats", params={"history": "0"})
        answer.raise_for_status()
        return answer.json()

    def replica_requests(self) -> int:
        return self.replica_stats()["requests"]

    def log_position(self) -> int:
        return len(self.router.stdout)

    def access_log(self, since: int = 0) -> list[dict[str, Any]]:
        lines = list(self.router.stdout)[since:]
        return [json.loads(line) for line in lines if line.startswith("{")]

    def barrier(self) -> None:
        """A good request through the router, waited for until its access-log line is written:
        whatever the router did for an earlier connection is logged by then."""
        request_id = str(uuid.uuid4())
        answer = self.http.post(
            f"{self.router.url}{SCORE.decode()}",
            content=b"sentinel",
            headers={"x-request-id": request_id},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == request_id
        wait_until(
            lambda: any(request_id in line for line in list(self.router.stdout)),
            timeout=READ_TIMEOUT * 2,
            message="the sentinel request's access-log line",
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    replicas = ModelServerFactory()
    routers = RouterFactory(Path(tmp_path_factory.mktemp("http-safety")))
    try:
        replica = replicas("r0")
        config = endpoint_config(
            [replica.url],
            name=ENDPOINT,
            # No retries: a request reaches the replica once or not at all, so counts are exact.
            # A short drain: requests a known bug left hanging must not slow the teardown.
            server={"limits": LIMITS, "retries": 0, "drain_timeout_s": 0.5},
            request_settings={
                "max_concurrent_requests_per_instance": 64,
                "max_queue_wait_ms": 5000,
                "request_timeout_ms": 10000,
            },
        )
        with httpx.Client(timeout=READ_TIMEOUT * 2) as http:
            yield Stack(routers(config), replica, http)
    finally:
        routers.stop_all()
        replicas.stop_all()


# ==========================================================================================
# Checks
# ==========================================================================================


def assert_router_error(answer: Answer) -> None:
    """The router's own JSON error document, consistent with its headers."""
    assert answer.header("content-type") == "application/json", answer.headers
    document = answer.json()
    assert set(document) == {"error", "request_id"}, document
    assert document["error"]["code"] == ERROR_CODES[answer.status], document
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    request_id = answer.header("x-request-id")
    assert document["request_id"] == request_id, (document, answer.headers)
    if request_id:  # an empty id is a separate, known bug (test_parse_errors_carry_request_id)
        assert GUID.match(request_id.encode()), request_id


def assert_status(answer: Answer, expected: int | tuple[int, ...], case: Case) -> None:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert answer.status in allowed, (
        f"{case.name}: got {answer.status}, want {allowed}; body {answer.body[:300]!r}"
    )


def assert_echo(echo: dict[str, Any], body: bytes) -> None:
    """The model server received exactly `body` (its echo counts and hashes what it got)."""
    assert echo["bytes"] == len(body), echo
    assert echo["sha256"] == hashlib.sha256(body).hexdigest(), echo


def probe_keeps_working(conn: RawConnection, name: str) -> None:
    """A follow-up request on the same connection is answered, and is answered as itself."""
    path = f"/probe-{name}"
    conn.send(
        request(
            b"Connection: close",
            method=b"GET",
            target=f"/api/v1/endpoint/{ENDPOINT}{path}".encode(),
        )
    )
    answer = conn.read_answer()
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert answer.json()["path"] == path, answer.json()
    conn.expect_closed()


def smuggled_log_lines(stack: Stack, since: int = 0) -> list[dict[str, Any]]:
    """Access-log lines (from line number `since` on) of requests the router parsed for the
    smuggled path: it only exists inside other requests' bytes."""
    return [line for line in stack.access_log(since) if SMUGGLED_PATH in str(line.get("path"))]


def expected_counts(case: Case) -> tuple[int, ...]:
    return case.reaches if isinstance(case.reaches, tuple) else (case.reaches,)


# ==========================================================================================
# The corpus
# ==========================================================================================


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
    return pytest.param(case, id=case.name, marks=marks)


def test_corpus_names_are_unique() -> None:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", [_param(case) for case in CORPUS])
def test_corpus(stack: Stack, case: Case) -> None:
    log_start = stack.log_position()
    try:
        run_case(stack, case, log_start)
    finally:
        if case.bug:
            # What a known bug smuggled is excused in the final sweep of the access log.
            stack.barrier()
            stack.excused.update(
                line["request_id"] for line in smuggled_log_lines(stack, log_start)
            )


def run_case(stack: Stack, case: Case, log_start: int) -> None:
    before = stack.replica_requests()
    with RawConnection(stack.port) as conn:
        conn.send(case.raw)
        answers = [
            conn.read_answer(head=index == case.head_index) for index in range(len(case.statuses))
        ]
        for answer, expected in zip(answers, case.statuses, strict=True):
            assert_status(answer, expected, case)
            if answer.status >= 400:
                assert_router_error(answer)
        with_body = [a for index, a in enumerate(answers) if index != case.head_index]
        served = [answer for answer in with_body if answer.status == 200]
        check_forwarded(case, served)
        closes = answers[-1].status >= 400 if case.closes is None else case.closes
        if closes:
            assert answers[-1].closes(), f"closing without saying so: {answers[-1].headers}"
            conn.expect_closed()
        else:
            assert not answers[-1].closes(), answers[-1].headers
            probe_keeps_working(conn, case.name)
    stack.barrier()
    probe_and_barrier = 1 if closes else 2
    reached = stack.replica_requests() - before - probe_and_barrier
    if case.closes is None:
        allowed: tuple[int, ...] = (len(answers) - len(with_body) + len(served),)
    else:
        allowed = expected_counts(case)
    assert reached in allowed, f"{reached} request(s) reached the model server"
    smuggled = smuggled_log_lines(stack, log_start)
    assert not smuggled, f"the router parsed a request out of another's bytes: {smuggled}"


def check_forwarded(case: Case, served: list[Answer]) -> None:
    """What the model server echoed for each 200 answer: path, body, headers."""
    echoes = [answer.json() for answer in served]
    for echo in echoes:
        assert echo["path"] != SMUGGLED_PATH, echo
        if case.check_echo is not None:
            case.check_echo(echo)
    if echoes and case.forwarded:
        assert len(echoes) == len(case.forwarded), echoes
        for echo, body in zip(echoes, case.forwarded, strict=True):
            assert_echo(echo, body)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            request(cl(3), b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), id="cl-and-te"
        ),
        pytest.param(request(b"X\x85: 1"), id="header-name-x85"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
    ],
)
def test_parse_errors_carry_request_id(stack: Stack, raw: bytes) -> None:
    """x-request-id is owned by the router and always a GUID, even on a 400 from the parser."""
    with RawConnection(stack.port) as conn:
        conn.send(raw)
        answer = conn.read_answer()
    assert answer.status == 400
    request_id = answer.header("x-request-id") or ""
    assert GUID.match(request_id.encode()), f"x-request-id {request_id!r}"
    assert answer.json()["request_id"] == request_id


def test_pipelined_body_completed_after_first_answer(stack: Stack) -> None:
    """The second request's body straddles the first answer: it is read and forwarded whole."""
    second = request(cl(6), body=b"")
    with RawConnection(stack.port) as conn:
        conn.send(request(cl(3), body=b"one") + second + b"two")
        first = conn.read_answer()
        assert first.status == 200, first.body
        assert_echo(first.json(), b"one")
        conn.send(b"two")
        answer = conn.read_answer()
        assert answer.status == 200, answer.body
        assert_echo(answer.json(), b"twotwo")
        probe_keeps_working(conn, "straddle")


def test_a_client_that_closes_its_side_is_gone(stack: Stack) -> None:
    """A FIN cannot tell close() from shutdown(SHUT_WR): the router takes it as the client
    leaving (as nginx does), so its slot is freed at once. An answer that was already on its
    way may still arrive; then the connection closes, and nothing else comes."""
    with RawConnection(stack.port) as conn:
        conn.send(request(cl(3), body=b"one"))
        conn.sock.shutdown(socket.SHUT_WR)
        if conn.buffer or conn.fill():
            answer = conn.read_answer()
            assert answer.status == 200, answer.body
            assert_echo(answer.json(), b"one")
        conn.expect_closed()


# ==========================================================================================
# Expect: 100-continue (the client waits for the interim answer before sending its body)
# ==========================================================================================


def expect_head(version: bytes = b"HTTP/1.1", target: bytes = SCORE, length: int = 5) -> bytes:
    return request(cl(length), b"Expect: 100-continue", version=version, target=target)


def test_expect_continue_then_final_answer(stack: Stack) -> None:
    with RawConnection(stack.port) as conn:
        conn.send(expect_head())
        interim = conn.read_answer()
        assert interim.status == 100, interim
        conn.send(b"hello")
        final = conn.read_answer()
        assert final.status == 200, final.body
        assert_echo(final.json(), b"hello")
        assert "expect" not in final.json()["headers"]
        probe_keeps_working(conn, "expect")


def test_expect_continue_rejected_before_body(stack: Stack) -> None:
    """A 404 comes without a 100 first; then either the connection closes, or the body the
    client still sends is read as that request's body (never as a new request)."""
    before = stack.replica_requests()
    log_start = stack.log_position()
    with RawConnection(stack.port) as conn:
        conn.send(expect_head(target=NO_SUCH_ENDPOINT, length=len(SMUGGLED)))
        answer = conn.read_answer()
        assert answer.status == 404, answer
        assert_router_error(answer)
        closes = answer.closes()
        if closes:
            conn.expect_closed()
        else:
            conn.send(SMUGGLED)
            probe_keeps_working(conn, "expect-404")
    stack.barrier()
    assert not smuggled_log_lines(stack, log_start)
    probe_and_barrier = 1 if closes else 2
    assert stack.replica_requests() - before == probe_and_barrier


def test_expect_continue_body_too_large(stack: Stack) -> None:
    with RawConnection(stack.port) as conn:
        conn.send(expect_head(length=LIMITS["max_body_bytes"] + 1))
        answer = conn.read_answer()
        assert answer.status == 413, answer
        assert answer.closes()
        conn.expect_closed()


def test_expect_continue_ignored_on_http10(stack: Stack) -> None:
    with RawConnection(stack.port) as conn:
        conn.send(expect_head(version=b"HTTP/1.0"))
        # Once the replica has the head the router has decided about the interim answer.
        wait_until(lambda: stack.replica_stats()["inflight"] >= 1)
        conn.send(b"hello")
        answer = conn.read_answer()
        assert answer.status == 200, f"{answer.status} sent to an HTTP/1.0 client"
        assert_echo(answer.json(), b"hello")


# ==========================================================================================
# Garbage sent slowly does not disturb anyone else
# ==========================================================================================

# Each slow client sends its prefix a few bytes at a time while the good requests run, then
# its last bytes, which make the request invalid: it must then get `status` and a close.
SLOW_CLIENTS: list[tuple[bytes, bytes, int]] = [
    (b"POST " + SCORE + b" HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 300, b"\x00\r\n\r\n", 400),
    (request(b"Transfer-Encoding: chunked") + b"1\r\nx\r\n" * 60, b"zz\r\n", 400),
    (b"GET /" + b"b" * 500, b" HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
]
TRICKLE_BYTES = 4
TRICKLE_INTERVAL_S = 0.005  # the slow clients' pace (load shaping, not synchronisation)
GOOD_REQUESTS = 50


async def slow_client(port: int, prefix: bytes, suffix: bytes, done: asyncio.Event) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for start in range(0, len(prefix), TRICKLE_BYTES):
            writer.write(prefix[start : start + TRICKLE_BYTES])
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), TRICKLE_INTERVAL_S)
        await done.wait()
        writer.write(suffix)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), READ_TIMEOUT)  # until the router closes
        match = STATUS_LINE.match(answer.split(b"\r\n", 1)[0])
        assert match, answer[:200]
        return int(match.group(1))
    finally:
        writer.close()


async def test_slow_garbage_does_not_disturb_good_requests(stack: Stack) -> None:
    done = asyncio.Event()
    slow = [
        asyncio.create_task(slow_client(stack.port, prefix, suffix, done))
        for prefix, suffix, _ in SLOW_CLIENTS
    ]
    url = f"{stack.router.url}{SCORE.decode()}"
    bodies = [f"good request {i}".encode() * (i + 1) for i in range(GOOD_REQUESTS)]
    limits = httpx.Limits(max_connections=GOOD_REQUESTS)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        answers = await asyncio.gather(*(client.post(url, content=body) for body in bodies))
    done.set()
    statuses = await asyncio.gather(*slow)
    for answer, body in zip(answers, bodies, strict=True):
        assert answer.status_code == 200, answer.text
        assert_echo(answer.json(), body)
    assert statuses == [status for _, _, status in SLOW_CLIENTS]
    await async_wait_until(lambda: stack.replica_stats()["inflight"] == 0)


# ==========================================================================================
# After everything: the router is healthy and nothing was ever parsed out of a body
# ==========================================================================================


def test_router_healthy_after_bad_input(stack: Stack) -> None:
    answer = stack.http.post(f"{stack.router.url}{SCORE.decode()}", content=b"fine")
    assert answer.status_code == 200
    assert_echo(answer.json(), b"fine")
    assert stack.router.process.poll() is None, "the router process died"
    stack.barrier()
    unexcused = [
        line for line in smuggled_log_lines(stack) if line["request_id"] not in stack.excused
    ]
    assert not unexcused, unexcused
    errors = [line for line in stack.router.stderr if "Traceback" in line or "Error" in line]
    assert not errors, "\n".join(stack.router.stderr)
