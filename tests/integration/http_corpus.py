"""Malformed, ambiguous and edge-case HTTP/1.x requests, as raw bytes, with the answer a strict
front-end must give (used by `test_http_safety.py`).

Every request targets the one endpoint the test router serves. Wherever a parser that got framing
wrong would see a second request, that request asks for `SMUGGLED_PATH`: the model server counting
an extra request, or the router logging that path, proves bytes were smuggled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ENDPOINT = "safety"
SCORE = b"/api/v1/endpoint/safety/score"
NO_SUCH_ENDPOINT = b"/api/v1/endpoint/nosuch/score"
SMUGGLED_PATH = "/api/v1/endpoint/safety/smuggled"
SMUGGLED = b"GET " + SMUGGLED_PATH.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n"

# Small limits, so the limit cases stay small on the wire (the router's config uses these).
LIMITS = {
    "max_request_line_bytes": 2048,
    "max_header_bytes": 4096,
    "max_headers": 20,
    "max_body_bytes": 1024,
}

# A case may carry `bug=<why>` for a known router bug: it then runs as xfail(strict=True), so
# the fix is noticed. None is known now (the nine this corpus found are fixed).

Echo = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One raw request (or several, pipelined) sent on a fresh connection.

    statuses: one entry per answer expected, in order; an entry is the status or the tuple of
        statuses that are acceptable (e.g. 400 or 505 for an unsupported version).
    closes: the router must close the connection after those answers (True), or the connection
        must stay usable for another request (False); None: close exactly when the last answer
        is an error (for requests a strict router may either serve or refuse).
    reaches: requests the model server must receive (a tuple: any of these counts is fine);
        ignored when `closes` is None: then every 200 answer, and only those, reached it.
    head_index: which answer (if any) is to a HEAD request: it has no body whatever its framing.
    forwarded: the bodies the model server must have received, one per 200 answer to a request
        other than a HEAD, in order.
    check_echo: more assertions on each 200 answer's echo (what the model server got).
    bug: a known router bug this case trips (the test is then a strict xfail).
    """

    name: str
    raw: bytes
    statuses: tuple[int | tuple[int, ...], ...]
    closes: bool | None
    reaches: int | tuple[int, ...] = 0
    head_index: int | None = None
    forwarded: tuple[bytes, ...] = ()
    check_echo: Callable[[Echo], None] | None = field(default=None, compare=False)
    bug: str | None = None


def request(
    *headers: bytes,
    body: bytes = b"",
    method: bytes = b"POST",
    target: bytes = SCORE,
    version: bytes = b"HTTP/1.1",
    host: bytes | None = b"h",
) -> bytes:
    """A request head with CRLF line ends (`Host: h` first unless host is None), then `body`."""
    lines = [method + b" " + target + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += headers
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_head(*lines: bytes, end: bytes = b"\r\n\r\n") -> bytes:
    """Head lines joined by CRLF as given (no Host added), then `end`."""
    return b"\r\n".join(lines) + end


def cl(size: int) -> bytes:
    return b"Content-Length: %d" % size


def chunked(data: bytes) -> bytes:
    """`data` as one chunk, then the last chunk."""
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


TE = b"Transfer-Encoding: chunked"
TE_GZIP = b"Transfer-Encoding: gzip, chunked"
POST_LINE = b"POST " + SCORE + b" HTTP/1.1"
GET_LINE = b"GET " + SCORE + b" HTTP/1.1"
HELLO = b"hello"
HELLO_CHUNKED = chunked(HELLO)
EMPTY_CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED
CONNECT = b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n"
# A header line this long arrives in several reads: a router bounding what it buffers for a
# field still unfinished refuses it before its end (which never comes).
NEVER_ENDING = 1 << 20
# 1 MiB of chunk extensions for 512 bytes of data (so it spans several reads too).
EXTENSION_FLOOD = b"".join(b"1;" + b"e" * 2048 + b"\r\nx\r\n" for _ in range(512)) + b"0\r\n\r\n"
UNSUPPORTED_VERSION = (400, 505)
NOT_IMPLEMENTED = (400, 501)


def forbid_headers(*names: str) -> Callable[[Echo], None]:
    """The model server must not have seen any of these header names."""

    def check(echo: Echo) -> None:
        leaked = set(echo["headers"]).intersection(names)
        assert not leaked, f"forwarded to the replica: {sorted(leaked)} in {echo['headers']}"

    return check


def path_is(path: str) -> Callable[[Echo], None]:
    def check(echo: Echo) -> None:
        assert echo["path"] == path, echo

    return check


def good(name: str, raw: bytes, *bodies: bytes, **extra: Any) -> Case:
    """A valid request (or valid pipeline): each answered 200, keep-alive, bodies as forwarded."""
    count = len(bodies)
    fields: dict[str, Any] = {"statuses": (200,) * count, "reaches": count, **extra}
    return Case(name, raw, closes=False, forwarded=bodies, **fields)


def served_or_refused(name: str, raw: bytes, body: bytes, **extra: Any) -> Case:
    """Valid or not depending on how one reads the RFC: 200 with `body` forwarded, or a 400."""
    return Case(name, raw, ((200, 400),), closes=None, forwarded=(body,), **extra)


def rejected(name: str, raw: bytes, status: int | tuple[int, ...] = 400, **extra: Any) -> Case:
    """A request the router must refuse without forwarding anything, then close."""
    fields: dict[str, Any] = {"reaches": 0, **extra}
    return Case(name, raw, (status,), closes=True, **fields)


def answered_then_closed(name: str, raw: bytes, *statuses: Any, body: bytes = b"one") -> Case:
    """The first request is served (`body` forwarded), what follows it is not, then close."""
    return Case(name, raw, (200, *statuses), closes=True, reaches=1, forwarded=(body,))


FRAMING: list[Case] = [
    rejected(
        "cl-then-te",
        request(cl(len(EMPTY_CHUNKED_THEN_SMUGGLED)), TE, body=EMPTY_CHUNKED_THEN_SMUGGLED),
    ),
    rejected(
        "te-then-cl",
        request(TE, cl(len(EMPTY_CHUNKED_THEN_SMUGGLED)), body=EMPTY_CHUNKED_THEN_SMUGGLED),
    ),
    rejected("te-then-cl-zero", request(TE, cl(0), body=EMPTY_CHUNKED_THEN_SMUGGLED)),
    rejected("cl-duplicate-equal", request(cl(5), cl(5), body=HELLO)),
    rejected(
        "cl-duplicate-different",
        request(cl(5), cl(5 + len(SMUGGLED)), body=HELLO + SMUGGLED),
    ),
    rejected("cl-comma-list", request(b"Content-Length: 5, 5", body=HELLO)),
    rejected("cl-plus-sign", request(b"Content-Length: +5", body=HELLO)),
    rejected("cl-negative", request(b"Content-Length: -5", body=HELLO)),
    rejected("cl-hex", request(b"Content-Length: 0x5", body=HELLO)),
    rejected("cl-inner-space", request(b"Content-Length: 1 0", body=HELLO)),
    rejected("cl-empty", request(b"Content-Length: ", body=SMUGGLED)),
    rejected("cl-uint64-overflow", request(b"Content-Length: 18446744073709551616", body=b"x")),
    rejected("cl-uint64-max", request(b"Content-Length: 18446744073709551615", body=b"x"), 413),
    served_or_refused(
        "cl-trailing-whitespace", request(b"Content-Length: 5 \t", body=HELLO), HELLO
    ),
    served_or_refused(
        "te-chunked-trailing-space",
        request(b"Transfer-Encoding: chunked ", body=HELLO_CHUNKED),
        HELLO,
    ),
    served_or_refused(
        "te-chunked-trailing-tab",
        request(b"Transfer-Encoding: chunked\t", body=HELLO_CHUNKED),
        HELLO,
    ),
    served_or_refused(
        "te-chunked-leading-tab",
        request(b"Transfer-Encoding:\tchunked", body=HELLO_CHUNKED),
        HELLO,
    ),
    good("te-chunked-uppercase", request(b"Transfer-Encoding: CHUNKED", body=HELLO_CHUNKED), HELLO),
    rejected("te-gzip-chunked", request(TE_GZIP, body=HELLO_CHUNKED), 501),
    rejected(
        "te-gzip-chunked-then-request",
        request(TE_GZIP, body=EMPTY_CHUNKED_THEN_SMUGGLED),
        501,
    ),
    rejected("te-chunked-gzip", request(b"Transfer-Encoding: chunked, gzip", body=HELLO_CHUNKED)),
    rejected(
        "te-chunked-chunked",
        request(b"Transfer-Encoding: chunked, chunked", body=HELLO_CHUNKED),
        NOT_IMPLEMENTED,
    ),
    rejected("te-duplicate-field", request(TE, TE, body=HELLO_CHUNKED), NOT_IMPLEMENTED),
    rejected(
        "te-identity", request(b"Transfer-Encoding: identity", body=SMUGGLED), NOT_IMPLEMENTED
    ),
    rejected("te-empty", request(b"Transfer-Encoding: ", body=HELLO_CHUNKED), NOT_IMPLEMENTED),
    rejected(
        "te-xchunked", request(b"Transfer-Encoding: xchunked", body=HELLO_CHUNKED), NOT_IMPLEMENTED
    ),
    rejected("te-vertical-tab", request(b"Transfer-Encoding: chunked\x0b", body=HELLO_CHUNKED)),
    rejected("te-on-http10", request(TE, version=b"HTTP/1.0", body=EMPTY_CHUNKED_THEN_SMUGGLED)),
    rejected("te-and-cl-on-http10", request(TE, cl(5), version=b"HTTP/1.0", body=HELLO)),
    good(
        "alias-transfer-encoding",
        request(cl(5), b"Transfer_Encoding: chunked", body=HELLO),
        HELLO,
        check_echo=forbid_headers("transfer_encoding", "transfer-encoding"),
    ),
    good(
        "alias-content-length",
        request(TE, b"Content_Length: 48", body=HELLO_CHUNKED),
        HELLO,
        check_echo=forbid_headers("content_length", "content-length"),
    ),
    good(
        "alias-content-length-on-cl",
        request(cl(5), b"content_length: 0", body=HELLO),
        HELLO,
        check_echo=forbid_headers("content_length"),
    ),
]

CHUNKS: list[Case] = [
    rejected("chunk-size-not-hex", request(TE, body=b"zz\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-overflow", request(TE, body=b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-negative", request(TE, body=b"-5\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-0x-prefix", request(TE, body=b"0x5\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-leading-space", request(TE, body=b" 5\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-trailing-space", request(TE, body=b"5 \r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-empty", request(TE, body=b"\r\nhello\r\n0\r\n\r\n")),
    good("chunk-extension", request(TE, body=b"5;name=value\r\nhello\r\n0;end\r\n\r\n"), HELLO),
    good("chunk-extension-quoted", request(TE, body=b'5;name="a b"\r\nhello\r\n0\r\n\r\n'), HELLO),
    rejected("chunk-extension-bare-lf", request(TE, body=b"5;x\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    rejected("chunk-extension-bare-cr", request(TE, body=b"5;x\rhello\r\n0\r\n\r\n")),
    rejected("chunk-extension-nul", request(TE, body=b"5;x=\x00\r\nhello\r\n0\r\n\r\n")),
    rejected(
        "chunk-extension-unterminated-quote", request(TE, body=b'5;x="a\r\nhello\r\n0\r\n\r\n')
    ),
    rejected(
        "chunk-extension-flood",
        request(TE, body=EXTENSION_FLOOD),
        (400, 413, 431),
        reaches=(0, 1),  # the head may be on its way to the replica when the flood is seen
    ),
    rejected("chunk-missing-crlf-after-data", request(TE, body=b"5\r\nhelloXX\r\n0\r\n\r\n")),
    rejected(
        "chunk-data-longer-than-size", request(TE, body=b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
    ),
    rejected("chunk-bare-lf-after-data", request(TE, body=b"5\r\nhello\n0\r\n\r\n")),
    rejected("chunk-bare-lf-size-line", request(TE, body=b"5\nhello\r\n0\r\n\r\n")),
    rejected("chunk-last-bare-lf", request(TE, body=b"5\r\nhello\r\n0\n\n" + SMUGGLED)),
    rejected("chunk-request-in-trailer", request(TE, body=b"0\r\n" + SMUGGLED)),
    good(
        "chunk-valid-trailer", request(TE, body=b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), HELLO
    ),
    served_or_refused(
        "chunk-trailer-framing-fields",
        request(
            TE,
            body=b"5\r\nhello\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: gzip\r\n"
            b"Host: x\r\n\r\n",
        ),
        HELLO,
    ),
    good("chunk-request-inside-body", request(TE, body=chunked(SMUGGLED)), SMUGGLED),
    good("cl-request-inside-body", request(cl(len(SMUGGLED)), body=SMUGGLED), SMUGGLED),
    good(
        "chunked-many-small-chunks",
        request(TE, body=b"".join(b"1\r\n%c\r\n" % c for c in HELLO) + b"0\r\n\r\n"),
        HELLO,
    ),
]

SYNTAX: list[Case] = [
    rejected("bare-lf-request-line", POST_LINE + b"\nHost: h\r\n" + cl(5) + b"\r\n\r\nhello"),
    rejected("bare-lf-everywhere", POST_LINE + b"\nHost: h\n" + cl(5) + b"\n\nhello"),
    rejected("bare-lf-end-of-head", POST_LINE + b"\r\nHost: h\r\n" + cl(5) + b"\r\n\nhello"),
    rejected("bare-cr-in-header-line", request(b"X-A: 1\rContent-Length: 5", body=HELLO)),
    rejected("obs-fold", request(b"X-A: 1", b" 2", cl(5), body=HELLO)),
    rejected(
        "obs-fold-transfer-encoding",
        request(b"Transfer-Encoding: x", b"\tchunked", body=HELLO_CHUNKED),
    ),
    rejected("space-before-colon-cl", request(b"Content-Length : 5", body=HELLO)),
    rejected("space-before-colon-te", request(b"Transfer-Encoding : chunked", cl(5), body=HELLO)),
    rejected("tab-before-colon", request(b"Transfer-Encoding\t: chunked", body=HELLO_CHUNKED)),
    rejected("header-line-leading-space", request(b" Transfer-Encoding: chunked", body=HELLO)),
    rejected("header-without-colon", request(b"X-A 1", cl(5), body=HELLO)),
    rejected("header-empty-name", request(b": 1", cl(5), body=HELLO)),
    rejected(
        "header-name-x85",
        request(b"Transfer-Encoding\x85: chunked", cl(5), body=HELLO + SMUGGLED),
    ),
    rejected("header-name-x85-alone", request(b"X\x85: 1", cl(5), body=HELLO)),
    rejected("header-name-space", request(b"Transfer Encoding: chunked", cl(5), body=HELLO)),
    rejected("header-name-paren", request(b"X(a): 1", cl(5), body=HELLO)),
    rejected("header-name-slash", request(b"X/a: 1", cl(5), body=HELLO)),
    rejected("header-name-nul", request(b"X\x00a: 1", cl(5), body=HELLO)),
    rejected("header-name-del", request(b"X\x7fa: 1", cl(5), body=HELLO)),
    rejected("header-value-nul", request(b"X-A: a\x00b", cl(5), body=HELLO)),
    rejected("header-value-soh", request(b"X-A: a\x01b", cl(5), body=HELLO)),
    rejected("header-value-del", request(b"X-A: a\x7fb", cl(5), body=HELLO)),
    rejected("header-value-form-feed", request(b"X-A: a\x0cb", cl(5), body=HELLO)),
    rejected("header-value-escape", request(b"X-A: a\x1bb", cl(5), body=HELLO)),
    good("header-value-obs-text", request(b"X-A: caf\xe9 \x80\xff", cl(5), body=HELLO), HELLO),
]


def refused_version(name: str, raw: bytes, **extra: Any) -> Case:
    return rejected(name, raw, UNSUPPORTED_VERSION, **extra)


REQUEST_LINE: list[Case] = [
    refused_version("version-1.2", request(cl(5), version=b"HTTP/1.2", body=HELLO)),
    refused_version("version-2.0", request(cl(5), version=b"HTTP/2.0", body=HELLO)),
    refused_version("version-3.0", request(cl(5), version=b"HTTP/3.0", body=HELLO)),
    refused_version("version-0.9-stated", request(version=b"HTTP/0.9", method=b"GET")),
    refused_version("version-0.9-request-line", b"GET " + SCORE + b"\r\n\r\n" + SMUGGLED),
    rejected("version-lowercase", request(version=b"http/1.1", method=b"GET")),
    rejected("version-leading-zero", request(version=b"HTTP/01.1", method=b"GET")),
    rejected("version-two-digit-minor", request(version=b"HTTP/1.10", method=b"GET")),
    rejected("version-missing-minor", request(version=b"HTTP/1", method=b"GET")),
    refused_version("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED),
    refused_version("rtsp-get", request(version=b"RTSP/1.0", method=b"GET")),
    refused_version("rtsp-post", request(cl(5), version=b"RTSP/1.0", body=HELLO)),
    refused_version("ice-source", request(version=b"ICE/1.0", method=b"SOURCE")),
    refused_version("rtsp-only-method", request(version=b"RTSP/1.0", method=b"PLAY")),
    # RFC 9112 3: a recipient MAY split the request line on any run of whitespace.
    served_or_refused(
        "request-line-double-space", raw_head(b"GET  " + SCORE + b" HTTP/1.1", b"Host: h"), b""
    ),
    rejected("request-line-tab", raw_head(b"GET\t" + SCORE + b" HTTP/1.1", b"Host: h")),
    rejected("request-line-no-target", raw_head(b"GET HTTP/1.1", b"Host: h")),
    rejected(
        "request-line-space-in-target",
        raw_head(b"GET /api/v1/endpoint/safety/sc ore HTTP/1.1", b"Host: h"),
    ),
    rejected("method-unknown", request(method=b"FOO")),
    rejected("method-lowercase", request(method=b"post")),
    rejected("rtsp-method-on-http", request(method=b"DESCRIBE")),
    rejected("authority-form-without-connect", request(method=b"GET", target=b"h:80")),
    rejected("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)),
    rejected("nul-first-byte", b"\x00" + request()),
    served_or_refused("url-fragment", request(cl(5), target=SCORE + b"#frag", body=HELLO), HELLO),
    served_or_refused(
        "url-high-bytes", request(cl(5), target=SCORE + b"?q=caf\xc3\xa9", body=HELLO), HELLO
    ),
    good("leading-empty-line", b"\r\n" + request(cl(5), body=HELLO), HELLO),
    good(
        "absolute-form",
        request(cl(5), target=b"http://h/api/v1/endpoint/safety/score", body=HELLO),
        HELLO,
        check_echo=path_is("/score"),
    ),
    Case("asterisk-form", request(method=b"OPTIONS", target=b"*"), ((400, 404),), closes=False),
    rejected("connect", CONNECT + b"\r\n" + SMUGGLED, NOT_IMPLEMENTED),
    rejected(
        "connect-with-body",
        CONNECT + cl(len(SMUGGLED)) + b"\r\n\r\n" + SMUGGLED,
        NOT_IMPLEMENTED,
    ),
    rejected(
        "upgrade-websocket-body-is-request",
        request(
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            cl(len(SMUGGLED)),
            method=b"GET",
            body=SMUGGLED,
        ),
        NOT_IMPLEMENTED,
    ),
    rejected(
        "upgrade-websocket-then-request",
        request(b"Upgrade: websocket", b"Connection: upgrade", method=b"GET", body=SMUGGLED),
        NOT_IMPLEMENTED,
    ),
    rejected(
        "upgrade-h2c",
        request(
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
            method=b"GET",
            body=SMUGGLED,
        ),
        NOT_IMPLEMENTED,
    ),
    good(
        "upgrade-without-connection-upgrade",
        request(b"Upgrade: websocket", cl(5), body=HELLO),
        HELLO,
        check_echo=forbid_headers("upgrade"),
    ),
]

LIMIT_CASES: list[Case] = [
    rejected("url-too-long", request(target=SCORE + b"?" + b"a" * 3000), 414),
    rejected("request-line-100k", request(target=SCORE + b"?" + b"a" * 100_000), 414),
    rejected("too-many-headers", request(*(b"X-H%d: 1" % i for i in range(40))), 431),
    rejected("header-value-too-large", request(b"X-Big: " + b"v" * 5000), 431),
    rejected("header-name-too-large", request(b"X-" + b"n" * 5000 + b": 1"), 431),
    rejected(
        "headers-sum-too-large", request(*(b"X-H%d: " % i + b"v" * 300 for i in range(15))), 431
    ),
    rejected(
        "header-value-never-ends",
        raw_head(POST_LINE, b"Host: h", b"X-Big: " + b"v" * NEVER_ENDING, end=b""),
        431,
    ),
    rejected(
        "header-name-never-ends",
        raw_head(POST_LINE, b"Host: h", b"X-" + b"n" * NEVER_ENDING, end=b""),
        431,
    ),
    rejected(
        "too-many-dropped-headers",
        request(*(b"Keep-Alive: %d" % i for i in range(40))),
        431,
    ),
    rejected("body-over-limit-cl", request(cl(2000), body=b"x" * 2000), 413),
    rejected("body-over-limit-cl-head-only", request(cl(5000)), 413),
    rejected(
        "body-over-limit-chunked",
        request(TE, body=b"".join(chunked(b"x" * 400)[:-5] for _ in range(5)) + b"0\r\n\r\n"),
        413,
        reaches=(0, 1),  # the head may be on its way to the replica before the body is too big
    ),
    good("body-at-limit", request(cl(1024), body=b"y" * 1024), b"y" * 1024),
]

HOST: list[Case] = [
    rejected("host-missing", request(cl(5), host=None, body=HELLO)),
    rejected("host-duplicate-equal", request(b"Host: h", cl(5), body=HELLO)),
    rejected("host-duplicate-different", request(b"Host: other", cl(5), body=HELLO)),
    rejected("host-duplicate-case", request(b"hOST: h", cl(5), body=HELLO)),
    Case(
        "host-missing-http10",
        request(cl(5), host=None, version=b"HTTP/1.0", body=HELLO),
        (200,),
        closes=True,
        reaches=1,
        forwarded=(HELLO,),
    ),
]

ONE = request(cl(3), body=b"one")

CONNECTION: list[Case] = [
    answered_then_closed(
        "data-after-connection-close",
        request(cl(5), b"Connection: close", body=HELLO + SMUGGLED),
        body=HELLO,
    ),
    answered_then_closed(
        "garbage-after-connection-close",
        request(cl(5), b"Connection: close", body=HELLO + b"\x00\x01garbage\r\n\r\n"),
        body=HELLO,
    ),
    answered_then_closed(
        "data-after-http10", request(cl(5), version=b"HTTP/1.0", body=HELLO + SMUGGLED), body=HELLO
    ),
    answered_then_closed(
        "data-after-chunked-connection-close",
        request(TE, b"Connection: close", body=HELLO_CHUNKED + SMUGGLED),
        body=HELLO,
    ),
    good("pipelined-two", ONE + request(cl(3), body=b"two"), b"one", b"two"),
    good(
        "pipelined-eight",
        b"".join(request(cl(1), body=b"%d" % i) for i in range(8)),
        *(b"%d" % i for i in range(8)),
    ),
    good(
        "pipelined-three-mixed",
        request(TE, body=chunked(b"first"))
        + request(method=b"GET")
        + request(cl(5), body=b"third"),
        b"first",
        b"",
        b"third",
    ),
    good(
        "pipelined-then-http10-keep-alive",
        ONE + request(cl(3), b"Connection: keep-alive", version=b"HTTP/1.0", body=b"two"),
        b"one",
        b"two",
    ),
    good(
        "pipelined-head-then-post",
        request(method=b"HEAD") + request(cl(3), body=b"two"),
        b"two",
        statuses=(200, 200),
        reaches=2,
        head_index=0,
    ),
    good(
        "pipelined-post-then-head",
        ONE + request(method=b"HEAD"),
        b"one",
        statuses=(200, 200),
        reaches=2,
        head_index=1,
    ),
    answered_then_closed(
        "pipelined-valid-then-malformed", ONE + b"GARBAGE\r\n\r\n" + SMUGGLED, 400
    ),
    answered_then_closed(
        "pipelined-valid-then-bad-framing",
        ONE + request(cl(3), TE, body=EMPTY_CHUNKED_THEN_SMUGGLED),
        400,
    ),
    answered_then_closed(
        "pipelined-valid-then-upgrade",
        ONE + request(b"Upgrade: websocket", b"Connection: upgrade", method=b"GET", body=SMUGGLED),
        NOT_IMPLEMENTED,
    ),
    answered_then_closed(
        "pipelined-valid-then-connect", ONE + CONNECT + b"\r\n" + SMUGGLED, NOT_IMPLEMENTED
    ),
    Case(
        "pipelined-valid-then-gzip-chunked",
        ONE + request(TE_GZIP, body=EMPTY_CHUNKED_THEN_SMUGGLED),
        (200, 501),
        closes=True,
        reaches=1,
        forwarded=(b"one",),
    ),
    rejected("pipelined-malformed-then-valid", request(b"X-A: \x00", method=b"GET") + SMUGGLED),
    rejected("pipelined-refused-then-valid", request(host=None, method=b"GET") + SMUGGLED),
    Case(
        "not-found-then-request",
        request(cl(5), target=NO_SUCH_ENDPOINT, body=HELLO + SMUGGLED),
        (404,),
        closes=True,
    ),
    Case(
        "not-found-empty-chunked-then-request",
        request(TE, target=NO_SUCH_ENDPOINT, body=EMPTY_CHUNKED_THEN_SMUGGLED),
        (404,),
        closes=True,
    ),
    good("trailing-crlf-after-body", request(cl(5), body=HELLO + b"\r\n"), HELLO),
    Case("head", request(method=b"HEAD"), (200,), closes=False, reaches=1, head_index=0),
    good("get-with-body", request(cl(5), method=b"GET", body=HELLO), HELLO),
    good(
        "hop-by-hop-dropped",
        request(
            cl(5),
            b"Connection: keep-alive",
            b"Keep-Alive: timeout=5",
            b"TE: trailers",
            b"Proxy-Connection: keep-alive",
            b"Trailer: X-T",
            body=HELLO,
        ),
        HELLO,
        check_echo=forbid_headers("connection", "keep-alive", "te", "proxy-connection", "trailer"),
    ),
    good(
        "connection-nominated-field-dropped",
        request(cl(5), b"Connection: X-Private", b"X-Private: secret", body=HELLO),
        HELLO,
        check_echo=forbid_headers("x-private"),
    ),
]

CORPUS: list[Case] = FRAMING + CHUNKS + SYNTAX + REQUEST_LINE + LIMIT_CASES + HOST + CONNECTION
