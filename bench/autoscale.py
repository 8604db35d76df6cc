"""`make bench-autoscale`: replay a real request trace through the autoscaler, simulated and live.

    .venv/bin/python -m bench.autoscale [--trace azure|mooncake|PATH] [--quick]
                                        [--sim-only | --live-only] [--strict]

Simulation (bench/autoscale_sim.py): the whole trace in trace time through a discrete-event
router that calls the real `decide()`; variants: the trace as recorded ("smooth") and the same
requests bunched by a rate shape ("bursty": ServeGen's deepseek-r1 day squeezed onto the trace,
and a synthetic on/off shape).

Live: a slice of the trace, time-compressed k times, against a real `inferfront serve` whose
deployment autoscales `tests/servers/model_server.py` replicas (each request carries
`?delay_ms=service_ms / k`). Everything with a duration is divided by k so the live run is the
same system k times faster: service times and arrival gaps (offered load is unchanged), the
polling interval (1 s -> 1/k s; the router then samples every min(100 ms, 1/k s)), the
scale-down delay and the router's queue and request limits. Process start-up cannot be
compressed: a replica's real cold start (~0.3 s) is k times longer in trace time, so each live
run is shown beside a simulation of the same slice with the live run's measured cold start and
sampling, to separate the policy from the compression.

Every figure is in trace time. References per replay: the smallest fixed fleet keeping at most
1% of requests waiting over 500 ms, and the hindsight bound (per 10 s window, the peak number of
requests in service if each started on arrival, summed as replica-seconds). Targets: at most 1%
of requests waiting over 500 ms (or rejected), replica-seconds within 1.5x the hindsight bound.
Results: bench/results/autoscale-<UTC>.md/.json and autoscale-latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
import yaml

from bench import autoscale_sim as sim
from bench.harness.procs import PortAllocator, exit_cleanly_on_termination_signals
from inferfront.scaling.policy import ScalePolicy

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
ENDPOINT, DEPLOYMENT = "bench", "blue"
REPLICA_COMMAND = [
    "python", "-m", "tests.servers.model_server", "--port", "{port}", "--name", "r",
    "--exit-with-parent",
]  # fmt: skip
# The router's limits, in trace time: generous, so that waits are measured rather than cut off
# (the default max_queue_wait_ms of 500 would turn every wait over 500 ms into a 503).
MAX_QUEUE_WAIT_S = 60.0
REQUEST_TIMEOUT_S = 300.0
MAX_QUEUED = 100_000
ROUTER_START_TIMEOUT_S = 60.0
ADMIN_POLL_S = 0.1  # real seconds between reads of /admin/v1/deployments
ROUTER_STOP_TIMEOUT_S = 40.0
MAX_LOAD_RATIO = 1.5  # replica-seconds over the hindsight bound


def log(message: str) -> None:
    print(f"[autoscale] {message}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    trace: Path
    model: sim.ServiceModel
    policy: ScalePolicy  # trace time
    cold_start_s: float
    sim: bool
    live: bool
    live_variants: tuple[str, ...]
    live_start_s: float
    live_duration_s: float
    speedup: float
    results_dir: Path
    strict: bool
    seed: int
    quick: bool


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench.autoscale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--trace", default="azure", help="azure (default), mooncake, or a trace file path"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="simulation + a short live slice (5 min at 15x, smooth only)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--sim-only", action="store_true")
    only.add_argument("--live-only", action="store_true")
    parser.add_argument("--base-ms", type=float, default=0.0)
    parser.add_argument(
        "--prefill-ms-per-token", type=float, default=sim.planner.DEFAULT_PREFILL_MS_PER_TOKEN
    )
    parser.add_argument(
        "--decode-ms-per-token", type=float, default=sim.planner.DEFAULT_DECODE_MS_PER_TOKEN
    )
    parser.add_argument("--min-instances", type=int, default=1)
    parser.add_argument("--max-instances", type=int, default=128)
    parser.add_argument("--target", type=int, default=70, help="target utilization, percent")
    parser.add_argument("--polling-interval-s", type=float, default=1.0)
    parser.add_argument("--scale-down-delay-s", type=float, default=60.0)
    parser.add_argument(
        "--cold-start-s",
        type=float,
        default=2.0,
        help="simulation: seconds from launch to ready (default 2)",
    )
    parser.add_argument(
        "--live-variants",
        default=None,
        help="comma-separated: smooth,bursty (default both; --quick: smooth)",
    )
    parser.add_argument(
        "--live-start-min",
        type=float,
        default=5.0,
        help="live slice start, minutes into the trace (default 5)",
    )
    parser.add_argument(
        "--live-minutes",
        type=float,
        default=None,
        help="live slice length in trace minutes (default 15; --quick: 5)",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="live time compression k (default 12; --quick: 15)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--seed", type=int, default=0, help="Mooncake arrival spreading")
    args = parser.parse_args(argv)
    trace = sim.TRACE_FILES.get(args.trace, Path(args.trace))
    variants = args.live_variants or ("smooth" if args.quick else "smooth,bursty")
    return Settings(
        trace=trace,
        model=sim.ServiceModel(args.base_ms, args.prefill_ms_per_token, args.decode_ms_per_token),
        policy=ScalePolicy(
            min_instances=args.min_instances,
            max_instances=args.max_instances,
            target=args.target / 100,
            polling_interval_s=args.polling_interval_s,
            scale_down_delay_s=args.scale_down_delay_s,
        ),
        cold_start_s=args.cold_start_s,
        sim=not args.live_only,
        live=not args.sim_only,
        live_variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
        live_start_s=args.live_start_min * 60,
        live_duration_s=(args.live_minutes or (5.0 if args.quick else 15.0)) * 60,
        speedup=args.speedup or (15.0 if args.quick else 12.0),
        results_dir=args.results_dir,
        strict=args.strict,
        seed=args.seed,
        quick=args.quick,
    )


# -- traffic variants ----------------------------------------------------------------------------


def traffic_variants(requests: list[sim.TraceRequest]) -> dict[str, list[sim.TraceRequest]]:
    span = sim.trace_span_s(requests)
    return {
        "smooth": requests,
        "bursty": sim.warp_trace(requests, sim.servegen_multipliers(), span),
        "bursty-onoff": sim.warp_trace(requests, sim.onoff_multipliers(span), span),
    }


VARIANT_NOTES = {
    "smooth": "the trace as recorded",
    "bursty": "the same requests re-timed to ServeGen deepseek-r1's day of 10-min rates "
    "squeezed onto the trace (25 s per step, 0.27x-2.7x the mean)",
    "bursty-onoff": "the same requests re-timed: 3x the mean rate for 2 min of every 10, "
    "0.5x otherwise",
}


def initial_replicas(policy: ScalePolicy, requests: Sequence[sim.TraceRequest]) -> int:
    """The deployment is already sized for the replay's first minute when it starts."""
    return policy.need(sim.offered_load(requests, 0.0, 60.0))


# -- one replay and its references ---------------------------------------------------------------


def fleet_row(fleet: str, stats: sim.ReplayStats, bound: float, **extra: Any) -> dict[str, Any]:
    row = {"fleet": fleet, **stats.to_dict(), "vs_hindsight": stats.replica_seconds / bound}
    row.update(extra)
    return row


def references(requests: Sequence[sim.TraceRequest], span_s: float) -> dict[str, Any]:
    fixed = sim.smallest_fixed_fleet(requests, span_s)
    bound = sim.hindsight_bound(requests, span_s)
    no_wait = bound.replica_seconds
    return {
        "hindsight_replica_seconds": no_wait,
        "offered_floor_replica_seconds": bound.offered_replica_seconds,
        "fixed_replicas": fixed.replicas,
        "fixed_row": fleet_row(f"fixed fleet ({fixed.replicas})", fixed.stats, no_wait),
    }


def checks_for(row: dict[str, Any], refs: dict[str, Any], label: str) -> list[dict[str, str]]:
    late = row["waited_over_pct"]
    ratio = row["vs_hindsight"]
    savings = refs["fixed_row"]["replica_seconds"] / row["replica_seconds"]
    return [
        {
            "check": f"{label}: waited >500 ms or rejected <= 1%",
            "value": f"{late:.2f}%",
            "verdict": "PASS" if late <= 100 * sim.MAX_LATE_FRACTION else "FAIL",
        },
        {
            "check": f"{label}: replica-seconds <= {MAX_LOAD_RATIO:g}x hindsight",
            "value": f"{ratio:.2f}x",
            "verdict": "PASS" if ratio <= MAX_LOAD_RATIO else "FAIL",
        },
        {
            "check": f"{label}: savings vs fixed fleet ({refs['fixed_replicas']})",
            "value": f"{savings:.2f}x ({100 * (1 - 1 / savings):+.0f}% replica-seconds saved)",
            "verdict": "info",
        },
    ]


def run_simulation(settings: Settings, requests: list[sim.TraceRequest]) -> dict[str, Any]:
    span = sim.trace_span_s(requests)
    section: dict[str, Any] = {"span_s": span, "variants": {}}
    for name, variant in traffic_variants(requests).items():
        started = time.perf_counter()
        start_with = initial_replicas(settings.policy, variant)
        result = sim.simulate_autoscaled(
            variant,
            sim.SimSettings(
                policy=settings.policy,
                cold_start_s=settings.cold_start_s,
                initial_replicas=start_with,
                max_queue_wait_s=MAX_QUEUE_WAIT_S,
                request_timeout_s=REQUEST_TIMEOUT_S,
                max_queued=MAX_QUEUED,
                span_s=span,
            ),
        )
        refs = references(variant, span)
        row = fleet_row(
            "autoscaler",
            result.stats,
            refs["hindsight_replica_seconds"],
            peak_replicas=result.peak_replicas,
            scale_changes=result.scale_changes,
            initial_replicas=start_with,
        )
        section["variants"][name] = {
            "note": VARIANT_NOTES[name],
            "rows": [row, refs["fixed_row"]],
            "references": {k: v for k, v in refs.items() if k != "fixed_row"},
            "checks": checks_for(row, refs, f"sim {name}"),
            "timeline": result.timeline,
            "seconds": time.perf_counter() - started,
        }
        log(
            f"sim {name}: {row['mean_replicas']:.1f} replicas on average, "
            f"{row['waited_over_pct']:.2f}% waited >500 ms, fixed fleet {refs['fixed_replicas']}"
        )
    return section


# -- live: the router process --------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _own_session_and_die_with_parent() -> None:
    # Its own group so one signal reaches the router; PDEATHSIG covers this script being killed.
    os.setsid()
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def router_config(plan: LivePlan, port: int, admin_port: int) -> dict[str, Any]:
    k, policy = plan.speedup, plan.policy
    return {
        "server": {"host": "127.0.0.1", "port": port, "admin_host": "127.0.0.1",
                   "admin_port": admin_port, "drain_timeout_s": 10.0},
        "endpoints": [{
            "name": ENDPOINT,
            "auth_mode": "none",
            "traffic": {DEPLOYMENT: 100},
            "deployments": [{
                "name": DEPLOYMENT,
                "command": REPLICA_COMMAND,
                "cwd": str(REPO_ROOT),
                "instance_count": plan.initial_replicas,
                "request_settings": {
                    "max_concurrent_requests_per_instance": 1,
                    "max_queue_wait_ms": math.ceil(MAX_QUEUE_WAIT_S * 1000 / k),
                    "request_timeout_ms": math.ceil(REQUEST_TIMEOUT_S * 1000 / k),
                    "max_queued_requests": MAX_QUEUED,
                },
                "scale_settings": {
                    "type": "target_utilization",
                    "min_instances": policy.min_instances,
                    "max_instances": policy.max_instances,
                    "target_utilization_percentage": round(policy.target * 100),
                    "polling_interval": policy.polling_interval_s / k,
                    "scale_down_delay_s": policy.scale_down_delay_s / k,
                },
            }],
        }],
    }  # fmt: skip


class RouterProcess:
    """`inferfront serve` with the access log (stdout) and its own log (stderr) in two files."""

    def __init__(self, config: dict[str, Any], workdir: Path, port: int, admin_port: int) -> None:
        self.port, self.admin_port = port, admin_port
        config_path = workdir / "router.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.access_path = workdir / "access.jsonl"
        self.log_path = workdir / "router.log"
        argv = [
            sys.executable,
            "-m",
            "inferfront",
            "serve",
            "-c",
            str(config_path),
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
        ]
        with self.access_path.open("wb") as out, self.log_path.open("wb") as err:
            self.popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                preexec_fn=_own_session_and_die_with_parent,
            )
        self.replica_pids: set[int] = set()

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def deployment(self) -> dict[str, Any]:
        status, body = _get(self.admin_port, "/admin/v1/deployments")
        if status != 200:
            raise RuntimeError(f"/admin/v1/deployments answered {status}")
        return find_deployment(json.loads(body))

    def wait_fleet_ready(self, replicas: int, timeout_s: float = ROUTER_START_TIMEOUT_S) -> None:
        """Until the router answers and `replicas` replicas are ready (polled, with a deadline)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"router exited ({self.popen.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(OSError, RuntimeError, KeyError, ValueError):
                states = [r["state"] for r in self.deployment()["replicas"]]
                if states.count("ready") >= replicas:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{replicas} replicas not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)  # polling a condition with a deadline

    def remember_replicas(self) -> None:
        """Replica pids (children of the router), to make sure none outlives the benchmark."""
        for pid in _children_of(self.popen.pid):
            self.replica_pids.add(pid)

    def stop(self) -> None:
        self.remember_replicas()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=ROUTER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # Replicas die with the router (PDEATHSIG, --exit-with-parent); any left goes by pid.
        deadline = time.monotonic() + 5.0
        while any(_is_model_server(pid) for pid in self.replica_pids):
            if time.monotonic() > deadline:
                for pid in self.replica_pids:
                    if _is_model_server(pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)  # polling process exit with a deadline


def _children_of(parent: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{parent}/task").iterdir()
        found: list[int] = []
        for task in tasks:
            text = (task / "children").read_text().split()
            found.extend(int(pid) for pid in text)
        return found
    except OSError:
        return []


def _is_model_server(pid: int) -> bool:
    try:
        return b"tests.servers.model_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def find_deployment(document: dict[str, Any]) -> dict[str, Any]:
    for endpoint in document["endpoints"]:
        if endpoint["name"] == ENDPOINT:
            for deployment in endpoint["deployments"]:
                if deployment["name"] == DEPLOYMENT:
                    return deployment
    raise KeyError(f"{ENDPOINT}/{DEPLOYMENT} not in /admin/v1/deployments")


# -- live: a small HTTP/1.1 client (keep-alive pool, no per-request framework cost) ---------------


class HttpPool:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head)
            status, headers, body = await read_response(reader)
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, headers, body

    async def preconnect(self, count: int) -> None:
        """Open idle connections up front so early requests do not pay for the TCP connect."""
        for _ in range(count):
            self.idle.append(await asyncio.open_connection("127.0.0.1", self.port))

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent by either server
                return status, headers, b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    headers["connection"] = "close"
    return status, headers, await reader.read()


def score_request(delay_ms: int) -> bytes:
    return (
        f"POST /api/v1/endpoint/{ENDPOINT}/score?delay_ms={delay_ms} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ).encode()


ADMIN_REQUEST = b"GET /admin/v1/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# -- live: the replay ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LivePlan:
    variant: str
    requests: list[sim.TraceRequest]  # the slice, trace time from 0
    duration_s: float  # the slice's length, trace time
    speedup: float
    policy: ScalePolicy  # trace time; the router gets it divided by the speedup
    initial_replicas: int


@dataclass
class LiveRecord:
    sent_s: float = math.nan  # real seconds after the start of the replay
    latency_s: float = math.nan  # real
    status: int = 0  # 0: no HTTP answer
    request_id: str = ""
    lateness_s: float = math.nan  # sent later than scheduled by this much (real)
    error: str = ""


@dataclass
class LiveCapture:
    records: list[LiveRecord]
    polls: list[dict[str, Any]] = field(default_factory=list)
    started_wall: float = 0.0  # time.time() at the start of the replay


async def replay_live(plan: LivePlan, router: RouterProcess) -> LiveCapture:
    loop = asyncio.get_running_loop()
    k = plan.speedup
    capture = LiveCapture([LiveRecord() for _ in plan.requests])
    pool, admin = HttpPool(router.port), HttpPool(router.admin_port)
    await pool.preconnect(2 * plan.initial_replicas)
    t0 = loop.time() + 0.2  # room to start the poller before the first arrival
    capture.started_wall = time.time() + (t0 - loop.time())
    stop_polling = asyncio.Event()
    poller = loop.create_task(poll_admin(admin, t0, capture.polls, stop_polling))
    limit_s = REQUEST_TIMEOUT_S / k + 30  # the router answers 504 long before this

    async def one(i: int, delay_ms: int, due: float) -> None:
        record = capture.records[i]
        sent = loop.time()
        record.sent_s, record.lateness_s = sent - t0, sent - due
        try:
            status, headers, _ = await asyncio.wait_for(
                pool.request(score_request(delay_ms)), limit_s
            )
            record.status, record.request_id = status, headers.get("x-request-id", "")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            record.error = f"{type(error).__name__}: {error}"
        record.latency_s = loop.time() - sent

    tasks = set()
    try:
        for i, request in enumerate(plan.requests):
            due = t0 + request.at_s / k
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            delay_ms = max(1, round(request.service_s * 1000 / k))
            tasks.add(loop.create_task(one(i, delay_ms, due)))
        await asyncio.gather(*tasks)
        span_end = t0 + plan.duration_s / k
        if span_end > loop.time():
            await asyncio.sleep(span_end - loop.time())  # replica-seconds run to the span's end
    finally:
        stop_polling.set()
        await poller
        for task in tasks:
            task.cancel()
        pool.close()
        admin.close()
    return capture


async def poll_admin(
    admin: HttpPool, t0: float, polls: list[dict[str, Any]], stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        at = loop.time()
        try:
            status, _, body = await admin.request(ADMIN_REQUEST)
            deployment = find_deployment(json.loads(body)) if status == 200 else None
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
            deployment = None
        if deployment is not None:
            states = [r["state"] for r in deployment["replicas"]]
            scaling = deployment.get("scaling") or {}
            polls.append({
                "t": at - t0,
                "replicas": len(states),
                "ready": states.count("ready"),
                "starting": states.count("starting"),
                "draining": states.count("draining"),
                "desired": scaling.get("desired"),
                "queued": deployment["queue_length"],
                "inflight": deployment["inflight"],
            })  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, at + ADMIN_POLL_S - loop.time()))


def replica_seconds_from_polls(polls: Sequence[dict[str, Any]], end_s: float) -> float:
    """Integral over [0, end_s] (real) of the replicas seen, each reading held until the next."""
    total = 0.0
    for poll, following in zip(polls, [*polls[1:], None], strict=True):
        start = max(0.0, poll["t"])
        stop = min(end_s, following["t"] if following else end_s)
        if stop > start:
            total += poll["replicas"] * (stop - start)
    return total


_READY_AFTER = re.compile(r"^(\S+ \S+) INFO .*\] ready after ([\d.]+) s")
_DECISION = re.compile(rf"^(\S+ \S+) INFO inferfront\.scaling: deployment {ENDPOINT}/{DEPLOYMENT}:")


def _log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def read_router_logs(router: RouterProcess, since_wall: float) -> dict[str, Any]:
    """Queue waits by request id from the access log; cold starts and decisions from the log."""
    queue_ms: dict[str, float] = {}
    unparsed = 0
    for line in router.access_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            queue_ms[entry["request_id"]] = float(entry["queue_ms"])
        except (ValueError, KeyError, TypeError):
            unparsed += 1
    cold_starts: list[float] = []
    decisions = 0
    for line in router.log_path.read_text(errors="replace").splitlines():
        if (ready := _READY_AFTER.match(line)) and _log_time(ready[1]) >= since_wall:
            cold_starts.append(float(ready[2]))
        elif (decision := _DECISION.match(line)) and _log_time(decision[1]) >= since_wall:
            decisions += 1
    return {
        "queue_ms": queue_ms,
        "unparsed_lines": unparsed,
        "cold_starts_s": cold_starts,
        "decisions": decisions,
    }


def live_outcome(plan: LivePlan, capture: LiveCapture, queue_ms: dict[str, float]) -> sim.Outcome:
    """Per request in trace time: the router's queue wait (access log; without a log line, the
    client's latency minus the service time), the client's latency and status."""
    k = plan.speedup
    waits, latencies, statuses = [], [], []
    for request, record in zip(plan.requests, capture.records, strict=True):
        latency = record.latency_s * k
        logged = queue_ms.get(record.request_id)
        waits.append(logged * k / 1000 if logged is not None else latency - request.service_s)
        latencies.append(latency)
        statuses.append(record.status)
    return sim.Outcome(waits, latencies, statuses)


def run_live(plan: LivePlan, ports: PortAllocator) -> dict[str, Any]:
    k = plan.speedup
    port, admin_port = ports.take(2)
    with tempfile.TemporaryDirectory(prefix="inferfront-autoscale-") as workdir:
        router = RouterProcess(
            router_config(plan, port, admin_port), Path(workdir), port, admin_port
        )
        try:
            log(f"live {plan.variant}: starting the router and {plan.initial_replicas} replicas")
            router.wait_fleet_ready(plan.initial_replicas)
            router.remember_replicas()
            log(
                f"live {plan.variant}: replaying {len(plan.requests)} requests over "
                f"{plan.duration_s / k:.0f} s ({plan.duration_s / 60:g} trace minutes at {k:g}x)"
            )
            capture = uvloop.run(replay_live(plan, router))
        finally:
            router.stop()
        logs = read_router_logs(router, capture.started_wall)
    outcome = live_outcome(plan, capture, logs["queue_ms"])
    replica_seconds = replica_seconds_from_polls(capture.polls, plan.duration_s / k) * k
    stats = sim.summarize(outcome, replica_seconds, plan.duration_s)
    lateness = [r.lateness_s * 1000 for r in capture.records if not math.isnan(r.lateness_s)]
    client_waits = [
        (r.latency_s * k - q.service_s)
        for q, r in zip(plan.requests, capture.records, strict=True)
        if r.status == sim.OK
    ]
    added_ms = [wait * 1000 / k for wait in client_waits]  # real ms over the service time
    cold = logs["cold_starts_s"]
    errors: dict[str, int] = {}
    for record in capture.records:
        if record.status not in (sim.OK, sim.QUEUE_FULL, sim.QUEUE_TIMEOUT, sim.TIMEOUT):
            key = record.error.split(":")[0] or str(record.status)
            errors[key] = errors.get(key, 0) + 1
    return {
        "stats": stats,
        "peak_replicas": max((p["replicas"] for p in capture.polls), default=0),
        "scale_changes": logs["decisions"],
        "cold_start_real_s": {
            "count": len(cold),
            "median": sim.percentile(cold, 0.5) if cold else None,
            "max": max(cold) if cold else None,
        },
        "send_lateness_ms": {
            "p50": sim.percentile(lateness, 0.5),
            "p99": sim.percentile(lateness, 0.99),
            "max": max(lateness),
        },
        "added_latency_real_ms": {
            "p50": sim.percentile(added_ms, 0.5),
            "p99": sim.percentile(added_ms, 0.99),
        },
        "client_side_waited_over_pct": 100
        * sum(1 for w in client_waits if w > sim.WAIT_LIMIT_S)
        / max(1, len(client_waits)),
        "access_log": {"lines": len(logs["queue_ms"]), "unparsed": logs["unparsed_lines"]},
        "other_errors": errors,
        "polls": len(capture.polls),
        "timeline": [
            (round(p["t"] * k, 1), p["replicas"], p["ready"], p["queued"])
            for p in capture.polls[:: max(1, round(1 / ADMIN_POLL_S))]
        ],
    }


def sim_like_live(
    plan: LivePlan, cold_start_real_s: float | None, fallback_cold_start_s: float
) -> sim.AutoscaledResult:
    """The same slice simulated with what the live router really ran, in trace time: sampling
    every min(100 ms, polling/k) real, burst confirmation within min(0.3 s, polling/k) real, and
    the measured cold start."""
    k = plan.speedup
    polling_real = plan.policy.polling_interval_s / k
    policy = replace(plan.policy, burst_confirm_s=0.3 * k)  # decide() caps it at the interval
    cold = cold_start_real_s * k if cold_start_real_s is not None else fallback_cold_start_s
    return sim.simulate_autoscaled(
        plan.requests,
        sim.SimSettings(
            policy=policy,
            sample_interval_s=min(0.1, polling_real) * k,
            cold_start_s=cold,
            initial_replicas=plan.initial_replicas,
            max_queue_wait_s=MAX_QUEUE_WAIT_S,
            request_timeout_s=REQUEST_TIMEOUT_S,
            max_queued=MAX_QUEUED,
            span_s=plan.duration_s,
        ),
    )


def run_live_section(settings: Settings, requests: list[sim.TraceRequest]) -> dict[str, Any]:
    section: dict[str, Any] = {
        "speedup": settings.speedup,
        "slice_start_s": settings.live_start_s,
        "slice_s": settings.live_duration_s,
        "variants": {},
    }
    ports = PortAllocator()
    variants = traffic_variants(requests)
    for name in settings.live_variants:
        if name not in variants:
            raise SystemExit(f"unknown live variant {name!r}; choose from {', '.join(variants)}")
        requests_slice = sim.slice_trace(
            variants[name], settings.live_start_s, settings.live_duration_s
        )
        plan = LivePlan(
            name,
            requests_slice,
            settings.live_duration_s,
            settings.speedup,
            settings.policy,
            initial_replicas(settings.policy, requests_slice),
        )
        refs = references(plan.requests, plan.duration_s)
        bound = refs["hindsight_replica_seconds"]
        live = run_live(plan, ports)
        cold = live["cold_start_real_s"]["median"]
        mirror = sim_like_live(plan, cold, settings.cold_start_s)
        live_row = fleet_row(
            "autoscaler, live",
            live.pop("stats"),
            bound,
            peak_replicas=live["peak_replicas"],
            scale_changes=live["scale_changes"],
            initial_replicas=plan.initial_replicas,
        )
        mirror_row = fleet_row(
            "autoscaler, simulated like the live run",
            mirror.stats,
            bound,
            peak_replicas=mirror.peak_replicas,
            scale_changes=mirror.scale_changes,
            initial_replicas=plan.initial_replicas,
        )
        section["variants"][name] = {
            "note": VARIANT_NOTES[name],
            "requests": len(plan.requests),
            "rows": [live_row, mirror_row, refs["fixed_row"]],
            "references": {k: v for k, v in refs.items() if k != "fixed_row"},
            "checks": checks_for(live_row, refs, f"live {name}"),
            "live": live,
            "sim_cold_start_s": cold * plan.speedup if cold is not None else settings.cold_start_s,
            "sim_timeline": mirror.timeline,
        }
        log(
            f"live {name}: {live_row['mean_replicas']:.1f} replicas on average, "
            f"{live_row['waited_over_pct']:.2f}% waited >500 ms, "
            f"median cold start {cold if cold is not None else float('nan'):.2f} s real"
        )
    return section


# -- the report ----------------------------------------------------------------------------------

_HEADER = [
    "fleet",
    "requests",
    "served",
    "p50 ms",
    "p99 ms",
    "waited >500 ms*",
    "429",
    "503",
    "504",
    "replica-s",
    "mean replicas",
    "vs hindsight",
]


def _table_rows(rows: Sequence[dict[str, Any]], refs: dict[str, Any]) -> list[list[str]]:
    out = []
    for row in rows:
        out.append([
            row["fleet"], str(row["requests"]), str(row["served"]), f"{row['p50_ms']:.0f}",
            f"{row['p99_ms']:.0f}", f"{row['waited_over']} ({row['waited_over_pct']:.2f}%)",
            str(row["rejected"]["429"]), str(row["rejected"]["503"]),
            str(row["rejected"]["504"]), f"{row['replica_seconds']:.0f}",
            f"{row['mean_replicas']:.1f}", f"{row['vs_hindsight']:.2f}x",
        ])  # fmt: skip
    span = refs["span_s"]
    for label, key in (
        ("hindsight bound (no wait, per 10 s)", "hindsight_replica_seconds"),
        ("offered-load floor (ceil(work/10 s))", "offered_floor_replica_seconds"),
    ):
        seconds = refs[key]
        ratio = seconds / refs["hindsight_replica_seconds"]
        out.append(
            [
                label,
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                f"{seconds:.0f}",
                f"{seconds / span:.1f}",
                f"{ratio:.2f}x",
            ]
        )
    return out


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _checks_table(checks: Sequence[dict[str, str]]) -> str:
    return _markdown_table(
        ["check", "value", "verdict"], [[c["check"], c["value"], c["verdict"]] for c in checks]
    )


def build_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    parts = [
        f"# Autoscaling benchmark, {meta['started_utc']}",
        "",
        f"- Trace: `{meta['trace']}` ({meta['requests']} requests over "
        f"{meta['trace_span_s'] / 60:.0f} min); {meta['service_model']}.",
        f"- Policy (trace time): min {meta['policy']['min_instances']}, max "
        f"{meta['policy']['max_instances']}, target {meta['policy']['target']:.0%}, polling "
        f"{meta['policy']['polling_interval_s']:g} s, scale-down delay "
        f"{meta['policy']['scale_down_delay_s']:g} s; one request per replica at a time.",
        f"- Router limits (trace time, generous so waits are measured, not cut off): "
        f"max_queue_wait {MAX_QUEUE_WAIT_S:g} s, request_timeout {REQUEST_TIMEOUT_S:g} s, "
        f"max_queued_requests {MAX_QUEUED}.",
        "- The deployment starts sized for the replay's first minute "
        "(ceil(offered load / target)), replicas ready.",
        "- *waited >500 ms: requests that waited in the router's queue more than 500 ms of "
        "trace time, or were rejected (429/503/504). Latency is arrival to answer, trace time.",
        "- Hindsight bound: per 10 s window, the peak number of requests in service if each "
        "started on arrival (just enough replicas for no wait), summed as replica-seconds.",
        "",
    ]
    if "simulation" in results:
        section = results["simulation"]
        parts += [
            f"## Simulation: the whole trace ({section['span_s']:.0f} s), "
            f"cold start {meta['cold_start_s']:g} s, samples every 100 ms",
            "",
        ]
        for name, variant in section["variants"].items():
            refs = {**variant["references"], "span_s": section["span_s"]}
            parts += [
                f"### {name}: {variant['note']}",
                "",
                _markdown_table(_HEADER, _table_rows(variant["rows"], refs)),
                "",
                _checks_table(variant["checks"]),
                "",
            ]
    if "live" in results:
        section = results["live"]
        parts += [
            f"## Live: `inferfront serve` + model_server replicas, trace minutes "
            f"{section['slice_start_s'] / 60:g}-"
            f"{(section['slice_start_s'] + section['slice_s']) / 60:g} at "
            f"{section['speedup']:g}x",
            "",
        ]
        for name, variant in section["variants"].items():
            live = variant["live"]
            refs = {**variant["references"], "span_s": section["slice_s"]}
            cold = live["cold_start_real_s"]
            cold_text = (
                f"median {cold['median']:.2f} s, max {cold['max']:.2f} s real over "
                f"{cold['count']} starts"
                if cold["count"]
                else "no replica started"
            )
            parts += [
                f"### {name}: {variant['note']}",
                "",
                _markdown_table(_HEADER, _table_rows(variant["rows"], refs)),
                "",
                f"- Replica cold start during the replay: {cold_text} "
                f"(x{section['speedup']:g} in trace time; the simulated row uses "
                f"{variant['sim_cold_start_s']:.1f} s and the live sampling).",
                f"- Arrivals sent late by p50 {live['send_lateness_ms']['p50']:.1f} ms, p99 "
                f"{live['send_lateness_ms']['p99']:.1f} ms, max "
                f"{live['send_lateness_ms']['max']:.1f} ms (real). Client latency over the "
                f"service time: p50 {live['added_latency_real_ms']['p50']:.1f} ms, p99 "
                f"{live['added_latency_real_ms']['p99']:.1f} ms real; counted as waits (> 500 ms "
                f"of trace time) they would be {live['client_side_waited_over_pct']:.2f}% (the "
                f"table counts the router's own queue_ms). Other errors: "
                f"{live['other_errors'] or 'none'}.",
                "",
                _checks_table(variant["checks"]),
                "",
            ]
    if results["errors"]:
        parts += ["## Errors", "", *[f"- {error}" for error in results["errors"]], ""]
    return "\n".join(parts)


def save(results_dir: Path, results: dict[str, Any], markdown: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["started_utc"].replace("-", "").replace(":", "")
    outputs = {
        f"autoscale-{stamp}.md": markdown,
        f"autoscale-{stamp}.json": json.dumps(results, indent=1, default=_jsonable) + "\n",
        "autoscale-latest.md": markdown,
    }
    for name, text in outputs.items():
        partial = results_dir / f"{name}.tmp"
        partial.write_text(text)
        partial.replace(results_dir / name)  # whole files only, never half of one
    log(f"saved {results_dir}/autoscale-{stamp}.md and .json, and autoscale-latest.md")


def _jsonable(value: Any) -> Any:
    if isinstance(value, sim.ReplayStats):
        return value.to_dict()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    exit_cleanly_on_termination_signals()  # SIGTERM runs the finally blocks that stop the router
    requests = sim.load_trace(settings.trace, settings.model, seed=settings.seed)
    results: dict[str, Any] = {
        "meta": {
            "started_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "trace": str(settings.trace),
            "requests": len(requests),
            "trace_span_s": sim.trace_span_s(requests),
            "service_model": settings.model.describe(),
            "policy": {
                "min_instances": settings.policy.min_instances,
                "max_instances": settings.policy.max_instances,
                "target": settings.policy.target,
                "polling_interval_s": settings.policy.polling_interval_s,
                "scale_down_delay_s": settings.policy.scale_down_delay_s,
            },
            "cold_start_s": settings.cold_start_s,
            "quick": settings.quick,
        },
        "errors": [],
    }
    if settings.sim:
        results["simulation"] = run_simulation(settings, requests)
    if settings.live:
        try:
            results["live"] = run_live_section(settings, requests)
        except (RuntimeError, OSError) as error:
            log(f"ERROR: live run failed: {error}")
            results["errors"].append(f"live run failed: {error}")
    markdown = build_markdown(results)
    print(markdown)
    save(settings.results_dir, results, markdown)
    failed = any(
        check["verdict"] == "FAIL"
        for section in ("simulation", "live")
        if section in results
        for variant in results[section]["variants"].values()
        for check in variant["checks"]
    )
    return 1 if results["errors"] or (settings.strict and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
