"""Capacity planning: how many replicas a load needs, from a rate or from a recorded trace.

The seed's sizing rule, Little's law divided by the target and the slots per replica:

    replicas = ceil(rps * seconds_per_request / target_utilization / max_concurrent_requests)

`plan_trace` applies it per time bucket of a real trace (formats in /work/shared/traces/README.md):

* Azure LLM inference CSV: TIMESTAMP, ContextTokens, GeneratedTokens (one row per request);
* Mooncake JSON lines: timestamp (ms from start), input_length, output_length;
* ServeGen aggregate rate CSV: model, window_start_s, total_rate_rps (a rate per window, not
  requests; windows where data is missing sum to 0 and show as idle).

Traces carry no service time, so it is modelled from token counts (request traces):

    seconds = prefill_ms_per_token * input_tokens + decode_ms_per_token * output_tokens
    defaults: 0.2 ms per prompt token, 20 ms per generated token

or taken as a fixed `latency_ms` (always so for rate traces; 1000 ms unless given). For each
bucket, offered concurrency = sum of the service times of the requests arriving in it / bucket
length. The last bucket of a request trace is divided by the full bucket length although the
trace may end inside it, so it reads low.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from inferfront.scaling.policy import ceil_replicas

DEFAULT_PREFILL_MS_PER_TOKEN = 0.2
DEFAULT_DECODE_MS_PER_TOKEN = 20.0
DEFAULT_RATE_TRACE_LATENCY_MS = 1000.0
DEFAULT_BUCKET_S = 60.0

AZURE, MOONCAKE, SERVEGEN = "azure", "mooncake", "servegen"


@dataclass(frozen=True)
class PlanRow:
    start_s: float  # bucket start, seconds from the start of the trace
    requests: int  # arrivals in the bucket (expected count for rate traces)
    rps: float  # mean arrival rate over the bucket
    concurrency: float  # offered concurrency: requests in service on average (Little's law)
    replicas: int  # ceil(concurrency / target / max_concurrent_requests)


def plan_replicas(
    rps: float, latency_ms: float, concurrency: int = 1, target_utilization: float = 0.7
) -> tuple[int, str]:
    """Replicas for a steady `rps` at `latency_ms` per request, and the arithmetic shown."""
    _check_sizing(concurrency, target_utilization)
    if rps < 0 or latency_ms < 0:
        raise ValueError("rps and latency_ms must be >= 0")
    seconds = latency_ms / 1000
    in_flight = rps * seconds
    slots = in_flight / target_utilization
    exact = slots / concurrency
    replicas = ceil_replicas(exact)
    lines = [
        "replicas = ceil(rps x seconds per request / target utilization / requests per replica)",
        f"  in flight on average: {_num(rps)} req/s x {_num(seconds)} s = {_num(in_flight)}"
        " requests (Little's law)",
        f"  at {_num(target_utilization * 100)}% target utilization: {_num(in_flight)} / "
        f"{_num(target_utilization)} = {_num(slots)} slots",
        f"  at {concurrency} concurrent request(s) per replica: {_num(slots)} / {concurrency}"
        f" = {_num(exact)} replicas",
        f"  replicas = ceil({_num(exact)}) = {replicas}",
    ]
    return replicas, "\n".join(lines)


def plan_trace(
    path: str | Path,
    *,
    prefill_ms_per_token: float = DEFAULT_PREFILL_MS_PER_TOKEN,
    decode_ms_per_token: float = DEFAULT_DECODE_MS_PER_TOKEN,
    latency_ms: float | None = None,
    bucket_s: float | None = None,
    concurrency: int = 1,
    target: float = 0.7,
    model: str | None = None,
    trace_format: str | None = None,
) -> list[PlanRow]:
    """Replicas needed per time bucket of a trace file.

    `latency_ms`, when given, replaces the token model with a fixed service time. `bucket_s`
    defaults to 60 s for request traces and to the trace's own window for rate traces. `model`
    keeps one model of a ServeGen trace (all models are summed otherwise). The format is guessed
    from the file unless `trace_format` ("azure", "mooncake", "servegen") is given.
    """
    _check_sizing(concurrency, target)
    if bucket_s is not None and bucket_s <= 0:
        raise ValueError("bucket_s must be positive")
    path = Path(path)
    kind = trace_format or detect_format(path)
    if kind == SERVEGEN:
        seconds = (latency_ms if latency_ms is not None else DEFAULT_RATE_TRACE_LATENCY_MS) / 1000
        starts, counts, width = _rate_buckets(path, model, bucket_s)
        work = [expected * seconds for expected in counts]
    elif kind in (AZURE, MOONCAKE):
        if model is not None:
            raise ValueError(f"a model filter applies to rate traces only, not to {kind}")
        arrivals = _read_azure(path) if kind == AZURE else _read_mooncake(path)

        def service_s(input_tokens: int, output_tokens: int) -> float:
            if latency_ms is not None:
                return latency_ms / 1000
            prefill_ms = prefill_ms_per_token * input_tokens
            return (prefill_ms + decode_ms_per_token * output_tokens) / 1000

        width = bucket_s or DEFAULT_BUCKET_S
        starts, counts, work = _request_buckets(arrivals, width, service_s)
    else:
        raise ValueError(f"unknown trace format {kind!r}")
    return [
        _row(start, count, busy_s, width, concurrency, target)
        for start, count, busy_s in zip(starts, counts, work, strict=True)
    ]


def detect_format(path: Path) -> str:
    """azure, mooncake or servegen, from the file's first line."""
    with path.open(encoding="utf-8") as lines:
        first = lines.readline().strip()
    if first.startswith("{"):
        return MOONCAKE
    header = {column.strip() for column in first.split(",")}
    if "TIMESTAMP" in header:
        return AZURE
    if {"window_start_s", "total_rate_rps"} <= header:
        return SERVEGEN
    raise ValueError(f"{path}: not an Azure, Mooncake or ServeGen trace (first line {first!r})")


def plan_assumptions(
    *,
    prefill_ms_per_token: float = DEFAULT_PREFILL_MS_PER_TOKEN,
    decode_ms_per_token: float = DEFAULT_DECODE_MS_PER_TOKEN,
    latency_ms: float | None = None,
    concurrency: int = 1,
    target: float = 0.7,
) -> str:
    """One line stating the service-time model and sizing inputs, to print above the table."""
    if latency_ms is not None:
        service = f"service time fixed at {_num(latency_ms)} ms"
    else:
        service = (
            f"service time = {_num(prefill_ms_per_token)} ms x prompt tokens + "
            f"{_num(decode_ms_per_token)} ms x generated tokens"
        )
    return (
        f"{service}; replicas = ceil(concurrency / {_num(target)} / {concurrency}) "
        "with concurrency = work arriving in the bucket / bucket length"
    )


def format_plan_table(rows: list[PlanRow]) -> str:
    """A fixed-width table, one bucket a line, with the peak and mean below."""
    header = f"{'start':>9} {'requests':>9} {'rps':>9} {'concurrency':>12} {'replicas':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{_clock(row.start_s):>9} {row.requests:>9} {row.rps:>9.2f} "
            f"{row.concurrency:>12.2f} {row.replicas:>9}"
        )
    if rows:
        peak = max(rows, key=lambda row: row.replicas)
        mean_rps = sum(row.rps for row in rows) / len(rows)
        lines.append("-" * len(header))
        lines.append(
            f"peak {peak.replicas} replicas at {_clock(peak.start_s)} "
            f"({peak.rps:.2f} req/s, concurrency {peak.concurrency:.2f}); "
            f"mean {mean_rps:.2f} req/s over {len(rows)} buckets"
        )
    return "\n".join(lines)


# -- reading traces ---------------------------------------------------------------------------

Arrival = tuple[float, int, int]  # seconds from the first arrival, prompt tokens, output tokens


def _read_azure(path: Path) -> list[Arrival]:
    with path.open(encoding="utf-8", newline="") as file:
        raw = [
            (
                datetime.fromisoformat(row["TIMESTAMP"].strip()),
                int(row["ContextTokens"]),
                int(row["GeneratedTokens"]),
            )
            for row in csv.DictReader(file)
        ]
    if not raw:
        return []
    origin = min(at for at, _, _ in raw)
    return [((at - origin).total_seconds(), prompt, out) for at, prompt, out in raw]


def _read_mooncake(path: Path) -> list[Arrival]:
    raw: list[Arrival] = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            if line.strip():
                record = json.loads(line)
                raw.append(
                    (record["timestamp"] / 1000, record["input_length"], record["output_length"])
                )
    return raw  # timestamps already count from the trace's start


def _request_buckets(
    arrivals: list[Arrival], bucket_s: float, service_s: Callable[[int, int], float]
) -> tuple[list[float], list[float], list[float]]:
    """Per bucket from 0 to the last arrival: starts, arrivals and seconds of work arriving."""
    if not arrivals:
        return [], [], []
    n = math.floor(max(at for at, _, _ in arrivals) / bucket_s) + 1
    counts = [0.0] * n
    work = [0.0] * n
    for at, prompt, out in arrivals:
        k = math.floor(at / bucket_s)
        counts[k] += 1
        work[k] += service_s(prompt, out)
    return [k * bucket_s for k in range(n)], counts, work


def _rate_buckets(
    path: Path, model: str | None, bucket_s: float | None
) -> tuple[list[float], list[float], float]:
    """Expected arrivals per bucket of a rate trace; each window's rate spread evenly on it."""
    rates: dict[float, float] = defaultdict(float)
    models: set[str] = set()
    with path.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            models.add(row["model"])
            if model is None or row["model"] == model:
                rates[float(row["window_start_s"])] += float(row["total_rate_rps"])
    if model is not None and model not in models:
        raise ValueError(f"model {model!r} not in {path}; models: {', '.join(sorted(models))}")
    if not rates:
        return [], [], bucket_s or DEFAULT_BUCKET_S
    starts = sorted(rates)
    gaps = [b - a for a, b in pairwise(starts) if b > a]
    window = min(gaps, default=bucket_s or DEFAULT_BUCKET_S)
    width = bucket_s or window
    origin = starts[0]
    n = math.ceil((starts[-1] + window - origin) / width - 1e-9)
    expected = [0.0] * n
    for start in starts:
        _spread(expected, start - origin, window, rates[start], width)
    return [k * width for k in range(n)], expected, width


def _spread(buckets: list[float], start: float, length: float, rate: float, width: float) -> None:
    """Add rate x overlap to every bucket the span [start, start + length) overlaps."""
    k = math.floor(start / width)
    end = start + length
    while k < len(buckets) and k * width < end:
        overlap = min(end, (k + 1) * width) - max(start, k * width)
        buckets[k] += rate * max(0.0, overlap)
        k += 1


# -- helpers ----------------------------------------------------------------------------------


def _row(
    start: float, arrivals: float, work_s: float, width: float, concurrency: int, target: float
) -> PlanRow:
    offered = work_s / width
    return PlanRow(
        start_s=start,
        requests=round(arrivals),
        rps=arrivals / width,
        concurrency=offered,
        replicas=ceil_replicas(offered / target / concurrency),
    )


def _check_sizing(concurrency: int, target: float) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not 0 < target <= 1:
        raise ValueError("target utilization must be in (0, 1]")


def _num(x: float) -> str:
    """Up to 4 decimals, no trailing zeros: 0.7, 285.7143, 20."""
    return f"{x:.4f}".rstrip("0").rstrip(".")


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
