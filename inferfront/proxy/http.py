"""HTTP/1.1 vocabulary shared by the client and upstream sides of the proxy."""

from __future__ import annotations

import json
from http import HTTPStatus

# Hop-by-hop fields (RFC 9110 7.6.1) plus framing fields the proxy always writes itself: a client's
# or replica's own Content-Length / Transfer-Encoding are never forwarded as they came.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)

# Some model servers (WSGI/CGI style) map "_" to "-": these would become framing fields there.
SMUGGLING_ALIASES: frozenset[bytes] = frozenset({b"content_length", b"transfer_encoding"})

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>\\r\\n`, cached: built once per status code."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
        _STATUS_LINES[status] = line
    return line


# Azure ML's error codes, by status.
ERROR_CODES: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    414: "UriTooLong",
    429: "TooManyRequests",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalServerError",
    501: "NotImplemented",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
    505: "HttpVersionNotSupported",
}

NO_ROUTE_MESSAGE = (
    "No route found or no valid deployments to route to, please check that the endpoint has at "
    "least one deployment with positive weight values or use a deployment specific header to route."
)


def error_body(status: int, message: str, request_id: str) -> bytes:
    """The JSON error document clients get from the router itself (never from a replica)."""
    return json.dumps(
        {
            "error": {"code": ERROR_CODES.get(status, "Error"), "message": message},
            "request_id": request_id,
        }
    ).encode()
