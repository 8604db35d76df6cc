"""Request identifiers: `x-request-id` (always a GUID) and the client's own id."""

from __future__ import annotations

import os
import re

_GUID = re.compile(
    rb"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_CLIENT_ID_FORBIDDEN = re.compile(rb"[^A-Za-z0-9_-]")
CLIENT_ID_MAX = 40


class RequestIds:
    """Unique GUIDs without a system call per request.

    uuid4() reads os.urandom for every id (a syscall on the hot path); a random per-process prefix
    plus a counter is as unique within the fleet and costs one string format.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        # 8-4-4 from randomness, the last two groups from the counter (version nibble set to 4).
        self._prefix = f"{r[:8]}-{r[8:12]}-4{r[12:15]}-"
        self._counter = int.from_bytes(os.urandom(6), "big") << 16

    def new(self) -> str:
        self._counter = n = (self._counter + 1) & 0xFFFF_FFFF_FFFF_FFFF
        h = f"{n:016x}"
        return f"{self._prefix}{'89ab'[n >> 62]}{h[1:4]}-{h[4:]}"


def valid_request_id(value: bytes) -> bool:
    return bool(_GUID.match(value))


def clean_client_request_id(value: bytes) -> bytes:
    """Letters, digits, '-' and '_' only, cut to 40 characters (Azure ML's rule)."""
    return _CLIENT_ID_FORBIDDEN.sub(b"", value)[:CLIENT_ID_MAX]
