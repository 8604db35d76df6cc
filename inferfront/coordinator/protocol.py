"""The coordinator wire protocol: compact binary frames over one persistent, pipelined TCP
connection between a front-end instance and the coordinator of some deployments.

A round trip per request is affordable only this way (measured about 10 percent of throughput;
a connection or JSON document per request would cost far more), so frames are fixed `struct`
layouts, and a front-end writes whatever it has in one `transport.write` per loop turn.

Frame: u32 length of what follows, u8 kind, payload.

  front-end -> coordinator
    HELLO          json: {"instance", "config", "deployments": [ids],
                          "leases": [[dep, replica, n], ...]}
    ACQUIRE        u32 ticket, u16 deployment
    ACQUIRE_FRONT  u32 ticket, u16 deployment   (a retry: may jump the queue, waits at its front)
    CANCEL         u32 ticket, u16 deployment
    RELEASE        u16 deployment, u8 n, replica name
    FAILED         u16 deployment, u8 n, replica name, u8 refused   (could not connect to it)
    STATE          u32 request, u16 deployment  (admin: the coordinator's view of a deployment)
  coordinator -> front-end
    GRANT          u32 ticket, u8 n, replica name
    REJECT         u32 ticket, u16 status  (429: the queue is full; 503: not the coordinator)
    STATE_REPLY    u32 request, json: the deployment's admin document, or null if not coordinating

A retry is a kind of its own rather than a flag on ACQUIRE: retries are rare, so the frame every
request sends stays as small as it was. STATE is for the admin view only (never on a request's
path), hence JSON.

Deployments are numbered by their position in the sorted list of "endpoint/deployment" keys,
which every instance derives from the same configuration (HELLO carries a hash to check).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

HELLO, ACQUIRE, CANCEL, RELEASE, GRANT, REJECT, FAILED = range(1, 8)
ACQUIRE_FRONT, STATE, STATE_REPLY = range(8, 11)

_HEAD = struct.Struct("!IB")
_TICKET_DEP = struct.Struct("!IH")
_DEP_NAME = struct.Struct("!HB")
_TICKET_NAME = struct.Struct("!IB")
_TICKET_STATUS = struct.Struct("!IH")
_REQUEST = struct.Struct("!I")
MAX_FRAME = 1 << 24


class ProtocolError(Exception):
    pass


def frame(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(len(payload) + 1, kind) + payload


def hello(
    instance: str, config_hash: str, deployments: list[int], leases: list[tuple[int, str, int]]
) -> bytes:
    """This front-end now asks this coordinator for `deployments`; these are its slots there."""
    doc = {
        "instance": instance,
        "config": config_hash,
        "deployments": deployments,
        "leases": leases,
    }
    return frame(HELLO, json.dumps(doc).encode())


def acquire(ticket: int, deployment: int, front: bool = False) -> bytes:
    """Ask for a slot; `front` for a retry, which already waited its turn once."""
    return _HEAD.pack(7, ACQUIRE_FRONT if front else ACQUIRE) + _TICKET_DEP.pack(ticket, deployment)


def cancel(ticket: int, deployment: int) -> bytes:
    return _HEAD.pack(7, CANCEL) + _TICKET_DEP.pack(ticket, deployment)


def release(deployment: int, replica: bytes) -> bytes:
    return (
        _HEAD.pack(4 + len(replica), RELEASE) + _DEP_NAME.pack(deployment, len(replica)) + replica
    )


def failed(deployment: int, replica: bytes, refused: bool) -> bytes:
    return (
        _HEAD.pack(5 + len(replica), FAILED)
        + _DEP_NAME.pack(deployment, len(replica))
        + replica
        + (b"\x01" if refused else b"\x00")
    )


def unpack_failed(payload: bytes) -> tuple[int, bytes, bool]:
    deployment, n = _DEP_NAME.unpack_from(payload)
    return deployment, payload[3 : 3 + n], payload[3 + n : 4 + n] == b"\x01"


def grant(ticket: int, replica: bytes) -> bytes:
    return _HEAD.pack(6 + len(replica), GRANT) + _TICKET_NAME.pack(ticket, len(replica)) + replica


def reject(ticket: int, status: int) -> bytes:
    return _HEAD.pack(7, REJECT) + _TICKET_STATUS.pack(ticket, status)


def unpack_ticket_dep(payload: bytes) -> tuple[int, int]:
    return _TICKET_DEP.unpack(payload)


def state(request: int, deployment: int) -> bytes:
    return _HEAD.pack(7, STATE) + _TICKET_DEP.pack(request, deployment)


def unpack_state(payload: bytes) -> tuple[int, int]:
    return _TICKET_DEP.unpack(payload)


def state_reply(request: int, document: dict | None) -> bytes:
    body = json.dumps(document, separators=(",", ":"), default=str).encode()
    return _HEAD.pack(5 + len(body), STATE_REPLY) + _REQUEST.pack(request) + body


def unpack_state_reply(payload: bytes) -> tuple[int, dict | None]:
    (request,) = _REQUEST.unpack_from(payload)
    return request, json.loads(payload[_REQUEST.size :])


def unpack_release(payload: bytes) -> tuple[int, bytes]:
    deployment, n = _DEP_NAME.unpack_from(payload)
    return deployment, payload[3 : 3 + n]


def unpack_grant(payload: bytes) -> tuple[int, bytes]:
    ticket, n = _TICKET_NAME.unpack_from(payload)
    return ticket, payload[5 : 5 + n]


def unpack_reject(payload: bytes) -> tuple[int, int]:
    return _TICKET_STATUS.unpack(payload)


class FrameReader:
    """Splits a byte stream into (kind, payload) frames and hands each to `on_frame`."""

    __slots__ = ("_buffer", "_on_frame")

    def __init__(self, on_frame: Callable[[int, bytes], None]) -> None:
        self._buffer = b""
        self._on_frame = on_frame

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset = 0
        end = len(buffer)
        head_size = _HEAD.size
        on_frame = self._on_frame
        while end - offset >= head_size:
            length, kind = _HEAD.unpack_from(buffer, offset)
            if length < 1 or length > MAX_FRAME:
                raise ProtocolError(f"bad frame length {length}")
            stop = offset + 4 + length
            if stop > end:
                break
            on_frame(kind, buffer[offset + head_size : stop])
            offset = stop
        self._buffer = buffer[offset:] if offset < end else b""
