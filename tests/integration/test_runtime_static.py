"""StaticRuntime probing real model servers (started by the tests) on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from inferfront.runtime.probe_client import probe_http
from inferfront.runtime.probes import HealthTracker, ProbeSpec, ReadinessWatch
from inferfront.runtime.static import StaticRuntime
from tests.conftest import ModelServerFactory
from tests.helpers import async_wait_until, free_port
from tests.integration.test_runtime_local import RecordingEvents
from tests.integration.test_server_watches import watch_tasks

FAST_READINESS = ProbeSpec(
    path="/", initial_delay=0.0, period=0.1, timeout=2.0, success_threshold=1, failure_threshold=2
)
WAIT = 15.0
LOG = logging.getLogger("tests.runtime.static")

Build = Callable[..., tuple[StaticRuntime, RecordingEvents]]


@pytest.fixture
async def build() -> AsyncIterator[Build]:
    made: list[tuple[StaticRuntime, RecordingEvents]] = []

    def make(
        addresses: Sequence[tuple[str, int]], readiness: ProbeSpec = FAST_READINESS
    ) -> tuple[StaticRuntime, RecordingEvents]:
        events = RecordingEvents()
        runtime = StaticRuntime(
            "ext", addresses, events, readiness=readiness, log=LOG, startup_poll_s=0.05
        )
        made.append((runtime, events))
        return runtime, events

    yield make
    for runtime, events in made:
        await runtime.stop(5.0)
        assert not events.violations, events.violations


def probing_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().endswith("-readiness")]


async def test_start_marks_answering_replicas_ready_and_waits_for_the_others(
    build: Build, model_server: ModelServerFactory
) -> None:
    servers = model_server.many(["a", "b"])
    late_port = free_port()
    runtime, events = build(
        [("127.0.0.1", servers[0].port), ("127.0.0.1", servers[1].port), ("127.0.0.1", late_port)]
    )
    await runtime.start()
    # Ready as soon as start() returns: the first probes ran inside it.
    assert events.names("added") == ["ext-0", "ext-1", "ext-2"]
    assert events.ready_names() == {"ext-0", "ext-1"}
    assert events.addresses["ext-2"] == ("127.0.0.1", late_port)
    assert runtime.current == 3 and runtime.starting == 1
    states = {info.name: info.state for info in runtime.replicas()}
    assert states == {"ext-0": "ready", "ext-1": "ready", "ext-2": "starting"}
    assert all(info.pid is None for info in runtime.replicas())

    await asyncio.to_thread(model_server, "late", ["--port", str(late_port)])
    await async_wait_until(lambda: "ext-2" in events.ready_names(), WAIT)
    assert runtime.starting == 0


async def test_readiness_flip_takes_replica_out_and_back(
    build: Build, model_server: ModelServerFactory
) -> None:
    server = model_server("a")
    runtime, events = build([("127.0.0.1", server.port)])
    await runtime.start()
    assert events.ready_names() == {"ext-0"}

    await asyncio.to_thread(server.set_health, 503)
    await async_wait_until(lambda: events.ready.get("ext-0") is False, WAIT)
    assert runtime.replicas()[0].state == "unready"
    await asyncio.to_thread(server.set_health, 200)
    await async_wait_until(lambda: events.ready.get("ext-0") is True, WAIT)
    assert events.kinds_for("ext-0") == ["added", "ready", "unready", "ready"]


async def test_report_failure_takes_replica_out_until_a_probe_answers(
    build: Build, model_server: ModelServerFactory
) -> None:
    server = model_server("a")
    # Ready replicas are probed every 60 s: coming back quickly shows the start-up pace.
    runtime, events = build(
        [("127.0.0.1", server.port)], ProbeSpec(path="/", period=60.0, timeout=2.0)
    )
    await runtime.start()
    assert events.ready_names() == {"ext-0"}

    runtime.report_failure("ext-0")
    assert events.ready["ext-0"] is False
    await async_wait_until(lambda: events.ready.get("ext-0") is True, WAIT)


async def test_scale_to_is_ignored(build: Build, model_server: ModelServerFactory) -> None:
    server = model_server("a")
    runtime, events = build([("127.0.0.1", server.port)])
    await runtime.start()
    count = len(events.events)
    await runtime.scale_to(5)
    await runtime.scale_to(0)
    assert runtime.current == 1 and len(events.events) == count


async def test_stop_drains_then_removes_and_stops_probing(
    build: Build, model_server: ModelServerFactory
) -> None:
    servers = model_server.many(["a", "b"])
    runtime, events = build([("127.0.0.1", s.port) for s in servers])
    await runtime.start()
    assert len(probing_tasks()) == 2
    events.inflight["ext-1"] = 1

    stopping = asyncio.create_task(runtime.stop(30.0))
    await async_wait_until(lambda: events.draining == {"ext-0", "ext-1"}, WAIT)
    assert not stopping.done() and events.gone == set()  # waits for ext-1's request
    assert runtime.current == 0

    events.inflight["ext-1"] = 0
    await asyncio.wait_for(stopping, WAIT)
    assert events.gone == {"ext-0", "ext-1"}
    assert probing_tasks() == []
    assert all(s.is_alive() for s in servers)  # not ours to stop

    count = len(events.events)
    await runtime.stop(1.0)
    assert len(events.events) == count


async def serve_raw(answer: bytes | None) -> asyncio.Server:
    """A loopback server that reads a request head and writes `answer` (None: never answers)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if answer is None:
                await reader.read()  # hold the connection until the client gives up
            else:
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nHealthy", True),
        (b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n", True),
        (b"HTTP/1.1 399 Custom\r\n\r\n", True),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False),
        (b"garbage\r\n\r\n", False),
        (b"", False),
    ],
)
async def test_probe_http_status_classes(answer: bytes, expected: bool) -> None:
    server = await serve_raw(answer)
    async with server:
        port = server.sockets[0].getsockname()[1]
        assert await probe_http("127.0.0.1", port, "/health?x=1", 2.0) is expected


async def test_probe_http_fails_on_silence_and_on_a_closed_port() -> None:
    server = await serve_raw(None)
    async with server:
        port = server.sockets[0].getsockname()[1]
        assert await probe_http("127.0.0.1", port, "/", 0.2) is False
    assert await probe_http("127.0.0.1", free_port(), "/", 2.0) is False


def test_health_tracker_counts_consecutive_results() -> None:
    tracker = HealthTracker(ProbeSpec(success_threshold=2, failure_threshold=3), healthy=False)
    assert [tracker.observe(ok) for ok in (True, False, True, True)] == [None, None, None, True]
    assert [tracker.observe(ok) for ok in (False, False, True, False, False)] == [None] * 5
    assert tracker.observe(False) is False and not tracker.healthy
    tracker.force(True)
    assert tracker.observe(False) is None  # forcing starts the count over


def test_the_ready_pace_starts_at_a_random_point_of_its_period() -> None:
    # Replicas that turn ready together must not be probed in the same instant every period.
    watch = ReadinessWatch("127.0.0.1", 9, ProbeSpec(period=10.0), 0.1, on_change=print)
    firsts = []
    for _ in range(20):
        assert watch._interval() == 0.1  # not ready: the start-up pace
        watch.tracker.force(True)
        firsts.append(watch._interval())
        assert watch._interval() == 10.0  # then the period itself
        watch.tracker.force(False)  # out again: the next ready spell picks a new point
    assert all(0.5 <= first <= 10.0 for first in firsts), firsts
    assert len(set(firsts)) > 1, firsts


def test_probe_spec_defaults_and_validation() -> None:
    spec = ProbeSpec()
    assert (spec.path, spec.initial_delay, spec.period, spec.timeout) == ("/", 10.0, 10.0, 2.0)
    assert (spec.success_threshold, spec.failure_threshold) == (1, 30)
    for bad in ({"path": "health"}, {"period": 0}, {"failure_threshold": 0}, {"timeout": -1}):
        with pytest.raises(ValueError):
            ProbeSpec(**bad)


async def test_deployments_listing_one_server_share_its_watch_and_its_failures(
    build: Build, model_server: ModelServerFactory
) -> None:
    server = model_server("a")
    spec = ProbeSpec(path="/", period=60.0, timeout=2.0)  # the start-up pace brings it back
    (first, first_events), (second, second_events) = (
        build([("127.0.0.1", server.port)], spec) for _ in range(2)
    )
    await first.start()
    await second.start()
    assert first_events.ready_names() == second_events.ready_names() == {"ext-0"}
    await async_wait_until(lambda: len(watch_tasks()) == 1, WAIT)  # one watch for both

    first.report_failure("ext-0")  # the proxy could not connect for the first deployment
    assert first_events.ready["ext-0"] is False and second_events.ready["ext-0"] is False
    assert second.replicas()[0].state == "unready"
    await async_wait_until(lambda: second_events.ready.get("ext-0") is True, WAIT)
    await async_wait_until(lambda: first_events.ready.get("ext-0") is True, WAIT)
