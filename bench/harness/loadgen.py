"""Load generators: wrk for closed-loop throughput; h2load for latency at a fixed, evenly paced
rate; hey for the same rate sent in synchronized bursts; and an asyncio client that holds
thousands of idle keep-alive connections open."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import math
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.harness.procs import HarnessError
from bench.harness.servers import BENCH_DIR, REQUEST_BODY, find_executable

WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
_WRK_SUMMARY_MARK = "BENCHJSON "
T = TypeVar("T")


@dataclass(frozen=True)
class ClosedLoopResult:
    """What wrk measured: throughput with a fixed number of connections, each sending its next
    request as soon as the previous answer arrives."""

    requests_per_s: float
    requests: int
    duration_s: float
    errors: int  # socket errors plus non-2xx/3xx answers
    error_detail: dict[str, int]
    latency_mean_ms: float
    latency_p99_ms: float  # of several runs combined: the worst run's
    runs: int = 1


def combine_closed_loop(parts: Sequence[ClosedLoopResult]) -> ClosedLoopResult:
    """Several wrk runs of one target as if they were one (requests over total time)."""
    requests = sum(part.requests for part in parts)
    duration_s = sum(part.duration_s for part in parts)
    detail: dict[str, int] = {}
    for part in parts:
        for kind, count in part.error_detail.items():
            detail[kind] = detail.get(kind, 0) + count
    weighted_latency = sum(part.latency_mean_ms * part.requests for part in parts)
    return ClosedLoopResult(
        requests_per_s=requests / duration_s,
        requests=requests,
        duration_s=duration_s,
        errors=sum(detail.values()),
        error_detail=detail,
        latency_mean_ms=weighted_latency / requests if requests else 0.0,
        latency_p99_ms=max(part.latency_p99_ms for part in parts),
        runs=sum(part.runs for part in parts),
    )


@dataclass(frozen=True)
class OpenLoopSample:
    """One hey run: every answered request's latency."""

    target_rate: float
    duration_s: float
    latencies_ms: list[float]
    non_2xx: int


@dataclass(frozen=True)
class OpenLoopResult:
    """What hey measured: latency as seen by clients that send at a fixed rate."""

    target_rate: float
    achieved_rate: float
    responses: int
    non_2xx: int
    average_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    runs: int


def summarize_open_loop(samples: Sequence[OpenLoopSample]) -> OpenLoopResult:
    """Latency statistics over all requests of one or more hey runs of one target."""
    latencies_ms = sorted(value for sample in samples for value in sample.latencies_ms)
    duration_s = sum(sample.duration_s for sample in samples)
    return OpenLoopResult(
        target_rate=samples[0].target_rate,
        achieved_rate=len(latencies_ms) / duration_s,
        responses=len(latencies_ms),
        non_2xx=sum(sample.non_2xx for sample in samples),
        average_ms=sum(latencies_ms) / len(latencies_ms),
        p50_ms=_percentile(latencies_ms, 0.50),
        p99_ms=_percentile(latencies_ms, 0.99),
        max_ms=latencies_ms[-1],
        runs=len(samples),
    )


def run_wrk(
    port: int,
    paths: Sequence[str],
    duration_s: int,
    workdir: Path,
    connections: int = 32,
    threads: int = 1,
) -> ClosedLoopResult:
    """`wrk -t1 -c32 -dNs` POSTing the 20-byte body, cycling round robin over `paths`."""
    paths_file = workdir / f"wrk-paths-{len(paths)}.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    argv = [find_executable("wrk"), f"-t{threads}", f"-c{connections}", f"-d{duration_s}s"]
    argv += ["-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}", "--", str(paths_file)]
    output = _run(argv, timeout_s=duration_s + 60)
    return _parse_wrk(output)


def _parse_wrk(output: str) -> ClosedLoopResult:
    for line in output.splitlines():
        if line.startswith(_WRK_SUMMARY_MARK):
            summary = json.loads(line[len(_WRK_SUMMARY_MARK) :])
            break
    else:
        raise HarnessError(f"wrk printed no summary:\n{output[-2000:]}")
    detail = {key[len("errors_") :]: value for key, value in summary.items() if "errors_" in key}
    duration_s = summary["duration_us"] / 1e6
    return ClosedLoopResult(
        requests_per_s=summary["requests"] / duration_s,
        requests=summary["requests"],
        duration_s=duration_s,
        errors=sum(detail.values()),
        error_detail=detail,
        latency_mean_ms=summary["latency_mean_us"] / 1000,
        latency_p99_ms=summary["latency_p99_us"] / 1000,
    )


def run_hey(
    port: int, path: str, duration_s: int, workers: int = 50, rate_per_worker: int = 100
) -> OpenLoopSample:
    """`hey -z Ns -c 50 -q 100` (50 workers x 100 requests/s each) POSTing the 20-byte body.

    hey paces each worker with its own ticker and starts them all together, so the 50 requests of
    each 10 ms leave within microseconds of each other: a burst test, not an evenly paced rate.
    """
    argv = [find_executable("hey"), "-z", f"{duration_s}s", "-c", str(workers)]
    argv += ["-q", str(rate_per_worker), "-m", "POST", "-d", REQUEST_BODY.decode()]
    argv += ["-T", "application/json", "-o", "csv", f"http://127.0.0.1:{port}{path}"]
    output = _run(argv, timeout_s=duration_s + 60)
    return _parse_hey_csv(output, duration_s, workers * rate_per_worker)


def run_h2load_paced(
    port: int,
    paths: Sequence[str],
    duration_s: int,
    workdir: Path,
    clients: int = 50,
    rate_per_client: int = 100,
) -> OpenLoopSample:
    """`h2load --h1 --rps`: `clients` keep-alive connections, each sending `rate_per_client`
    requests/s, started one per millisecond so that their send times interleave.

    This is what a fixed rate means: requests spread over time. (hey's per-worker tickers all start
    together, so its requests leave in bursts of `clients` at once: see `run_hey`.) With the start
    times one millisecond apart, each millisecond sees a group of about
    clients / (1000 / rate_per_client) arrivals (h2load's start times are whole milliseconds).
    Each client cycles over `paths` in order.
    """
    body = workdir / "h2load-body.json"
    body.write_bytes(REQUEST_BODY)
    log_file = workdir / "h2load-requests.tsv"
    log_file.unlink(missing_ok=True)  # h2load appends
    argv = [find_executable("h2load"), "--h1", "-c", str(clients), "--rps", str(rate_per_client)]
    argv += ["-n", str(duration_s * clients * rate_per_client), "-r", "1", "--rate-period", "1ms"]
    argv += ["-d", str(body), "-H", "content-type: application/json"]
    uris = workdir / "h2load-uris.txt"
    uris.write_text("".join(f"http://127.0.0.1:{port}{path}\n" for path in paths))
    argv += ["--log-file", str(log_file), "-i", str(uris)]
    _run(argv, timeout_s=duration_s + 60)
    return _parse_h2load_log(log_file.read_text(), clients * rate_per_client)


def _parse_h2load_log(text: str, target_rate: float) -> OpenLoopSample:
    # Columns: start (us since the epoch), status, microseconds until the end of the response.
    # A request that failed on the socket has no row, so it shows as a lower rate.
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        raise HarnessError(f"h2load logged {len(rows)} requests")
    starts = [int(row[0]) for row in rows]
    span_s = (max(starts) - min(starts)) / 1e6
    return OpenLoopSample(
        target_rate=target_rate,
        duration_s=span_s * len(rows) / (len(rows) - 1),  # n starts span n - 1 intervals
        latencies_ms=[int(row[2]) / 1000 for row in rows],
        non_2xx=sum(1 for row in rows if not row[1].startswith("2")),
    )


def _parse_hey_csv(output: str, duration_s: int, target_rate: float) -> OpenLoopSample:
    # One row per answered request; hey leaves failed requests out, so they show as a lower rate.
    rows = list(csv.DictReader(io.StringIO(output)))
    if not rows or "response-time" not in rows[0]:
        raise HarnessError(f"hey printed no CSV:\n{output[-2000:]}")
    return OpenLoopSample(
        target_rate=target_rate,
        duration_s=duration_s,
        latencies_ms=[float(row["response-time"]) * 1000 for row in rows],
        non_2xx=sum(1 for row in rows if not row["status-code"].startswith("2")),
    )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    rank = max(1, math.ceil(fraction * len(sorted_values)))  # nearest-rank definition
    return sorted_values[rank - 1]


def _run(argv: Sequence[str], timeout_s: float) -> str:
    try:
        completed = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise HarnessError(f"{argv[0]} did not finish within {timeout_s:.0f} s") from error
    if completed.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv)} exited with {completed.returncode}:\n{completed.stderr[-2000:]}"
        )
    return completed.stdout


@dataclass(frozen=True)
class IdleConnectionsOutcome:
    opened: int
    failed: int
    first_error: str | None


async def with_idle_connections(
    port: int,
    path: str,
    count: int,
    measure: Callable[[IdleConnectionsOutcome], T],
    concurrency: int = 64,
) -> T:
    """Open `count` keep-alive connections, send one request on each and read its answer (so the
    server has really accepted and set up every one), call `measure` while they all stay open and
    idle, then close them."""
    request = _raw_post(path)
    gate = asyncio.Semaphore(concurrency)
    outcomes = await asyncio.gather(
        *(_open_one(port, request, gate) for _ in range(count)), return_exceptions=True
    )
    writers = [outcome for outcome in outcomes if isinstance(outcome, asyncio.StreamWriter)]
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    try:
        outcome = IdleConnectionsOutcome(
            opened=len(writers),
            failed=len(errors),
            first_error=repr(errors[0]) if errors else None,
        )
        return measure(outcome)
    finally:
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _raw_post(path: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(REQUEST_BODY)}\r\n\r\n"
    )
    return head.encode() + REQUEST_BODY


async def _open_one(port: int, request: bytes, gate: asyncio.Semaphore) -> asyncio.StreamWriter:
    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        try:
            writer.write(request)
            await asyncio.wait_for(_read_response(reader), 30)
        except BaseException:
            writer.close()
            raise
        return writer


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    if not status_line.split(" ")[1].startswith("2"):
        raise HarnessError(f"answered {status_line!r}")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines if line)
    }
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        await reader.readuntil(b"0\r\n\r\n")
