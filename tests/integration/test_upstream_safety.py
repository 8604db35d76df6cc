"""Malformed, ambiguous and desynchronising answers from a replica, through a real router process.

The replica is a raw TCP server in the test process (an asyncio loop in a thread): for
`/case/<name>` it sends that case's scripted bytes, write by write; any other request gets a
well-formed JSON echo saying which of its connections carried it. For every case:

- the client gets the replica's first answer, or the router's own 502, or (once the answer has
  begun) a cut connection: never a byte of a second answer;
- the next request on the same client connection, and a request from another client, get their
  own answers;
- a connection that was out of step is closed by the router and never reused (the replica sees
  it close, and the follow-ups arrive on other connections); a well-formed answer keeps its
  connection, which the follow-ups then reuse (the check can tell);
- the deployment's slot is given back (admin: inflight 0); every wait is bounded.

A second scripted replica serves a mirror deployment: copies of live requests get its scripted
answers (the live replica echoes the same requests), and must disturb no one either.

One router and the two replicas serve the whole module.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from inferfront.proxy.http import ERROR_CODES
from tests.helpers import wait_until
from tests.raw_http import Answer, Cut, RawConnection
from tests.router import RouterFactory, RouterHandle

ENDPOINT = "upstream"
SINGLE = "single"  # the same replica, one request at a time: the others queue
DEPLOYMENT = "blue"
MIRRORED = "mirrored"  # blue, with a copy of every second request sent to SHADOW
SHADOW = "shadow"  # the mirror deployment: its own replica, one request at a time
READ_TIMEOUT = 3.0  # the longest wait for a byte from the router
GATE_TIMEOUT = 5.0  # the longest a scripted replica waits for the test's go
WAIT = 5.0  # the longest wait for a condition (a connection closed, a slot back)

# ==========================================================================================
# The cases
# ==========================================================================================

ANSWER = "answer"  # the client gets the replica's first answer
ERROR = "502"  # the client gets the router's own 502
CUT = "cut"  # the answer had begun: the client connection ends before it is complete

FIRST = b"first answer"
CHUNKED = b"Transfer-Encoding: chunked"
LEAK = "x-case-leak"  # a field of an interim answer, a trailer or a second answer


def head(*fields: bytes, status: bytes = b"200 OK", version: bytes = b"HTTP/1.1") -> bytes:
    return b"\r\n".join([version + b" " + status, *fields]) + b"\r\n\r\n"


def answer(
    body: bytes = FIRST, *fields: bytes, status: bytes = b"200 OK", version: bytes = b"HTTP/1.1"
) -> bytes:
    """An answer framed by its Content-Length."""
    return head(b"Content-Length: %d" % len(body), *fields, status=status, version=version) + body


def chunks(*pieces: bytes, trailer: bytes = b"") -> bytes:
    framed = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return framed + b"0\r\n" + (trailer + b"\r\n" if trailer else b"") + b"\r\n"


def one_chunk(size_line: bytes) -> bytes:
    """A chunked answer of FIRST in one chunk, under this chunk-size line."""
    return head(CHUNKED) + size_line + FIRST + b"\r\n0\r\n\r\n"


SECOND = answer(b"second answer", b"X-Case-Leak: second")
CHUNKED_FIRST = head(CHUNKED) + chunks(b"first ", b"answer")

# Header sections and trailers against the router's limits.max_header_bytes.
MAX_HEADER_BYTES = 65536
PAD = b"X-Case-Pad: " + b"p" * 1000 + b"\r\n"  # one header or trailer field of 1014 bytes
HEAD_OPEN = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(FIRST)  # the head, unfinished
LAST_CHUNK_OPEN = head(CHUNKED) + b"c\r\n" + FIRST + b"\r\n0\r\n"  # the trailer section next


@dataclass(frozen=True)
class Case:
    """One request to the scripted replica and what must come of it.

    writes: what the replica sends, write by write, once it has read the request. Each write
        after the first waits for the test's go, given once the client has what the write
        before produced: the whole answer, or for a CUT its first bytes.
    back_to_back: the writes follow one another with no go (a section trickled in many writes).
    expect: ANSWER, ERROR or CUT; with ANSWER, `status` and `body` are what the client gets.
    reused: the answer leaves the connection in step, so the next request reuses it; otherwise
        the router must close it.
    replica_closes: the replica closes the connection after its writes.
    method: POST (with a small body) or HEAD.
    early: the replica answers once it has the head; the client holds its body back.
    hold: the replica waits for a go before its first write too.
    check: more assertions on the answer.
    """

    name: str
    writes: tuple[bytes, ...]
    expect: str
    status: int = 200
    body: bytes = FIRST
    reused: bool = False
    replica_closes: bool = False
    method: bytes = b"POST"
    early: bool = False
    hold: bool = False
    back_to_back: bool = False
    check: Callable[[Answer], None] | None = field(default=None, compare=False)


def no_content_length(answer: Answer) -> None:
    assert answer.header("content-length") is None, answer.headers


def length_of_first(answer: Answer) -> None:
    assert answer.header("content-length") == str(len(FIRST)), answer.headers


CASES: list[Case] = [
    # -- Well-formed answers keep their connection (controls for the reuse check) ----------
    Case("well-formed", (answer(),), ANSWER, reused=True),
    Case("well-formed-chunked", (CHUNKED_FIRST,), ANSWER, reused=True),
    Case(
        "http10-keep-alive",
        (answer(FIRST, b"Connection: keep-alive", version=b"HTTP/1.0"),),
        ANSWER,
        reused=True,
    ),
    Case(
        "interim-100-then-answer", (head(status=b"100 Continue") + answer(),), ANSWER, reused=True
    ),
    Case(
        "interim-103-then-answer",
        (head(b"X-Case-Leak: interim", status=b"103 Early Hints") + answer(),),
        ANSWER,
        reused=True,
    ),
    Case(
        "trailer-fields-dropped",
        (head(CHUNKED) + chunks(FIRST, trailer=b"X-Case-Leak: trailer"),),
        ANSWER,
        reused=True,
    ),
    Case(
        "chunk-extensions-dropped",
        (one_chunk(b'c;name=value;quoted="a b"\r\n'),),
        ANSWER,
        reused=True,
    ),
    Case(
        "chunk-extension-20kb",
        (one_chunk(b"c;" + b"e" * 20_000 + b"\r\n"),),
        ANSWER,
        reused=True,
    ),
    # -- More than one answer to one request -----------------------------------------------
    Case("two-answers-one-write", (answer() + SECOND,), ANSWER),
    Case("two-answers-two-writes", (answer(), SECOND), ANSWER),
    Case("second-answer-cut-short", (answer() + SECOND[:20],), ANSWER),
    Case("second-status-line-only", (answer() + b"HTTP/1.1 200 OK\r\n",), ANSWER),
    Case("second-answer-after-chunked", (CHUNKED_FIRST + SECOND,), ANSWER),
    Case("body-longer-than-content-length", (answer() + b"surplus",), ANSWER),
    Case("body-longer-than-content-length-later", (answer(), b"surplus"), ANSWER),
    Case("stray-crlf-on-idle-connection", (answer(), b"\r\n"), ANSWER),
    Case(
        "connection-close-then-second-answer",
        (answer(FIRST, b"Connection: close") + SECOND,),
        ANSWER,
    ),
    # -- Framing: Content-Length and Transfer-Encoding -------------------------------------
    Case(
        "content-length-and-chunked", (head(b"Content-Length: 5", CHUNKED) + chunks(b"x"),), ERROR
    ),
    Case(
        "chunked-and-content-length", (head(CHUNKED, b"Content-Length: 5") + chunks(b"x"),), ERROR
    ),
    Case(
        "two-content-lengths", (head(b"Content-Length: 12", b"Content-Length: 3") + FIRST,), ERROR
    ),
    Case(
        "same-content-length-twice",
        (head(b"Content-Length: 12", b"Content-Length: 12") + FIRST,),
        ERROR,
    ),
    Case("content-length-list", (head(b"Content-Length: 12, 12") + FIRST,), ERROR),
    Case("content-length-negative", (head(b"Content-Length: -1") + FIRST,), ERROR),
    Case("content-length-plus-sign", (head(b"Content-Length: +12") + FIRST,), ERROR),
    Case("content-length-not-a-number", (head(b"Content-Length: twelve") + FIRST,), ERROR),
    Case(
        "content-length-overflow", (head(b"Content-Length: 99999999999999999999") + FIRST,), ERROR
    ),
    Case(
        "content-length-2-to-64-minus-1",
        (head(b"Content-Length: 18446744073709551615") + FIRST,),
        CUT,
        replica_closes=True,
    ),
    Case(
        "content-length-body-cut-short",
        (head(b"Content-Length: 100") + FIRST,),
        CUT,
        replica_closes=True,
    ),
    Case(
        "chunked-body-cut-short",
        (head(CHUNKED) + b"c\r\n" + FIRST + b"\r\n",),
        CUT,
        replica_closes=True,
    ),
    Case(
        "transfer-encoding-gzip",
        (head(b"Transfer-Encoding: gzip") + FIRST,),
        ERROR,
        replica_closes=True,
    ),
    Case(
        "transfer-encoding-gzip-chunked",
        (head(b"Transfer-Encoding: gzip, chunked") + chunks(FIRST),),
        ERROR,
    ),
    Case("transfer-encoding-chunked-twice", (head(CHUNKED, CHUNKED) + chunks(FIRST),), ERROR),
    Case(
        "transfer-encoding-identity",
        (head(b"Transfer-Encoding: identity") + FIRST,),
        ERROR,
        replica_closes=True,
    ),
    # -- Line endings and header values ----------------------------------------------------
    Case("bare-lf-everywhere", (b"HTTP/1.1 200 OK\nContent-Length: 12\n\n" + FIRST,), ERROR),
    Case(
        "bare-lf-after-header",
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12\nX: y\r\n\r\n" + FIRST,),
        ERROR,
    ),
    Case(
        "bare-cr-after-header",
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12\rX: y\r\n\r\n" + FIRST,),
        ERROR,
    ),
    Case("obs-fold", (answer(FIRST, b"X-Folded: a", b" b"),), ERROR),
    Case("nul-in-header-value", (answer(FIRST, b"X-Bad: a\x00b"),), ERROR),
    Case("cr-in-header-value", (answer(FIRST, b"X-Bad: a\rb"),), ERROR),
    Case("control-char-in-header-value", (answer(FIRST, b"X-Bad: a\x01b"),), ERROR),
    Case("space-before-colon", (answer(FIRST, b"X-Bad : a"),), ERROR),
    # -- Chunks ----------------------------------------------------------------------------
    Case("chunk-size-not-hex", (one_chunk(b"zz\r\n"),), ERROR),
    Case("chunk-size-negative", (one_chunk(b"-c\r\n"),), ERROR),
    Case(
        "chunk-size-overflow",
        (one_chunk(b"1" + b"0" * 16 + b"\r\n"),),
        ERROR,
    ),
    Case("chunk-size-trailing-space", (one_chunk(b"c \r\n"),), ERROR),
    Case("chunk-data-longer-than-size", (one_chunk(b"5\r\n"),), ERROR),
    Case("chunk-size-bare-lf", (one_chunk(b"c\n"),), ERROR),
    Case("chunk-extension-nul", (one_chunk(b"c;\x00\r\n"),), ERROR),
    Case("chunk-extension-bare-lf", (one_chunk(b"c;a\n"),), ERROR),
    Case("bad-chunk-after-answer-began", (head(CHUNKED) + b"5\r\nfirst\r\n", b"zz\r\n"), CUT),
    # -- Answers ended by the replica's close ----------------------------------------------
    Case(
        "http10-close-delimited", (head(version=b"HTTP/1.0") + FIRST,), ANSWER, replica_closes=True
    ),
    Case(
        "http11-close-delimited", (head(b"Connection: close") + FIRST,), ANSWER, replica_closes=True
    ),
    Case("http10-with-length-not-kept", (answer(version=b"HTTP/1.0"),), ANSWER),
    Case("connection-close-with-length", (answer(FIRST, b"Connection: close"),), ANSWER),
    # -- Status lines ----------------------------------------------------------------------
    Case("status-0", (answer(status=b"000 Zero"),), ERROR),
    Case("status-0-then-answer", (answer(b"zero", status=b"000 Zero") + SECOND,), ERROR),
    Case("status-99", (answer(status=b"099 Low"),), ERROR),
    Case("status-999", (answer(status=b"999 High"),), ERROR),
    Case("status-two-digits", (answer(status=b"20 OK"),), ERROR),
    Case("version-1.2", (answer(version=b"HTTP/1.2"),), ERROR),
    Case("version-2.0", (answer(version=b"HTTP/2.0"),), ERROR),
    Case("version-0.9", (answer(version=b"HTTP/0.9"),), ERROR),
    Case("version-lowercase", (answer(version=b"http/1.1"),), ERROR),
    Case(
        "switching-protocols",
        (head(b"Upgrade: websocket", b"Connection: upgrade", status=b"101 Switching") + FIRST,),
        ERROR,
    ),
    Case("switching-protocols-without-upgrade", (head(status=b"101 Switching") + FIRST,), ERROR),
    # -- Answers that have no body ---------------------------------------------------------
    Case(
        "204-with-body",
        (answer(status=b"204 No Content"),),
        ANSWER,
        status=204,
        body=b"",
        check=no_content_length,
    ),
    Case(
        "204-with-chunked-body",
        (head(CHUNKED, status=b"204 No Content") + chunks(FIRST),),
        ANSWER,
        status=204,
        body=b"",
        check=no_content_length,
    ),
    Case("304-with-body", (answer(status=b"304 Not Modified"),), ANSWER, status=304, body=b""),
    Case(
        "head-answer-with-body",
        (answer(),),
        ANSWER,
        body=b"",
        method=b"HEAD",
        check=length_of_first,
    ),
    # -- How much an answer can make the router hold (MAX_HEADER_BYTES) ---------------------
    # What counts is what was read while the head (or the trailer section) is unfinished: the
    # end of the 100 kB head is held back, so however the router's reads split it, it has read
    # more than the limit before the head could end. 400 kB stands for endless: the router
    # must give up before the end. Sent back to back, a section may reach the router in one
    # read (uvloop reads up to 256,000 bytes at a time), and a read that ends the answer is not
    # counted (what it holds is bounded by the read): so an endless section is longer than a
    # read and the limit together, and the router sees it unfinished however it is read.
    Case("header-section-100kb", (HEAD_OPEN + PAD * 100, b"\r\n" + FIRST), ERROR),
    Case(
        "header-section-400kb-in-1kb-writes",
        (HEAD_OPEN, *[PAD] * 400, b"\r\n" + FIRST),
        ERROR,
        back_to_back=True,
    ),
    Case(
        "header-section-32kb-in-1kb-writes",
        (HEAD_OPEN, *[PAD] * 32, b"\r\n" + FIRST),
        ANSWER,
        reused=True,
        back_to_back=True,
    ),
    Case("endless-trailer", (LAST_CHUNK_OPEN, *[PAD] * 400, b"\r\n"), CUT, back_to_back=True),
    Case(
        "endless-trailer-field",
        (LAST_CHUNK_OPEN + b"X-Case-Leak: ", *[b"t" * 1000] * 400, b"\r\n\r\n"),
        CUT,
        back_to_back=True,
    ),
    Case(
        "trailer-32kb-in-1kb-writes",
        (LAST_CHUNK_OPEN, *[PAD] * 32, b"\r\n"),
        ANSWER,
        reused=True,
        back_to_back=True,
    ),
    # Chunk framing counts only since body data last came: 100 kB of it in all is fine.
    Case(
        "chunk-extensions-100kb-in-all",
        (head(CHUNKED), *[b"1;" + b"e" * 1000 + b"\r\nx\r\n"] * 100, b"0\r\n\r\n"),
        ANSWER,
        body=b"x" * 100,
        reused=True,
        back_to_back=True,
    ),
    # -- An answer before the request is complete ------------------------------------------
    Case("answer-before-request-body", (answer(),), ANSWER, early=True),
]

# The first answer and a second one in one write, held until the test has a request queued
# behind it (see test_waiter_granted_the_slot_gets_its_own_answer).
HELD_SPLIT = Case("held-two-answers", (answer() + SECOND,), ANSWER, hold=True)

# The mirror replica's answers to copies (see the mirror tests).
MIRROR_SPLIT = Case("mirror-two-answers", (answer() + SECOND,), ANSWER, hold=True)
MIRROR_CLOSE_DELIMITED = Case(
    "mirror-close-delimited", (head(b"Connection: close") + FIRST,), ANSWER, replica_closes=True
)
MIRROR_HEAD = Case(
    "mirror-head", (head(b"Content-Length: %d" % len(FIRST)),), ANSWER, method=b"HEAD"
)
MIRROR_CASES = [MIRROR_SPLIT, MIRROR_CLOSE_DELIMITED, MIRROR_HEAD]


# ==========================================================================================
# The scripted replica
# ==========================================================================================


class ScriptedReplica:
    """A raw HTTP/1.1 replica on a loopback socket, served by an asyncio loop in a thread."""

    def __init__(self, scripts: dict[str, Case]) -> None:
        self.scripts = scripts
        self.served: dict[str, int] = {}  # request target -> the connection that carried it
        self.closed: set[int] = set()  # connections closed (by the router, or by a script)
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=WAIT)

    def go(self, target: str) -> None:
        """Let the script answering `target` make its next held write."""
        self.loop.call_soon_threadsafe(self._gates[target].release)

    def close(self) -> None:
        self._call(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=WAIT)
        self.loop.close()

    async def _shutdown(self) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._ids)
        task = asyncio.current_task()
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            while await self._answer_one(conn, reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the router closed the connection (or a go never came: the test fails)
        finally:
            self.closed.add(conn)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def _answer_one(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read one request and answer it; False when the connection is to be closed."""
        request_head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = request_head[:-4].decode("latin-1").split("\r\n")
        _, target, _ = request_line.split(" ")
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        path = target.partition("?")[0]
        case = self.scripts.get(path.removeprefix("/case/")) if path.startswith("/case/") else None
        if case is None:  # the readiness probe, or an echo
            await self._read_body(reader, fields)
            echoed = json.dumps({"path": target, "conn": conn}).encode()
            writer.write(answer(b"Healthy" if target == "/" else echoed))
            await writer.drain()
            return True
        gate = self._gates[target] = asyncio.Semaphore(0)
        self.served[target] = conn
        if not case.early:
            await self._read_body(reader, fields)
        for index, data in enumerate(case.writes):
            if (index and not case.back_to_back) or (not index and case.hold):
                await asyncio.wait_for(gate.acquire(), GATE_TIMEOUT)
            writer.write(data)
            await writer.drain()
        return not case.replica_closes

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, fields: dict[str, str]) -> None:
        if "content-length" in fields:
            await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer section
                pass


# ==========================================================================================
# The router and replica shared by the module
# ==========================================================================================


@dataclass
class Stack:
    router: RouterHandle
    replica: ScriptedReplica
    mirror: ScriptedReplica

    def inflight(self, endpoint: str = ENDPOINT, deployment: str = DEPLOYMENT) -> int:
        return self.router.deployment(endpoint, deployment)["inflight"]

    def shadow_responses(self) -> collections.Counter[str]:
        return collections.Counter(self.router.deployment(MIRRORED, SHADOW)["responses"])


def _deployment(name: str, url: str, concurrency: int) -> dict[str, Any]:
    settings = {
        "max_concurrent_requests_per_instance": concurrency,
        "request_timeout_ms": 5000,
        "max_queue_wait_ms": 5000,
    }
    return {"name": name, "urls": [url], "request_settings": settings}


def _endpoint(name: str, *deployments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "auth_mode": "none",
        "traffic": {DEPLOYMENT: 100},
        "deployments": list(deployments),
        **extra,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    replica = ScriptedReplica({case.name: case for case in [*CASES, HELD_SPLIT]})
    mirror = ScriptedReplica({case.name: case for case in MIRROR_CASES})
    routers = RouterFactory(Path(tmp_path_factory.mktemp("upstream-safety")))
    config = {
        # No retries: each case request reaches the replica exactly once.
        "server": {
            "retries": 0,
            "drain_timeout_s": 0.5,
            "limits": {"max_header_bytes": MAX_HEADER_BYTES},
        },
        "endpoints": [
            _endpoint(ENDPOINT, _deployment(DEPLOYMENT, replica.url, 8)),
            _endpoint(SINGLE, _deployment(DEPLOYMENT, replica.url, 1)),
            _endpoint(
                MIRRORED,
                _deployment(DEPLOYMENT, replica.url, 8),
                _deployment(SHADOW, mirror.url, 1),
                mirror_traffic={SHADOW: 50},
            ),
        ],
    }
    try:
        yield Stack(routers(config), replica, mirror)
    finally:
        routers.stop_all()
        replica.close()
        mirror.close()


# ==========================================================================================
# Requests and checks
# ==========================================================================================


def connect(stack: Stack) -> RawConnection:
    return RawConnection(stack.router.port, READ_TIMEOUT)


def case_request(case: Case, target: str, endpoint: str = ENDPOINT) -> bytes:
    line = b"%s /api/v1/endpoint/%s%s HTTP/1.1\r\nHost: h\r\n" % (
        case.method,
        endpoint.encode(),
        target.encode(),
    )
    if case.method == b"HEAD":
        return line + b"\r\n"
    body = b"" if case.early else b"ping"  # an early answer comes before the body is sent
    return line + b"Content-Length: 4\r\n\r\n" + body


def echo_request(tag: str, endpoint: str = ENDPOINT, pin: str | None = None) -> bytes:
    pinned = f"azureml-model-deployment: {pin}\r\n" if pin else ""
    return (
        f"GET /api/v1/endpoint/{endpoint}/echo/{tag} HTTP/1.1\r\nHost: h\r\n{pinned}\r\n".encode()
    )


def assert_own_echo(answer: Answer, tag: str) -> int:
    """A follow-up's answer is its own echo, with nothing of a scripted answer; its connection."""
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert not [name for name, _ in answer.headers if name.startswith("x-case")], answer.headers
    echo = answer.json()
    assert echo["path"] == f"/echo/{tag}", echo
    return echo["conn"]


def echo(client: RawConnection, tag: str, endpoint: str = ENDPOINT, pin: str | None = None) -> int:
    client.send(echo_request(tag, endpoint, pin))
    return assert_own_echo(client.read_answer(), tag)


def assert_router_502(answer: Answer) -> None:
    assert answer.status == 502, (answer.status, answer.body[:300])
    assert answer.header("content-type") == "application/json", answer.headers
    document = answer.json()
    assert document["error"]["code"] == ERROR_CODES[502], document
    assert document["request_id"] == answer.header("x-request-id"), document


def assert_first_answer(answer: Answer, case: Case) -> None:
    assert (answer.status, answer.body) == (case.status, case.body), (answer, case.name)
    assert answer.header(LEAK) is None, answer.headers
    if case.check is not None:
        case.check(answer)


def receive(stack: Stack, client: RawConnection, case: Case, target: str) -> Answer | None:
    """The case's outcome on the client connection (None for a cut), giving the replica its
    go for each held write when the client has what the write before produced."""
    later_writes = 0 if case.back_to_back else len(case.writes) - 1
    if case.expect == CUT:
        if later_writes:
            client.wait_for_bytes()
            stack.replica.go(target)
        with pytest.raises(Cut):
            client.read_answer()
        return None
    answer = client.read_answer(head=case.method == b"HEAD")
    assert not client.buffer, f"bytes after the answer: {client.buffer[:300]!r}"
    if case.expect == ERROR:
        assert_router_502(answer)
    else:
        assert_first_answer(answer, case)
    for _ in range(later_writes):
        stack.replica.go(target)
    return answer


def assert_connection_fate(stack: Stack, case: Case, target: str) -> int:
    """The connection that carried the case: closed by the router unless it stayed in step."""
    conn = stack.replica.served[target]
    if not case.reused:
        wait_until(
            lambda: conn in stack.replica.closed,
            timeout=WAIT,
            message=f"the router closes the connection that carried {target}",
        )
    return conn


# ==========================================================================================
# The tests
# ==========================================================================================


def test_case_names_are_unique() -> None:
    names = [case.name for case in [*CASES, HELD_SPLIT, *MIRROR_CASES]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_answer(stack: Stack, case: Case) -> None:
    target = f"/case/{case.name}"
    with connect(stack) as client:
        client.send(case_request(case, target))
        answer = receive(stack, client, case, target)
        conn = assert_connection_fate(stack, case, target)
        follow_ups = []
        if answer is None:
            assert client.eof  # cut: what came before the end is not an answer
        elif answer.closes():
            assert case.early, "closed the client connection for nothing"
            client.expect_closed()
        else:
            assert not case.early, "kept a client connection whose request body was never read"
            follow_ups.append(echo(client, f"{case.name}-same-client"))
    with connect(stack) as other:
        follow_ups.append(echo(other, f"{case.name}-other-client"))
    if case.reused:
        assert follow_ups == [conn] * len(follow_ups), "a connection in step was not reused"
    else:
        assert conn not in follow_ups, "an out-of-step connection was reused"
    wait_until(lambda: stack.inflight() == 0, timeout=WAIT, message="the slot is given back")


SPLITTING = ["two-answers-one-write", "second-answer-cut-short", "204-with-body"]


@pytest.mark.parametrize("name", SPLITTING)
def test_pipelined_request_gets_its_own_answer(stack: Stack, name: str) -> None:
    """The next request is already waiting on the client connection when the split answer
    arrives: it starts in the same moment the first answer ends, and must not get the rest."""
    case = next(case for case in CASES if case.name == name)
    target = f"/case/{name}?pipelined"
    with connect(stack) as client:
        client.send(case_request(case, target) + echo_request(f"{name}-pipelined"))
        assert_first_answer(client.read_answer(), case)
        conn = assert_own_echo(client.read_answer(), f"{name}-pipelined")
    assert conn != stack.replica.served[target]
    wait_until(lambda: stack.inflight() == 0, timeout=WAIT, message="the slot is given back")


def test_waiter_granted_the_slot_gets_its_own_answer(stack: Stack) -> None:
    """Another client's request queued for the one slot is granted it the moment the split
    answer ends: it must get its own answer, not the second one."""
    target = f"/case/{HELD_SPLIT.name}"
    with connect(stack) as first, connect(stack) as waiter:
        first.send(case_request(HELD_SPLIT, target, SINGLE))
        wait_until(lambda: target in stack.replica.served, timeout=WAIT)
        waiter.send(echo_request("waiter", SINGLE))
        wait_until(
            lambda: stack.router.deployment(SINGLE, DEPLOYMENT)["queue_length"] == 1,
            timeout=WAIT,
            message="the second request waits for the slot",
        )
        stack.replica.go(target)
        assert_first_answer(first.read_answer(), HELD_SPLIT)
        conn = assert_own_echo(waiter.read_answer(), "waiter")
    assert conn != stack.replica.served[target]
    wait_until(lambda: stack.inflight(SINGLE) == 0, timeout=WAIT, message="the slot is back")


# ==========================================================================================
# Mirrored copies: the mirror replica's answers disturb no one, and are counted right
# ==========================================================================================


def send_with_one_copy(stack: Stack, client: RawConnection, case: Case) -> str:
    """Two requests for `case` to the mirrored endpoint: the client gets the live replica's echo
    for each, and exactly one of them (mirror_traffic 50%) is copied to the mirror replica,
    which answers the copy with the case's script. The request target."""
    target = f"/case/{case.name}"
    for _ in range(2):
        client.send(case_request(case, target, MIRRORED))
        live = client.read_answer(head=case.method == b"HEAD")
        assert live.status == 200, (live.status, live.body[:300])
        assert live.header("azureml-model-deployment") == DEPLOYMENT, live.headers
        if case.method != b"HEAD":
            assert live.json()["path"] == target, live.body
    wait_until(lambda: target in stack.mirror.served, timeout=WAIT, message="the copy arrives")
    return target


def shadow_counts_once(stack: Stack, before: collections.Counter[str]) -> collections.Counter[str]:
    """What the mirror deployment counted since `before`, once the copy is over."""
    wait_until(lambda: stack.shadow_responses() != before, timeout=WAIT, message="a count")
    wait_until(lambda: stack.inflight(MIRRORED, SHADOW) == 0, timeout=WAIT, message="slot back")
    return stack.shadow_responses() - before


def wait_queued(stack: Stack, length: int) -> None:
    wait_until(
        lambda: stack.router.deployment(MIRRORED, SHADOW)["queue_length"] == length,
        timeout=WAIT,
        message=f"{length} request(s) wait for the mirror deployment's slot",
    )


def test_mirror_answering_twice_disturbs_no_one(stack: Stack) -> None:
    """The copy's replica answers twice in one write while the client's next request and
    another client's wait for the mirror deployment's one slot (pinned to it). The slot and the
    connection are given back only once the read is known clean: the copy counts its first
    answer, its connection is dropped, and each waiter gets its own answer elsewhere."""
    before = stack.shadow_responses()
    skipped = stack.router.metric("inferfront_mirror_copies_skipped")
    with connect(stack) as client, connect(stack) as other:
        target = send_with_one_copy(stack, client, MIRROR_SPLIT)  # it holds the one slot
        client.send(echo_request("client-pinned", MIRRORED, pin=SHADOW))
        wait_queued(stack, 1)
        other.send(echo_request("other-pinned", MIRRORED, pin=SHADOW))
        wait_queued(stack, 2)
        stack.mirror.go(target)
        used = {
            assert_own_echo(client.read_answer(), "client-pinned"),
            assert_own_echo(other.read_answer(), "other-pinned"),
        }
        echo(client, "client-after", MIRRORED, pin=DEPLOYMENT)  # pinned: not copied
    copy_conn = stack.mirror.served[target]
    assert copy_conn not in used, "a waiter was given the copy's out-of-step connection"
    wait_until(lambda: copy_conn in stack.mirror.closed, timeout=WAIT, message="it is dropped")
    assert shadow_counts_once(stack, before) == {"200": 3}  # the copy, and the two waiters
    assert stack.router.metric("inferfront_mirror_copies_skipped") == skipped


def test_mirror_answer_ended_by_the_close_counts_as_answered(stack: Stack) -> None:
    before = stack.shadow_responses()
    with connect(stack) as client:
        target = send_with_one_copy(stack, client, MIRROR_CLOSE_DELIMITED)
    assert shadow_counts_once(stack, before) == {"200": 1}
    assert stack.mirror.served[target] in stack.mirror.closed


def test_mirror_copy_of_a_head_request_ends_at_its_head(stack: Stack) -> None:
    """No body follows an answer to HEAD: the copy ends at the head (and drops the connection,
    as a live HEAD request does) instead of waiting for its deadline."""
    before = stack.shadow_responses()
    with connect(stack) as client:
        target = send_with_one_copy(stack, client, MIRROR_HEAD)
    assert shadow_counts_once(stack, before) == {"200": 1}
    conn = stack.mirror.served[target]
    wait_until(lambda: conn in stack.mirror.closed, timeout=WAIT, message="it is dropped")


def test_router_healthy_after_bad_answers(stack: Stack) -> None:
    with connect(stack) as client:
        echo(client, "healthy")
    assert stack.router.process.poll() is None, "the router process died"
    errors = [line for line in stack.router.stderr if "Traceback" in line or "Error" in line]
    assert not errors, "\n".join(stack.router.stderr)
