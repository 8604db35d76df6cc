"""The replica-event channel between the supervisor and its front-end workers.

JSON lines over a unix-domain stream socket, `<state_dir>/supervisor.sock` (replica events are
rare: this is not on the request path, so readability wins over compactness).

Supervisor -> worker
  {"type": "snapshot", "deployments": {"<endpoint>/<deployment>": [
      {"name", "host", "port", "ready": bool, "draining": bool}, ...]}}   first, on connect
  {"type": "added", "deployment", "name", "host", "port"}
  {"type": "ready", "deployment", "name", "ready": bool}
  {"type": "draining", "deployment", "name"}
  {"type": "removed", "deployment", "name"}
  {"type": "scaled", "deployment", "count", "seq"}      answers a scale_to that carried "seq"

Worker -> supervisor
  {"type": "report_failure", "deployment", "name"}
  {"type": "scale_to", "deployment", "count", "seq"?}    the latest one per deployment wins
  {"type": "inflight", "deployment", "name", "count"}    this worker's requests on a replica

Every deployment in the configuration is in the snapshot (an empty list when it has no
replica), so a worker can tell "no replicas" from "unknown deployment".
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SOCKET_NAME = "supervisor.sock"
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH_BYTES = 107
# A snapshot of many replicas is one line; worker -> supervisor lines are small.
SNAPSHOT_LINE_LIMIT = 16 * 1024 * 1024
REQUEST_LINE_LIMIT = 64 * 1024

Message = dict[str, Any]


class ChannelError(Exception):
    """A line that is not a protocol message."""


@dataclass
class ReplicaRecord:
    """One replica as both sides of the channel see it."""

    name: str
    host: str
    port: int
    ready: bool = False
    draining: bool = False

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, doc: Any) -> ReplicaRecord:
        try:
            return cls(
                name=str(doc["name"]),
                host=str(doc["host"]),
                port=int(doc["port"]),
                ready=bool(doc.get("ready", False)),
                draining=bool(doc.get("draining", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChannelError(f"bad replica record {doc!r}") from exc


def deployment_key(endpoint: str, deployment: str) -> str:
    """How the channel names a deployment: "<endpoint>/<deployment>"."""
    return f"{endpoint}/{deployment}"


def socket_path(state_dir: Path | str) -> Path:
    """Where the supervisor listens; ValueError if the path is too long for a unix socket."""
    path = Path(state_dir) / SOCKET_NAME
    if len(str(path).encode()) > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"state directory {state_dir} is too long for a unix socket path "
            f"({MAX_SOCKET_PATH_BYTES} bytes at most for {path}); choose a shorter one"
        )
    return path


# --- encoding -----------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ChannelError(f"not JSON: {line[:200]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ChannelError(f"not a message: {line[:200]!r}")
    return message


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at end of stream. ChannelError for a malformed line;
    ValueError (from the reader) for a line over its limit."""
    line = await reader.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        return None  # the peer went away mid-line
    return decode(line)


# --- supervisor -> worker -----------------------------------------------------------------


def snapshot(deployments: dict[str, list[ReplicaRecord]]) -> Message:
    return {
        "type": "snapshot",
        "deployments": {
            key: [r.to_wire() for r in records] for key, records in deployments.items()
        },
    }


def added(key: str, name: str, host: str, port: int) -> Message:
    return {"type": "added", "deployment": key, "name": name, "host": host, "port": port}


def ready(key: str, name: str, is_ready: bool) -> Message:
    return {"type": "ready", "deployment": key, "name": name, "ready": is_ready}


def draining(key: str, name: str) -> Message:
    return {"type": "draining", "deployment": key, "name": name}


def removed(key: str, name: str) -> Message:
    return {"type": "removed", "deployment": key, "name": name}


def scaled(key: str, count: int, seq: int) -> Message:
    return {"type": "scaled", "deployment": key, "count": count, "seq": seq}


# --- worker -> supervisor -----------------------------------------------------------------


def report_failure(key: str, name: str) -> Message:
    return {"type": "report_failure", "deployment": key, "name": name}


def scale_to(key: str, count: int, seq: int | None = None) -> Message:
    message: Message = {"type": "scale_to", "deployment": key, "count": count}
    if seq is not None:
        message["seq"] = seq
    return message


def inflight(key: str, name: str, count: int) -> Message:
    return {"type": "inflight", "deployment": key, "name": name, "count": count}
