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
SMUGGLED_PATH = "/api/v1/endpoint/safety/smuggled"
SMUGGLED = b"GET " + SMUGGLED_PATH.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n"

# Small limits, so the limit cases stay small on the wire (the router's config uses these).
LIMITS = {
    "max_request_line_bytes": 2048,
    "max_header_bytes": 4096,
    "max_headers": 20,
    "max_body_bytes": 1024,
}

# Bugs found in inferfront by this corpus; a case carrying one is an xfail(strict=True).
BUG_REQUEST_ID_ON_PARSE_ERROR = (
    "router bug: an answer to a request rejected by llhttp before its head completed carries an "
    "empty x-request-id/request_id (Exchange.request_id is only set in on_headers_complete)"
)
BUG_PIPELINE_STALL = (
    "router bug: a pipelined request that gets an idle pooled replica connection when the "
    "previous answer completes is never written upstream (ClientConnection.exchange_done starts "
    "it but nothing flushes its pending head and body), so it hangs until request_timeout_ms"
)
BUG_PARSES_AFTER_CLOSE = (
    "router bug (request smuggling): after answering with 'connection: close' the router keeps "
    "parsing the same read and forwards the next request (a rejected Transfer-Encoding does not "
    "stop parsing; an early error on an empty chunked body is not caught by on_body's halt)"
)
BUG_UNBOUNDED_HEADER_LINE = (
    "router bug: httptools buffers an unfinished header name/value without bound (and with "
    "quadratic += copies); the router checks max_header_bytes only once the field is complete, "
    "so a header line that never ends is never refused"
)
BUG_HEADER_COUNT_BYPASS = (
    "router bug: max_headers counts only the fields kept in Exchange.headers; hop-by-hop and "
    "other dropped fields are not counted, so any number of them passes"
)
BUG_CHUNK_EXTENSION_FLOOD = (
    "router bug: chunk extensions are parsed and thrown away with no bound (llhttp keeps no "
    "limit, httptools does not expose them): a client can send unbounded non-data bytes "
    "(the CVE-2023-39326 / CVE-2024-22019 class)"
)
BUG_PROTOCOL_NAME = (
    "router bug: llhttp reports RTSP/1.0 and ICE/1.0 as version 1.0 and the router serves them "
    "as HTTP/1.0 (it never checks the protocol name)"
)

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


def cl(size: int) -> bytes:
    return b"Content-Length: %d" % size


TE = b"Transfer-Encoding: chunked"
# A header line this long arrives in several reads: a router bounding what it buffers for a
# field still unfinished refuses it before its end (which never comes).
NEVER_ENDING = 1 << 20
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


def forbid_headers(*names: str) -> Callable[[Echo], None]:
    """The model server must not have seen any of these header names."""

    def check(echo: Echo) -> None:
        seen = set(echo["headers"])
        leaked = seen.intersection(names)
        assert not leaked, f"forwarded to the replica: {sorted(leaked)} in {echo['headers']}"

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
    return Case(name, raw, (status,), closes=True, reaches=0, **extra)


_SMUGGLE_CHUNKED = b"0\r\n\r\n" + SMUGGLED
_UNSUPPORTED_VERSION = (400, 505)
_NOT_IMPLEMENTED = (400, 501)

FRAMING: list[Case] = [
    rejected("cl-then-te", request(cl(len(_SMUGGLE_CHUNKED)), TE, body=_SMUGGLE_CHUNKED)),
    rejected("te-then-cl", request(TE, cl(len(_SMUGGLE_CHUNKED)), body=_SMUGGLE_CHUNKED)),
    rejected("te-then-cl-zero", request(TE, cl(0), body=_SMUGGLE_CHUNKED)),
    rejected("cl-duplicate-equal", request(cl(5), cl(5), body=b"hello")),
    rejected("cl-duplicate-different", request(cl(5), cl(5 + len(SMUGGLED)), body=b"hello" + SMUGGLED)),
    rejected("cl-comma-list", request(b"Content-Length: 5, 5", body=b"hello")),
    rejected("cl-plus-sign", request(b"Content-Length: +5", body=b"hello")),
    rejected("cl-negative", request(b"Content-Length: -5", body=b"hello")),
    rejected("cl-hex", request(b"Content-Length: 0x5", body=b"hello")),
    rejected("cl-inner-space", request(b"Content-Length: 1 0", body=b"hello")),
    rejected("cl-empty", request(b"Content-Length: ", body=SMUGGLED)),
    rejected("cl-uint64-overflow", request(b"Content-Length: 18446744073709551616", body=b"x")),
    rejected("cl-uint64-max", request(b"Content-Length: 18446744073709551615", body=b"x"), 413),
    served_or_refused("cl-trailing-whitespace", request(b"Content-Length: 5 \t", body=b"hello"), b"hello"),
    served_or_refused("te-chunked-trailing-space", request(b"Transfer-Encoding: chunked ", body=HELLO_CHUNKED), b"hello"),
    served_or_refused("te-chunked-trailing-tab", request(b"Transfer-Encoding: chunked\t", body=HELLO_CHUNKED), b"hello"),
    served_or_refused("te-chunked-leading-tab", request(b"Transfer-Encoding:\tchunked", body=HELLO_CHUNKED), b"hello"),
    good("te-chunked-uppercase", request(b"Transfer-Encoding: CHUNKED", body=HELLO_CHUNKED), b"hello"),
    rejected("te-gzip-chunked", request(b"Transfer-Encoding: gzip, chunked", body=HELLO_CHUNKED), 501),
    rejected(
        "te-gzip-chunked-then-request",
        request(b"Transfer-Encoding: gzip, chunked", body=_SMUGGLE_CHUNKED),
        501,
        bug=BUG_PARSES_AFTER_CLOSE,
    ),
    rejected("te-chunked-gzip", request(b"Transfer-Encoding: chunked, gzip", body=HELLO_CHUNKED)),
    rejected("te-chunked-chunked", request(b"Transfer-Encoding: chunked, chunked", body=HELLO_CHUNKED), _NOT_IMPLEMENTED),
    rejected("te-duplicate-field", request(TE, TE, body=HELLO_CHUNKED), _NOT_IMPLEMENTED),
    rejected("te-identity", request(b"Transfer-Encoding: identity", body=SMUGGLED), _NOT_IMPLEMENTED),
    rejected("te-empty", request(b"Transfer-Encoding: ", body=HELLO_CHUNKED), _NOT_IMPLEMENTED),
    rejected("te-xchunked", request(b"Transfer-Encoding: xchunked", body=HELLO_CHUNKED), _NOT_IMPLEMENTED),
    rejected("te-vertical-tab", request(b"Transfer-Encoding: chunked\x0b", body=HELLO_CHUNKED)),
    rejected("te-on-http10", request(TE, version=b"HTTP/1.0", body=_SMUGGLE_CHUNKED)),
    rejected("te-and-cl-on-http10", request(TE, cl(5), version=b"HTTP/1.0", body=b"hello")),
    good(
        "alias-transfer-encoding",
        request(cl(5), b"Transfer_Encoding: chunked", body=b"hello"),
        b"hello",
        check_echo=forbid_headers("transfer_encoding", "transfer-encoding"),
    ),
    good(
        "alias-content-length",
        request(TE, b"Content_Length: 48", body=HELLO_CHUNKED),
        b"hello",
        check_echo=forbid_headers("content_length", "content-length"),
    ),
    good(
        "alias-content-length-on-cl",
        request(cl(5), b"content_length: 0", body=b"hello"),
        b"hello",
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
    good("chunk-extension", request(TE, body=b"5;name=value\r\nhello\r\n0;end\r\n\r\n"), b"hello"),
    good("chunk-extension-quoted", request(TE, body=b'5;name="a b"\r\nhello\r\n0\r\n\r\n'), b"hello"),
    rejected("chunk-extension-bare-lf", request(TE, body=b"5;x\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    rejected("chunk-extension-bare-cr", request(TE, body=b"5;x\rhello\r\n0\r\n\r\n")),
    rejected("chunk-extension-nul", request(TE, body=b"5;x=\x00\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-extension-unterminated-quote", request(TE, body=b'5;x="a\r\nhello\r\n0\r\n\r\n')),
    rejected("chunk-missing-crlf-after-data", request(TE, body=b"5\r\nhelloXX\r\n0\r\n\r\n")),
    rejected("chunk-data-longer-than-size", request(TE, body=b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED)),
    rejected("chunk-bare-lf-after-data", request(TE, body=b"5\r\nhello\n0\r\n\r\n")),
    rejected("chunk-bare-lf-size-line", request(TE, body=b"5\nhello\r\n0\r\n\r\n")),
    rejected("chunk-last-bare-lf", request(TE, body=b"5\r\nhello\r\n0\n\n" + SMUGGLED)),
    rejected("chunk-request-in-trailer", request(TE, body=b"0\r\n" + SMUGGLED)),
    good("chunk-valid-trailer", request(TE, body=b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), b"hello"),
    good("chunk-request-inside-body", request(TE, body=chunked(SMUGGLED)), SMUGGLED),
    good("cl-request-inside-body", request(cl(len(SMUGGLED)), body=SMUGGLED), SMUGGLED),
    rejected(
        "chunk-extension-flood",
        request(TE, body=b"".join(b"1;" + b"e" * 2000 + b"\r\nx\r\n" for _ in range(64)) + b"0\r\n\r\n"),
        (400, 413, 431),
        bug=BUG_CHUNK_EXTENSION_FLOOD,
    ),
    served_or_refused(
        "chunk-trailer-framing-fields",
        request(TE, body=b"5\r\nhello\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: gzip\r\nHost: x\r\n\r\n"),
        b"hello",
    ),
    good(
        "chunked-many-small-chunks",
        request(TE, body=b"".join(b"1\r\n%c\r\n" % c for c in b"hello") + b"0\r\n\r\n"),
        b"hello",
    ),
]

SYNTAX: list[Case] = [
    rejected("bare-lf-request-line", b"POST " + SCORE + b" HTTP/1.1\nHost: h\r\n" + cl(5) + b"\r\n\r\nhello"),
    rejected("bare-lf-everywhere", b"POST " + SCORE + b" HTTP/1.1\nHost: h\n" + cl(5) + b"\n\nhello"),
    rejected("bare-lf-end-of-head", b"POST " + SCORE + b" HTTP/1.1\r\nHost: h\r\n" + cl(5) + b"\r\n\nhello"),
    rejected("bare-cr-in-header-line", request(b"X-A: 1\rContent-Length: 5", body=b"hello")),
    rejected("obs-fold", request(b"X-A: 1", b" 2", cl(5), body=b"hello")),
    rejected("obs-fold-transfer-encoding", request(b"Transfer-Encoding: x", b"\tchunked", body=HELLO_CHUNKED)),
    rejected("space-before-colon-cl", request(b"Content-Length : 5", body=b"hello")),
    rejected("space-before-colon-te", request(b"Transfer-Encoding : chunked", cl(5), body=b"hello")),
    rejected("tab-before-colon", request(b"Transfer-Encoding\t: chunked", body=HELLO_CHUNKED)),
    rejected("header-line-leading-space", request(b" Transfer-Encoding: chunked", body=HELLO_CHUNKED)),
    rejected("header-without-colon", request(b"X-A 1", cl(5), body=b"hello")),
    rejected("header-empty-name", request(b": 1", cl(5), body=b"hello")),
    rejected("header-name-x85", request(b"Transfer-Encoding\x85: chunked", cl(5), body=b"hello" + SMUGGLED)),
    rejected("header-name-x85-alone", request(b"X\x85: 1", cl(5), body=b"hello")),
    rejected("header-name-space", request(b"Transfer Encoding: chunked", cl(5), body=b"hello")),
    rejected("header-name-paren", request(b"X(a): 1", cl(5), body=b"hello")),
    rejected("header-name-slash", request(b"X/a: 1", cl(5), body=b"hello")),
    rejected("header-name-nul", request(b"X\x00a: 1", cl(5), body=b"hello")),
    rejected("header-name-del", request(b"X\x7fa: 1", cl(5), body=b"hello")),
    rejected("header-value-nul", request(b"X-A: a\x00b", cl(5), body=b"hello")),
    rejected("header-value-soh", request(b"X-A: a\x01b", cl(5), body=b"hello")),
    rejected("header-value-del", request(b"X-A: a\x7fb", cl(5), body=b"hello")),
    rejected("header-value-form-feed", request(b"X-A: a\x0cb", cl(5), body=b"hello")),
    rejected("header-value-escape", request(b"X-A: a\x1bb", cl(5), body=b"hello")),
    good("header-value-obs-text", request(b"X-A: caf\xe9 \x80\xff", cl(5), body=b"hello"), b"hello"),
]

REQUEST_LINE: list[Case] = [
    rejected("version-1.2", request(cl(5), version=b"HTTP/1.2", body=b"hello"), _UNSUPPORTED_VERSION),
    rejected("version-2.0", request(cl(5), version=b"HTTP/2.0", body=b"hello"), _UNSUPPORTED_VERSION),
    rejected("version-3.0", request(cl(5), version=b"HTTP/3.0", body=b"hello"), _UNSUPPORTED_VERSION),
    rejected("version-0.9-stated", request(version=b"HTTP/0.9", method=b"GET"), _UNSUPPORTED_VERSION),
    rejected("version-0.9-request-line", b"GET " + SCORE + b"\r\n\r\n" + SMUGGLED, _UNSUPPORTED_VERSION),
    rejected("version-lowercase", request(version=b"http/1.1", method=b"GET")),
    rejected("version-leading-zero", request(version=b"HTTP/01.1", method=b"GET")),
    rejected("version-two-digit-minor", request(version=b"HTTP/1.10", method=b"GET")),
    rejected("version-missing-minor", request(version=b"HTTP/1", method=b"GET")),
    rejected("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED, _UNSUPPORTED_VERSION),
    rejected("rtsp-get", request(version=b"RTSP/1.0", method=b"GET"), _UNSUPPORTED_VERSION, bug=BUG_PROTOCOL_NAME),
    rejected("rtsp-post", request(cl(5), version=b"RTSP/1.0", body=b"hello"), _UNSUPPORTED_VERSION, bug=BUG_PROTOCOL_NAME),
    rejected("ice-source", request(version=b"ICE/1.0", method=b"SOURCE"), _UNSUPPORTED_VERSION, bug=BUG_PROTOCOL_NAME),
    rejected("rtsp-only-method", request(version=b"RTSP/1.0", method=b"PLAY"), _UNSUPPORTED_VERSION, bug=BUG_PROTOCOL_NAME),
    # RFC 9112 3: recipients MAY split the request line on any whitespace run.
    served_or_refused("request-line-double-space", b"GET  " + SCORE + b" HTTP/1.1\r\nHost: h\r\n\r\n", b""),
    rejected("request-line-tab", b"GET\t" + SCORE + b" HTTP/1.1\r\nHost: h\r\n\r\n"),
    rejected("request-line-no-target", b"GET HTTP/1.1\r\nHost: h\r\n\r\n"),
    rejected("request-line-space-in-target", b"GET /api/v1/endpoint/safety/sc ore HTTP/1.1\r\nHost: h\r\n\r\n"),
    rejected("method-unknown", request(method=b"FOO")),
    rejected("method-lowercase", request(method=b"post", body=b"")),
    rejected("rtsp-method-on-http", request(method=b"DESCRIBE")),
    rejected("authority-form-without-connect", request(method=b"GET", target=b"h:80")),
    rejected("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)),
    rejected("nul-first-byte", b"\x00" + request()),
    served_or_refused("url-fragment", request(cl(5), target=SCORE + b"#frag", body=b"hello"), b"hello"),
    served_or_refused("url-high-bytes", request(cl(5), target=SCORE + b"?q=caf\xc3\xa9", body=b"hello"), b"hello"),
    good("leading-empty-line", b"\r\n" + request(cl(5), body=b"hello"), b"hello"),
    good(
        "absolute-form",
        request(cl(5), target=b"http://h/api/v1/endpoint/safety/score", body=b"hello"),
        b"hello",
        check_echo=lambda echo: _assert_path(echo, "/score"),
    ),
    Case("asterisk-form", request(method=b"OPTIONS", target=b"*"), ((400, 404),), closes=False),
    rejected("connect", b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n" + SMUGGLED, _NOT_IMPLEMENTED),
    rejected(
        "connect-with-body",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n" + cl(len(SMUGGLED)) + b"\r\n\r\n" + SMUGGLED,
        _NOT_IMPLEMENTED,
    ),
    rejected(
        "upgrade-websocket-body-is-request",
        request(
            b"Upgrade: websocket", b"Connection: Upgrade", cl(len(SMUGGLED)),
            method=b"GET", body=SMUGGLED,
        ),
        _NOT_IMPLEMENTED,
    ),
    rejected(
        "upgrade-websocket-then-request",
        request(b"Upgrade: websocket", b"Connection: upgrade", method=b"GET", body=SMUGGLED),
        _NOT_IMPLEMENTED,
    ),
    rejected(
        "upgrade-h2c",
        request(
            b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
            method=b"GET", body=SMUGGLED,
        ),
        _NOT_IMPLEMENTED,
    ),
    good(
        "upgrade-without-connection-upgrade",
        request(b"Upgrade: websocket", cl(5), body=b"hello"),
        b"hello",
        check_echo=forbid_headers("upgrade"),
    ),
]

LIMIT_CASES: list[Case] = [
    rejected("url-too-long", request(target=SCORE + b"?" + b"a" * 3000), 414),
    rejected("request-line-100k", request(target=SCORE + b"?" + b"a" * 100_000), 414),
    rejected("too-many-headers", request(*(b"X-H%d: 1" % i for i in range(40))), 431),
    rejected("header-value-too-large", request(b"X-Big: " + b"v" * 5000), 431),
    rejected("header-name-too-large", request(b"X-" + b"n" * 5000 + b": 1"), 431),
    rejected("headers-sum-too-large", request(*(b"X-H%d: " % i + b"v" * 300 for i in range(15))), 431),
    rejected(
        "header-value-never-ends",
        b"POST " + SCORE + b" HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * NEVER_ENDING,
        431,
        bug=BUG_UNBOUNDED_HEADER_LINE,
    ),
    rejected(
        "header-name-never-ends",
        b"POST " + SCORE + b" HTTP/1.1\r\nHost: h\r\nX-" + b"n" * NEVER_ENDING,
        431,
        bug=BUG_UNBOUNDED_HEADER_LINE,
    ),
    rejected(
        "too-many-dropped-headers",
        request(*(b"Keep-Alive: %d" % i for i in range(40))),
        431,
        bug=BUG_HEADER_COUNT_BYPASS,
    ),
    rejected("body-over-limit-cl", request(cl(2000), body=b"x" * 2000), 413),
    rejected("body-over-limit-cl-head-only", request(cl(5000)), 413),
    Case(
        "body-over-limit-chunked",
        request(TE, body=b"".join(chunked(b"x" * 400)[:-5] for _ in range(5)) + b"0\r\n\r\n"),
        (413,),
        closes=True,
        reaches=(0, 1),  # the head may be on its way to the replica before the body is too big
    ),
    good("body-at-limit", request(cl(1024), body=b"y" * 1024), b"y" * 1024),
]

HOST: list[Case] = [
    rejected("host-missing", request(cl(5), host=None, body=b"hello")),
    rejected("host-duplicate-equal", request(b"Host: h", cl(5), body=b"hello")),
    rejected("host-duplicate-different", request(b"Host: other", cl(5), body=b"hello")),
    rejected("host-duplicate-case", request(b"hOST: h", cl(5), body=b"hello")),
    Case(
        "host-missing-http10",
        request(cl(5), host=None, version=b"HTTP/1.0", body=b"hello"),
        (200,), closes=True, reaches=1, forwarded=(b"hello",),
    ),
]

CONNECTION: list[Case] = [
    Case(
        "data-after-connection-close",
        request(cl(5), b"Connection: close", body=b"hello" + SMUGGLED),
        (200,), closes=True, reaches=1, forwarded=(b"hello",),
    ),
    Case(
        "garbage-after-connection-close",
        request(cl(5), b"Connection: close", body=b"hello\x00\x01garbage\r\n\r\n"),
        (200,), closes=True, reaches=1, forwarded=(b"hello",),
    ),
    Case(
        "data-after-http10",
        request(cl(5), version=b"HTTP/1.0", body=b"hello" + SMUGGLED),
        (200,), closes=True, reaches=1, forwarded=(b"hello",),
    ),
    Case(
        "data-after-chunked-connection-close",
        request(TE, b"Connection: close", body=HELLO_CHUNKED + SMUGGLED),
        (200,), closes=True, reaches=1, forwarded=(b"hello",),
    ),
    good(
        "pipelined-two",
        request(cl(3), body=b"one") + request(cl(3), body=b"two"),
        b"one", b"two",
        bug=BUG_PIPELINE_STALL,
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
        request(cl(3), body=b"one") + request(method=b"HEAD"),
        b"one",
        statuses=(200, 200),
        reaches=2,
        head_index=1,
        bug=BUG_PIPELINE_STALL,
    ),
    good(
        "pipelined-eight",
        b"".join(request(cl(1), body=b"%d" % i) for i in range(8)),
        *(b"%d" % i for i in range(8)),
        bug=BUG_PIPELINE_STALL,
    ),
    good(
        "pipelined-three-mixed",
        request(TE, body=chunked(b"first")) + request(method=b"GET") + request(cl(5), body=b"third"),
        b"first", b"", b"third",
        bug=BUG_PIPELINE_STALL,
    ),
    Case(
        "pipelined-then-http10-keep-alive",
        request(cl(3), body=b"one") + request(cl(3), b"Connection: keep-alive", version=b"HTTP/1.0", body=b"two"),
        (200, 200), closes=False, reaches=2, forwarded=(b"one", b"two"), bug=BUG_PIPELINE_STALL,
    ),
    Case(
        "pipelined-valid-then-malformed",
        request(cl(3), body=b"one") + b"GARBAGE\r\n\r\n" + SMUGGLED,
        (200, 400), closes=True, reaches=1, forwarded=(b"one",),
    ),
    Case(
        "pipelined-valid-then-bad-framing",
        request(cl(3), body=b"one") + request(cl(3), TE, body=_SMUGGLE_CHUNKED),
        (200, 400), closes=True, reaches=1, forwarded=(b"one",),
    ),
    rejected("pipelined-malformed-then-valid", request(b"X-A: \x00", method=b"GET") + SMUGGLED),
    rejected("pipelined-rejected-then-valid", request(host=None, method=b"GET") + SMUGGLED),
    Case(
        "pipelined-valid-then-gzip-chunked",
        request(cl(3), body=b"one") + request(b"Transfer-Encoding: gzip, chunked", body=_SMUGGLE_CHUNKED),
        (200, 501), closes=True, reaches=1, forwarded=(b"one",), bug=BUG_PARSES_AFTER_CLOSE,
    ),
    Case(
        "pipelined-valid-then-upgrade",
        request(cl(3), body=b"one")
        + request(b"Upgrade: websocket", b"Connection: upgrade", method=b"GET", body=SMUGGLED),
        (200, (400, 501)), closes=True, reaches=1, forwarded=(b"one",),
    ),
    Case(
        "pipelined-valid-then-connect",
        request(cl(3), body=b"one") + b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n" + SMUGGLED,
        (200, (400, 501)), closes=True, reaches=1, forwarded=(b"one",),
    ),
    good("trailing-crlf-after-body", request(cl(5), body=b"hello\r\n"), b"hello"),
    Case(
        "not-found-empty-chunked-then-request",
        request(TE, target=b"/api/v1/endpoint/nosuch/score", body=_SMUGGLE_CHUNKED),
        (404,), closes=True, reaches=0, bug=BUG_PARSES_AFTER_CLOSE,
    ),
    Case(
        "not-found-then-request",
        request(cl(5), target=b"/api/v1/endpoint/nosuch/score", body=b"hello" + SMUGGLED),
        (404,), closes=True, reaches=0,
    ),
    Case("head", request(method=b"HEAD"), (200,), closes=False, reaches=1, head_index=0),
    Case("get-with-body", request(cl(5), method=b"GET", body=b"hello"), (200,), closes=False,
         reaches=1, forwarded=(b"hello",)),
    Case(
        "hop-by-hop-dropped",
        request(
            cl(5), b"Connection: keep-alive, X-Private", b"Keep-Alive: timeout=5", b"TE: trailers",
            b"Proxy-Connection: keep-alive", b"Trailer: X-T", body=b"hello",
        ),
        (200,), closes=False, reaches=1, forwarded=(b"hello",),
        check_echo=forbid_headers("connection", "keep-alive", "te", "proxy-connection", "trailer"),
    ),
]

CORPUS: list[Case] = FRAMING + CHUNKS + SYNTAX + REQUEST_LINE + LIMIT_CASES + HOST + CONNECTION


def _assert_path(echo: Echo, path: str) -> None:
    assert echo["path"] == path, echo
