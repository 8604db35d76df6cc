"""The JSON-lines access log: exact fields, correct escaping, buffering and flushing."""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import pytest

from inferfront.telemetry.accesslog import FIELDS, AccessLog, quote

# 2023-11-14T22:13:20.123456Z
FIXED_TIME = 1_700_000_000.123456


class RecordingStream(io.StringIO):
    """A text stream that remembers each write() and can announce it through an event."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0
        self.written: asyncio.Event | None = None

    def write(self, text: str) -> int:
        self.writes.append(text)
        if self.written is not None:
            self.written.set()
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("reader went away")


def request(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": "4b1e7c1a-5f0e-4a53-9a7e-0d2f3c4b5a69",
        "endpoint": "iris",
        "deployment": "blue",
        "replica": "blue-0",
        "status": 200,
        "total_ms": 2.5,
        "queue_ms": 0.125,
        "upstream_ms": 2.25,
        "method": "POST",
        "path": "/api/v1/endpoint/iris/score",
        "client": "127.0.0.1:50432",
        "bytes_in": 20,
        "bytes_out": 17,
    }
    fields.update(overrides)
    return fields


def lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert text.endswith("\n") or not text
    return text.splitlines()


def parse(line: str) -> list[tuple[str, Any]]:
    """The line's keys and values in order (json.loads into a dict would hide reordering)."""
    return json.loads(line, object_pairs_hook=list)


def test_one_json_object_per_line_with_exactly_the_fields_in_order() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, now=lambda: FIXED_TIME)
    log.log(**request(), instance="fe-0", decided_by="coordinator")
    log.log(**request(status=429, replica=None, upstream_ms=0.0))
    log.flush()
    first, second = (parse(line) for line in lines(stream))
    assert [key for key, _ in first] == list(FIELDS)
    assert [key for key, _ in second] == list(FIELDS)
    assert dict(first) == {
        "time": "2023-11-14T22:13:20.123Z",
        "instance": "fe-0",
        "request_id": "4b1e7c1a-5f0e-4a53-9a7e-0d2f3c4b5a69",
        "method": "POST",
        "path": "/api/v1/endpoint/iris/score",
        "endpoint": "iris",
        "deployment": "blue",
        "replica": "blue-0",
        "decided_by": "coordinator",
        "status": 200,
        "total_ms": 2.5,
        "queue_ms": 0.125,
        "upstream_ms": 2.25,
        "bytes_in": 20,
        "bytes_out": 17,
        "client": "127.0.0.1:50432",
    }
    second_fields = dict(second)
    assert second_fields["status"] == 429
    assert second_fields["replica"] is None
    assert second_fields["instance"] is None
    assert second_fields["decided_by"] is None


def test_time_is_utc_iso8601_with_milliseconds() -> None:
    times = iter([0.0, 0.9999, 946_684_800.0421, 1_700_000_059.5])
    stream = io.StringIO()
    log = AccessLog(stream, now=lambda: next(times))
    for _ in range(4):
        log.log(**request())
    log.flush()
    stamps = [dict(parse(line))["time"] for line in lines(stream)]
    assert stamps == [
        "1970-01-01T00:00:00.000Z",
        "1970-01-01T00:00:00.999Z",
        "2000-01-01T00:00:00.042Z",
        "2023-11-14T22:14:19.500Z",
    ]
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)


def test_default_clock_is_now() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    log.log(**request())
    log.flush()
    stamp = dict(parse(lines(stream)[0]))["time"]
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)


def test_durations_have_microsecond_precision() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, now=lambda: FIXED_TIME)
    log.log(**request(total_ms=1.23456, queue_ms=0, upstream_ms=12345.6789))
    log.flush()
    fields = dict(parse(lines(stream)[0]))
    assert fields["total_ms"] == 1.235
    assert fields["queue_ms"] == 0
    assert fields["upstream_ms"] == 12345.679


@pytest.mark.parametrize(
    "path",
    [
        '/score?q="quoted"',
        "/back\\slash",
        "/new\nline\r\n{}",
        "/tab\there",
        "/nul\x00\x1f\x7f",
        "/caf\u00e9/\u6a21\u578b/\U0001f600",
        "/lone\udc80surrogate",
        '","status":999,"x":"',  # an injection attempt stays inside the path value
    ],
)
def test_string_fields_are_escaped(path: str) -> None:
    stream = io.StringIO()
    log = AccessLog(stream, now=lambda: FIXED_TIME)
    log.log(**request(path=path, request_id=f"id-{path}", client=path))
    log.flush()
    (line,) = lines(stream)  # no raw newline leaked: still one line
    assert line.isascii()
    fields = parse(line)
    assert [key for key, _ in fields] == list(FIELDS)
    values = dict(fields)
    assert values["path"] == path
    assert values["request_id"] == f"id-{path}"
    assert values["client"] == path
    assert values["status"] == 200


@pytest.mark.parametrize(
    "value", [None, "", "plain", 'q"', "b\\", "\n", "\u00e9", "\x7f", " spaced out "]
)
def test_quote_matches_json(value: str | None) -> None:
    assert json.loads(quote(value)) == value


def test_nothing_is_written_before_a_flush() -> None:
    stream = RecordingStream()
    log = AccessLog(stream, now=lambda: FIXED_TIME)
    for status in (200, 201, 202):
        log.log(**request(status=status))
    assert stream.writes == []
    log.flush()
    assert len(stream.writes) == 1  # one write for the whole batch
    assert [dict(parse(line))["status"] for line in lines(stream)] == [200, 201, 202]
    assert stream.flushes == 1
    log.flush()  # nothing buffered: no empty write
    assert len(stream.writes) == 1


def test_flushes_by_itself_once_64_kib_are_buffered() -> None:
    stream = RecordingStream()
    log = AccessLog(stream, now=lambda: FIXED_TIME)
    probe = io.StringIO()
    sized = AccessLog(probe, now=lambda: FIXED_TIME)
    sized.log(**request())
    sized.flush()
    line_length = len(probe.getvalue())
    lines_to_fill = -(-64 * 1024 // line_length)  # ceiling division

    for _ in range(lines_to_fill - 1):
        log.log(**request())
    assert stream.writes == []
    log.log(**request())  # this line reaches 64 KiB
    assert len(stream.writes) == 1
    assert len(stream.writes[0]) == lines_to_fill * line_length
    assert len(stream.writes[0]) >= 64 * 1024
    log.log(**request())
    assert len(stream.writes) == 1  # the buffer started over


def test_disabled_or_streamless_log_writes_nothing() -> None:
    stream = RecordingStream()
    disabled = AccessLog(stream, enabled=False)
    disabled.log(**request())
    disabled.flush()
    disabled.close()
    assert stream.writes == []
    streamless = AccessLog(None)
    streamless.log(**request())
    streamless.flush()
    streamless.close()
    assert not streamless.enabled


def test_failing_stream_drops_lines_without_raising() -> None:
    log = AccessLog(BrokenStream(), now=lambda: FIXED_TIME)
    log.log(**request())
    log.log(**request())
    log.flush()
    assert log.dropped == 2
    log.log(**request())
    log.close()
    assert log.dropped == 3


def test_close_writes_what_is_left_and_stops_logging() -> None:
    stream = RecordingStream()
    log = AccessLog(stream, now=lambda: FIXED_TIME)
    log.log(**request())
    log.close()
    assert len(lines(stream)) == 1
    log.log(**request())
    log.flush()
    assert len(lines(stream)) == 1
    assert not stream.closed  # the stream belongs to the caller


async def test_start_flushes_periodically_on_the_loop() -> None:
    stream = RecordingStream()
    stream.written = asyncio.Event()
    log = AccessLog(stream, now=lambda: FIXED_TIME, flush_interval=0.01)
    log.start(asyncio.get_running_loop())
    try:
        log.log(**request(status=201))
        await asyncio.wait_for(stream.written.wait(), timeout=10)
        assert [dict(parse(line))["status"] for line in lines(stream)] == [201]

        stream.written.clear()
        log.log(**request(status=202))  # the timer keeps running after a flush
        await asyncio.wait_for(stream.written.wait(), timeout=10)
        assert [dict(parse(line))["status"] for line in lines(stream)] == [201, 202]
    finally:
        log.close()
