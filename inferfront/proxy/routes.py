"""Which endpoint a request URL names, and the path the replica should see.

URL shapes (Azure ML's):
- `/api/v1/endpoint/{endpoint}/score` and `/api/v1/service/{endpoint}/score` -> the deployment's
  scoring route (default `/score`);
- `/api/v1/endpoint/{endpoint}/{path}` -> `/{path}` (e.g. `swagger.json`);
- `Host: {endpoint}.<anything>` with any other path -> the path as sent, `/score` mapped to the
  scoring route.
The query string is kept as sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferfront.endpoints import Endpoints, EndpointState

SCORE = b"/score"
_PREFIXES = (b"/api/v1/endpoint/", b"/api/v1/service/")


def resolve(
    endpoints: Endpoints, target: bytes, host: bytes | None
) -> tuple[EndpointState, bytes | None, bytes] | None:
    """(endpoint, path or None for the scoring route, query) or None when nothing matches.

    `target` is the request-target as sent (origin form; absolute form is reduced to its path).
    """
    if not target.startswith(b"/"):
        target = _origin_form(target)
        if target is None:
            return None
    path, sep, query = target.partition(b"?")
    query = sep + query
    by_name = endpoints.by_name
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            name, slash, rest = path[len(prefix) :].partition(b"/")
            endpoint = by_name.get(name)
            if endpoint is None or not slash or not rest:
                return None
            if rest == b"score":
                return endpoint, None, query
            return endpoint, b"/" + rest, query
    if host:
        endpoint = by_name.get(host.partition(b".")[0].lower())
        if endpoint is not None and host.find(b".") > 0:
            return endpoint, (None if path == SCORE else path), query
    return None


def _origin_form(target: bytes) -> bytes | None:
    """`http://host/path?q` -> `/path?q` (absolute form, RFC 9112 3.2.2); anything else -> None."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    slash = rest.find(b"/")
    return rest[slash:] if slash >= 0 else b"/"
