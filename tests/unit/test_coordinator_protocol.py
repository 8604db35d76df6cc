"""The coordinator wire protocol: every frame survives encode -> split anywhere -> decode, and a
frame header with an impossible length is refused rather than buffered for ever."""

from __future__ import annotations

import json
import struct

import pytest

from inferfront.coordinator import protocol as p

TICKETS = (0, 1, 0x7FFFFFFF, 0xFFFFFFFF)
DEPLOYMENTS = (0, 1, 0xFFFF)
REPLICA_NAMES = (b"", b"r", b"blue-0", "réplica-ü".encode(), b"x" * 255)


def collect(chunks: list[bytes]) -> list[tuple[int, bytes]]:
    frames: list[tuple[int, bytes]] = []
    reader = p.FrameReader(lambda kind, payload: frames.append((kind, payload)))
    for piece in chunks:
        reader.feed(piece)
    return frames


def decode_one(data: bytes) -> tuple[int, bytes]:
    frames = collect([data])
    assert len(frames) == 1
    return frames[0]


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("ticket", TICKETS)
@pytest.mark.parametrize("dep", DEPLOYMENTS)
def test_acquire_and_cancel_round_trip(ticket: int, dep: int) -> None:
    for encode, kind in ((p.acquire, p.ACQUIRE), (p.cancel, p.CANCEL)):
        got_kind, payload = decode_one(encode(ticket, dep))
        assert got_kind == kind
        assert p.unpack_ticket_dep(payload) == (ticket, dep)


@pytest.mark.parametrize("ticket", TICKETS)
@pytest.mark.parametrize("dep", DEPLOYMENTS)
def test_a_retry_acquire_round_trips_as_its_own_kind(ticket: int, dep: int) -> None:
    kind, payload = decode_one(p.acquire(ticket, dep, front=True))
    assert kind == p.ACQUIRE_FRONT
    assert p.unpack_ticket_dep(payload) == (ticket, dep)
    kind, payload = decode_one(p.acquire(ticket, dep, front=False))
    assert kind == p.ACQUIRE
    assert p.unpack_ticket_dep(payload) == (ticket, dep)


def test_acquire_frames_keep_their_size() -> None:
    # Every request sends one: the retry flag must not make the common frame any larger.
    assert len(p.acquire(1, 2)) == len(p.acquire(1, 2, front=True)) == 11


@pytest.mark.parametrize("request_id", TICKETS)
@pytest.mark.parametrize("dep", DEPLOYMENTS)
def test_state_request_round_trip(request_id: int, dep: int) -> None:
    kind, payload = decode_one(p.state(request_id, dep))
    assert kind == p.STATE
    assert p.unpack_state(payload) == (request_id, dep)


@pytest.mark.parametrize(
    "document",
    [
        None,
        {},
        {"name": "blue", "inflight": 3, "queue_length": 0, "scaling": None},
        {"replicas": [{"name": "réplica-ü", "address": None, "inflight": 0}], "x": 1.5},
    ],
)
@pytest.mark.parametrize("request_id", (0, 0xFFFFFFFF))
def test_state_reply_round_trip(request_id: int, document: dict | None) -> None:
    kind, payload = decode_one(p.state_reply(request_id, document))
    assert kind == p.STATE_REPLY
    assert p.unpack_state_reply(payload) == (request_id, document)


@pytest.mark.parametrize("name", REPLICA_NAMES)
@pytest.mark.parametrize("dep", DEPLOYMENTS)
def test_release_round_trip(dep: int, name: bytes) -> None:
    kind, payload = decode_one(p.release(dep, name))
    assert kind == p.RELEASE
    assert p.unpack_release(payload) == (dep, name)


@pytest.mark.parametrize("refused", (True, False))
@pytest.mark.parametrize("name", REPLICA_NAMES)
@pytest.mark.parametrize("dep", DEPLOYMENTS)
def test_failed_round_trip(dep: int, name: bytes, refused: bool) -> None:
    kind, payload = decode_one(p.failed(dep, name, refused))
    assert kind == p.FAILED
    assert p.unpack_failed(payload) == (dep, name, refused)


@pytest.mark.parametrize("name", REPLICA_NAMES)
@pytest.mark.parametrize("ticket", TICKETS)
def test_grant_round_trip(ticket: int, name: bytes) -> None:
    kind, payload = decode_one(p.grant(ticket, name))
    assert kind == p.GRANT
    assert p.unpack_grant(payload) == (ticket, name)


@pytest.mark.parametrize("status", (429, 503, 0, 0xFFFF))
@pytest.mark.parametrize("ticket", TICKETS)
def test_reject_round_trip(ticket: int, status: int) -> None:
    kind, payload = decode_one(p.reject(ticket, status))
    assert kind == p.REJECT
    assert p.unpack_reject(payload) == (ticket, status)


def test_frame_kinds_are_distinct() -> None:
    kinds = [
        p.HELLO, p.ACQUIRE, p.CANCEL, p.RELEASE, p.GRANT, p.REJECT, p.FAILED,
        p.ACQUIRE_FRONT, p.STATE, p.STATE_REPLY,
    ]  # fmt: skip
    assert len(set(kinds)) == len(kinds)
    assert all(0 < kind < 256 for kind in kinds)


def test_hello_round_trip() -> None:
    leases = [(0, "blue-0", 2), (3, "réplica-ü", 1)]
    kind, payload = decode_one(p.hello("fe-1", "abc123", [0, 3], leases))
    assert kind == p.HELLO
    assert json.loads(payload) == {
        "instance": "fe-1",
        "config": "abc123",
        "deployments": [0, 3],
        "leases": [list(lease) for lease in leases],
    }


def test_hello_without_leases() -> None:
    kind, payload = decode_one(p.hello("fe-2", "h", [], []))
    assert kind == p.HELLO
    assert json.loads(payload)["leases"] == []


def test_replica_name_longer_than_its_length_byte_is_refused_when_encoding() -> None:
    # Names are config names (3-32 characters) plus an index, far below 255; the u8 length
    # must never silently wrap.
    with pytest.raises(struct.error):
        p.release(0, b"x" * 256)
    with pytest.raises(struct.error):
        p.grant(0, b"x" * 256)


# -- splitting --------------------------------------------------------------------------------


def sample_stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    """One of every frame kind, back to back, and what decoding them must give."""
    frames = [
        p.hello("fe-0", "cafe", [0, 1], [(0, "blue-0", 1)]),
        p.acquire(7, 0),
        p.cancel(7, 0),
        p.release(1, b"green-1"),
        p.grant(0xFFFFFFFF, b"blue-0"),
        p.reject(9, 429),
        p.grant(10, b""),
        p.acquire(0, 0xFFFF),
        p.acquire(11, 1, front=True),
        p.state(3, 1),
        p.state_reply(3, {"inflight": 2, "replicas": []}),
        p.state_reply(4, None),
    ]
    expected = [decode_one(frame) for frame in frames]
    return b"".join(frames), expected


def test_a_stream_of_frames_decodes_in_order() -> None:
    stream, expected = sample_stream()
    assert collect([stream]) == expected
    assert [kind for kind, _ in expected] == [
        p.HELLO, p.ACQUIRE, p.CANCEL, p.RELEASE, p.GRANT, p.REJECT, p.GRANT, p.ACQUIRE,
        p.ACQUIRE_FRONT, p.STATE, p.STATE_REPLY, p.STATE_REPLY,
    ]  # fmt: skip


def test_split_at_every_byte_boundary() -> None:
    stream, expected = sample_stream()
    for cut in range(len(stream) + 1):
        assert collect([stream[:cut], stream[cut:]]) == expected, f"cut at {cut}"


def test_split_at_every_pair_of_boundaries() -> None:
    stream, expected = sample_stream()
    size = len(stream)
    for first in range(0, size + 1, 3):
        for second in range(first, size + 1, 5):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert collect(chunks) == expected, f"cuts at {first}, {second}"


def test_one_byte_at_a_time() -> None:
    stream, expected = sample_stream()
    assert collect([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_incomplete_frame_waits_for_the_rest() -> None:
    frames: list[tuple[int, bytes]] = []
    reader = p.FrameReader(lambda kind, payload: frames.append((kind, payload)))
    data = p.grant(5, b"blue-0")
    reader.feed(data[:-1])
    assert frames == []
    reader.feed(data[-1:])
    assert frames == [(p.GRANT, data[5:])]


def test_empty_feed_is_harmless() -> None:
    stream, expected = sample_stream()
    assert collect([b"", stream[:4], b"", stream[4:], b""]) == expected


def test_payloads_stay_valid_after_later_feeds() -> None:
    # Handlers may keep a payload: later feeds must not change it (no shared buffer reuse).
    stream, expected = sample_stream()
    kept: list[bytes] = []
    reader = p.FrameReader(lambda kind, payload: kept.append(payload))
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
    assert kept == [payload for _, payload in expected]


# -- bad lengths ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", (0, p.MAX_FRAME + 1, 0xFFFFFFFF))
def test_bad_length_raises(length: int) -> None:
    reader = p.FrameReader(lambda kind, payload: None)
    with pytest.raises(p.ProtocolError):
        reader.feed(struct.pack("!IB", length, p.GRANT))


@pytest.mark.parametrize("length", (0, p.MAX_FRAME + 1))
def test_bad_length_split_header_raises_once_complete(length: int) -> None:
    header = struct.pack("!IB", length, p.ACQUIRE)
    reader = p.FrameReader(lambda kind, payload: None)
    reader.feed(header[:3])  # not yet a whole header: nothing to judge
    with pytest.raises(p.ProtocolError):
        reader.feed(header[3:])


def test_bad_length_after_good_frames_delivers_the_good_ones_first() -> None:
    frames: list[tuple[int, bytes]] = []
    reader = p.FrameReader(lambda kind, payload: frames.append((kind, payload)))
    good = p.acquire(1, 0)
    with pytest.raises(p.ProtocolError):
        reader.feed(good + struct.pack("!IB", 0, p.ACQUIRE))
    assert frames == [(p.ACQUIRE, good[5:])]


def test_largest_allowed_length_is_accepted_and_buffered() -> None:
    frames: list[tuple[int, bytes]] = []
    reader = p.FrameReader(lambda kind, payload: frames.append((kind, payload)))
    reader.feed(struct.pack("!IB", p.MAX_FRAME, p.HELLO) + b"{")
    assert frames == []  # waiting for the rest, not an error
