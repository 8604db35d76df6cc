"""`make bench`: what the router costs as a proxy, measured in one run against direct access to the
model and against nginx as a reverse proxy (the machines are noisy: only same-run comparisons
mean anything).

    python -m bench.proxybench [--quick] [--only direct,nginx,inferfront,scale,memory]

Prints a Markdown table with PASS/FAIL against the targets and saves it, with the raw numbers as
JSON, under bench/results/. A benchmark, not a test: a FAIL is a finding, and the exit code is
non-zero only when something could not be measured (or, with --strict, on a FAIL too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bench.harness import loadgen, servers
from bench.harness.procs import (
    Child,
    Children,
    HarnessError,
    PortAllocator,
    cpu_busy_fraction,
    cpu_seconds,
    exit_cleanly_on_termination_signals,
    open_fd_count,
    process_tree,
    raise_open_files_limit,
    status_kib,
    tcp_segments_sent,
)
from bench.harness.report import build_report

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("direct", "nginx", "inferfront", "inferfront-3w", "scale", "memory")
PATHS = ("direct", "nginx", "inferfront", "inferfront-3w")
# `inferfront-3w`: three front-end workers on one port under a supervisor (--workers 3); the
# load spreads over them and every request's slot is decided by one coordinator worker.
WORKER_PATHS = {"inferfront-3w": 3}
BENCH_ENDPOINT_PATH = servers.ENDPOINT_PATH.format(name="bench")
WANTED_OPEN_FILES = 65536


@dataclass(frozen=True)
class ScaleRow:
    """A router configuration compared with 1 replica and 1 endpoint."""

    label: str
    replicas: int
    endpoints: int


FULL_SCALE_ROWS = (
    ScaleRow("100 replicas", 100, 1),
    ScaleRow("1,000 replicas", 1000, 1),
    ScaleRow("1,000 endpoints", 1, 1000),
)
QUICK_SCALE_ROWS = (ScaleRow("100 replicas", 100, 1), ScaleRow("1,000 endpoints", 1, 1000))


@dataclass(frozen=True)
class Settings:
    quick: bool
    only: frozenset[str]
    duration_s: int  # per target and measurement, split over `rounds` runs
    rounds: int
    warmup_s: int
    inferfront: Path
    port_base: int
    results_dir: Path
    strict: bool
    scale_rows: tuple[ScaleRow, ...]
    idle_connections: int = 10_000
    wrk_connections: int = 32
    # 5,000 requests/s as 50 clients x 100/s: paced by h2load (the target's measure) and in
    # hey's synchronized bursts (reported alongside).
    open_loop_clients: int = 50
    open_loop_rate_per_client: int = 100
    # Scale rows: more, shorter runs, each configuration's run right next to the base's, so the
    # median of the paired ratios shrugs off a neighbour's burst that lands on a few of them.
    scale_rounds: int = 6

    @property
    def run_s(self) -> int:
        """Length of one wrk, h2load or hey run: the targets take turns, `rounds` times each."""
        return max(1, self.duration_s // self.rounds)

    def public(self) -> dict[str, Any]:
        """The settings as they go into the results JSON."""
        values = asdict(self)
        values["only"] = sorted(self.only)
        values["inferfront"] = str(self.inferfront)
        values["results_dir"] = str(self.results_dir)
        return values


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxybench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="4 s per measurement, fewer rows")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated subset of: " + ",".join(SECTIONS),
    )
    parser.add_argument("--duration", type=int, help="seconds per measurement (8, quick: 4)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="runs per measurement; targets compared take turns so that drift hits all (2)",
    )
    parser.add_argument(
        "--inferfront",
        type=Path,
        default=REPO_ROOT / ".venv" / "bin" / "inferfront",
        help="router executable (default: .venv/bin/inferfront)",
    )
    parser.add_argument("--port-base", type=int, default=20000, help="first port to try")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--strict", action="store_true", help="exit 1 on any FAIL as well")
    args = parser.parse_args(argv)
    only = frozenset(name.strip() for name in args.only.split(",") if name.strip())
    unknown = only - set(SECTIONS)
    if unknown or not only:
        parser.error(f"--only takes a subset of {','.join(SECTIONS)}; got {args.only!r}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return Settings(
        quick=args.quick,
        only=only,
        duration_s=args.duration or (4 if args.quick else 8),
        rounds=args.rounds,
        warmup_s=1 if args.quick else 2,
        inferfront=args.inferfront,
        port_base=args.port_base,
        results_dir=args.results_dir,
        strict=args.strict,
        scale_rows=QUICK_SCALE_ROWS if args.quick else FULL_SCALE_ROWS,
    )


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """Everything one benchmark run shares: its settings, processes, ports and results."""

    settings: Settings
    children: Children
    ports: PortAllocator
    workdir: Path
    open_files: int
    results: dict[str, Any]
    model_ports: list[int] = field(default_factory=list)
    model_pid: int | None = None

    def record_error(self, message: str) -> None:
        log("ERROR: " + message)
        self.results["errors"].append(message)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    exit_cleanly_on_termination_signals()
    # Raised here, before any server starts: children inherit the limit (10k idle connections).
    open_files = raise_open_files_limit(WANTED_OPEN_FILES)
    results = _new_results(settings, open_files)
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="inferfront-bench-") as workdir:
            run = Run(
                settings,
                children,
                PortAllocator(settings.port_base),
                Path(workdir),
                open_files,
                results,
            )
            try:
                _run_all(run)
            finally:
                children.stop_all()  # before the temporary directory with their files goes
    except KeyboardInterrupt:
        log("interrupted: servers stopped, nothing saved")
        return 130
    finally:
        children.stop_all()
    results["meta"]["loadavg_end"] = _loadavg()
    markdown, checks = build_report(results)
    results["checks"] = checks
    print(markdown)
    _save(settings.results_dir, results, markdown)
    return _exit_code(settings, results, checks)


def _run_all(run: Run) -> None:
    only = run.settings.only
    try:
        run.model_ports = run.ports.take(_replica_ports_needed(run.settings))
        log(f"starting the model (nginx) on {len(run.model_ports)} port(s)")
        model = servers.start_model(run.children, run.workdir, run.model_ports, run.open_files)
        run.model_pid = model.pid
    except HarnessError as error:
        run.record_error(f"model nginx: {error}")
        return
    if only & set(PATHS):
        _measure_paths(run, [path for path in PATHS if path in only])
    if "scale" in only:
        _measure_scale(run)
    if "memory" in only:
        _measure_memory(run)


def _replica_ports_needed(settings: Settings) -> int:
    if "scale" not in settings.only:
        return 1
    return max(row.replicas for row in settings.scale_rows)


def _measure_paths(run: Run, paths: list[str]) -> None:
    """Closed loop, then open loop, over the paths taking turns; servers started once."""
    started: list[Child] = []
    targets: dict[str, Target] = {}
    try:
        for path in paths:
            try:
                port, proxy = _start_path(run, path, started)
                servers.check_answers_like_the_model(port, BENCH_ENDPOINT_PATH)
            except HarnessError as error:
                run.record_error(f"{path}: {error}")
                run.results["closed_loop"][path] = {"error": str(error)}
                run.results["open_loop"][path] = {"error": str(error)}
                run.results["open_loop_bursts"][path] = {"error": str(error)}
                continue
            targets[path] = Target(port, (BENCH_ENDPOINT_PATH,), proxy.pid if proxy else None)
        run.results["closed_loop"].update(_closed_loop(run, "closed loop", targets))
        run.results["open_loop"].update(_open_loop(run, "open loop, paced", targets, bursts=False))
        run.results["open_loop_bursts"].update(
            _open_loop(run, "open loop, bursts", targets, bursts=True)
        )
    finally:
        for child in started:
            run.children.stop(child)
    # Keep the report's row order independent of which path failed first.
    for section in ("closed_loop", "open_loop", "open_loop_bursts"):
        measured = run.results[section]
        run.results[section] = {path: measured[path] for path in PATHS if path in measured}


def _start_path(run: Run, path: str, started: list[Child]) -> tuple[int, Child | None]:
    """Start what serves `path` (adding it to `started`): the port to load and the proxy."""
    if path == "direct":
        return run.model_ports[0], None
    port = run.ports.take_one()
    if path == "nginx":
        log("starting nginx as reverse proxy")
        started.append(
            servers.start_nginx_proxy(
                run.children, run.workdir, port, run.model_ports[:1], run.open_files
            )
        )
        return port, started[-1]
    log(f"starting {path}")
    config = servers.router_config(["bench"], run.model_ports[:1])
    workers = WORKER_PATHS.get(path)
    extra = ("--workers", str(workers)) if workers else ()
    started.append(_start_router(run, path, config, port, extra))
    return port, started[-1]


def _start_router(
    run: Run, name: str, config: dict[str, object], port: int, extra_args: Sequence[str] = ()
) -> Child:
    admin_port = run.ports.take_one()
    return servers.start_router(
        run.children,
        run.settings.inferfront,
        run.workdir,
        name,
        config,
        port,
        admin_port,
        extra_args=extra_args,
    )


@dataclass(frozen=True)
class Target:
    """Where one closed-loop measurement sends its load: a port and the paths to cycle over;
    and the proxy's process (None: the model itself), whose CPU time per request is recorded."""

    port: int
    paths: Sequence[str]
    proxy_pid: int | None = None


S = TypeVar("S")


def _take_turns(
    run: Run,
    what: str,
    names: Sequence[str],
    measure_once: Callable[[str], S],
    summarize: Callable[[list[S]], dict[str, Any]],
    rounds: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure every target `rounds` times (default: the settings'), taking turns (A B C A B C),
    and summarize each.

    Load from elsewhere on the machine comes and goes; taking turns spreads it over all targets
    instead of letting it land on whichever ran at that moment. A target that fails is recorded
    as {"error": ...} and left out of later rounds.
    """
    samples: dict[str, list[S]] = {name: [] for name in names}
    failures: dict[str, str] = {}
    rounds = rounds or run.settings.rounds
    for round_number in range(1, rounds + 1):
        for name in names:
            if name in failures:
                continue
            log(f"{what}: {name}, run {round_number}/{rounds}")
            try:
                samples[name].append(measure_once(name))
            except HarnessError as error:
                run.record_error(f"{what} {name}: {error}")
                failures[name] = str(error)
    return {
        name: {"error": failures[name]} if name in failures else summarize(samples[name])
        for name in names
    }


@dataclass(frozen=True)
class _ClosedLoopPart:
    """One closed-loop run of one target, with what its processes and the kernel spent on it."""

    result: loadgen.ClosedLoopResult
    proxy_s: float | None  # CPU seconds of the proxy's processes (None: no proxy)
    model_s: float  # CPU seconds of the model's processes
    segments: int  # TCP segments sent on the machine meanwhile (all on loopback)


def _closed_loop(
    run: Run, what: str, targets: dict[str, Target], rounds: int | None = None
) -> dict[str, dict[str, Any]]:
    settings = run.settings
    connections = settings.wrk_connections
    rounds = rounds or settings.rounds
    run_s = max(1, settings.duration_s // rounds)
    warmed: dict[str, Target] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        # Warm-up: pools filled, caches and allocator arenas grown before anything counts.
        try:
            loadgen.run_wrk(target.port, target.paths, settings.warmup_s, run.workdir, connections)
            warmed[name] = target
        except HarnessError as error:
            run.record_error(f"{what} {name} (warm-up): {error}")
            results[name] = {"error": str(error)}

    def measure_once(name: str) -> _ClosedLoopPart:
        target = warmed[name]
        proxy_before, model_before = cpu_seconds(target.proxy_pid), cpu_seconds(run.model_pid)
        segments_before = tcp_segments_sent()
        result = loadgen.run_wrk(target.port, target.paths, run_s, run.workdir, connections)
        segments = tcp_segments_sent() - segments_before
        proxy_s = cpu_seconds(target.proxy_pid) - proxy_before
        model_s = cpu_seconds(run.model_pid) - model_before
        log(f"  {result.requests_per_s:,.0f} requests/s, {result.errors} errors")
        return _ClosedLoopPart(result, proxy_s if target.proxy_pid else None, model_s, segments)

    def summarize(parts: list[_ClosedLoopPart]) -> dict:
        combined = loadgen.combine_closed_loop([part.result for part in parts])
        requests = max(1, combined.requests)
        proxy_times = [part.proxy_s for part in parts if part.proxy_s is not None]
        return {
            **asdict(combined),
            "runs_requests_per_s": [part.result.requests_per_s for part in parts],
            # CPU time per request (user + system, from /proc): the work each process does per
            # request, which a busy neighbour changes far less than throughput.
            "proxy_cpu_us_per_request": sum(proxy_times) / requests * 1e6 if proxy_times else None,
            "model_cpu_us_per_request": sum(part.model_s for part in parts) / requests * 1e6,
            "tcp_segments_per_request": sum(part.segments for part in parts) / requests,
        }

    results.update(_take_turns(run, what, list(warmed), measure_once, summarize, rounds))
    return results


def _open_loop(
    run: Run, what: str, targets: dict[str, Target], bursts: bool
) -> dict[str, dict[str, Any]]:
    """Latency at the open-loop rate, taking turns: evenly paced (h2load, over each target's
    paths), or in synchronized bursts (hey, on its first path)."""
    settings = run.settings
    clients, rate = settings.open_loop_clients, settings.open_loop_rate_per_client

    def measure_once(name: str) -> loadgen.OpenLoopSample:
        target = targets[name]
        if bursts:
            sample = loadgen.run_hey(target.port, target.paths[0], settings.run_s, clients, rate)
        else:
            sample = loadgen.run_h2load_paced(
                target.port, target.paths, settings.run_s, run.workdir, clients, rate
            )
        log(f"  {len(sample.latencies_ms) / sample.duration_s:,.0f}/s answered")
        return sample

    def summarize(samples: list[loadgen.OpenLoopSample]) -> dict[str, Any]:
        return asdict(loadgen.summarize_open_loop(samples))

    return _take_turns(run, what, list(targets), measure_once, summarize)


def _measure_scale(run: Run) -> None:
    """Each configuration against a 1-replica, 1-endpoint router running at the same time, the
    two taking turns, so the 10% margin is not eaten by drift between separate runs; then the
    references, nginx and HAProxy, at the same count against themselves with one server, the
    same way. A reference that cannot start is recorded as not measured; the rest goes on."""
    started: list[Child] = []
    try:
        base_port = run.ports.take_one()
        base_config = servers.router_config(["bench"], run.model_ports[:1])
        started.append(_start_router(run, "inferfront-base", base_config, base_port))
        base = Target(base_port, (BENCH_ENDPOINT_PATH,), started[-1].pid)
        references = {proxy: _start_reference_base(run, started, proxy) for proxy in REFERENCES}
        rows = [
            {
                **asdict(row),
                **_scale_pair(run, row, base, "inferfront", _start_router_for(run, row), True),
                **{
                    proxy: _reference_pair(run, row, reference_base, proxy)
                    for proxy, reference_base in references.items()
                },
            }
            for row in run.settings.scale_rows
        ]
    except HarnessError as error:
        run.record_error(f"scale: {error}")
        run.results["scale"] = {"error": str(error)}
        return
    finally:
        for child in started:
            run.children.stop(child)
    run.results["scale"] = {"rows": rows}


def _scale_pair(
    run: Run,
    row: ScaleRow,
    base: Target,
    what: str,
    start: Callable[[int, list[str]], Child],
    paced: bool,
) -> dict[str, Any]:
    """Start what serves `row` (start(port, paths)), measure it against `base` taking turns
    (closed loop, and with `paced` the latency at the open-loop rate), then stop it."""
    paths = [servers.ENDPOINT_PATH.format(name=n) for n in servers.endpoint_names(row.endpoints)]
    port = run.ports.take_one()
    log(f"scale: starting {what} with {row.label}")
    latency = None
    try:
        child = start(port, paths)
        try:
            for path in dict.fromkeys([paths[0], paths[-1]]):
                servers.check_answers_like_the_model(port, path)
            targets = {"base": base, "row": Target(port, paths, child.pid)}
            rounds = run.settings.scale_rounds
            measured = _closed_loop(run, f"scale {what} {row.label}", targets, rounds)
            if paced:
                # Does a request take longer with many replicas or endpoints while the proxy is
                # not saturated?
                latency = _open_loop(run, f"scale {what} {row.label}, paced", targets, False)
        finally:
            run.children.stop(child)
    except HarnessError as error:
        run.record_error(f"scale {what} {row.label}: {error}")
        return {"result": {"error": str(error)}, "base": {"error": "not measured"}}
    pair = {
        "result": measured["row"],
        "base": measured["base"],
        "paired_ratio_median": _paired_ratio_median(measured["row"], measured["base"]),
    }
    if latency is not None:
        pair.update(latency=latency["row"], base_latency=latency["base"])
    return pair


def _start_router_for(run: Run, row: ScaleRow) -> Callable[[int, list[str]], Child]:
    def start(port: int, paths: list[str]) -> Child:
        names = servers.endpoint_names(row.endpoints)
        config = servers.router_config(names, run.model_ports[: row.replicas])
        return _start_router(run, f"inferfront-{row.replicas}r-{row.endpoints}e", config, port)

    return start


REFERENCES = {"nginx": servers.start_nginx_proxy, "haproxy": servers.start_haproxy_proxy}


def _start_reference_for(run: Run, row: ScaleRow, proxy: str) -> Callable[[int, list[str]], Child]:
    """A reference proxy ("nginx" or "haproxy") at the row's count: as many upstream servers
    (replica rows), or as many routes (endpoint rows)."""
    start_proxy = REFERENCES[proxy]

    def start(port: int, paths: list[str]) -> Child:
        return start_proxy(
            run.children,
            run.workdir,
            port,
            run.model_ports[: row.replicas],
            run.open_files,
            endpoint_paths=paths if row.endpoints > 1 else (),
            name=f"{proxy}-{row.replicas}r-{row.endpoints}e",
        )

    return start


def _start_reference_base(run: Run, started: list[Child], proxy: str) -> Target | str:
    """A reference proxy with one server and one route (adding it to `started`), or why it
    could not start: the references are optional when the benchmark is run directly, without
    bench/run.sh installing them."""
    port = run.ports.take_one()
    try:
        started.append(
            REFERENCES[proxy](
                run.children,
                run.workdir,
                port,
                run.model_ports[:1],
                run.open_files,
                name=f"{proxy}-base",
            )
        )
    except HarnessError as error:
        run.record_error(f"scale {proxy}: {error}")
        return str(error)
    return Target(port, (BENCH_ENDPOINT_PATH,), started[-1].pid)


def _reference_pair(run: Run, row: ScaleRow, base: Target | str, proxy: str) -> dict[str, Any]:
    """A reference's pair for `row` (closed loop only), or, when its base could not start (`base`
    is the reason), the pair's shape with that reason as the error."""
    if isinstance(base, str):
        return {"result": {"error": base}, "base": {"error": "not measured"}}
    return _scale_pair(run, row, base, proxy, _start_reference_for(run, row, proxy), False)


def _paired_ratio_median(row: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Median over rounds of row / base throughput, each pair measured one right after the other."""
    if "error" in row or "error" in base:
        return None
    pairs = zip(row["runs_requests_per_s"], base["runs_requests_per_s"], strict=False)
    ratios = [mine / theirs for mine, theirs in pairs if theirs]
    return statistics.median(ratios) if ratios else None


def _measure_memory(run: Run) -> None:
    log("memory")
    try:
        run.results["memory"] = _memory(run)
    except HarnessError as error:
        run.record_error(f"memory: {error}")
        run.results["memory"] = {"error": str(error)}


def _memory(run: Run) -> dict[str, Any]:
    count = run.settings.idle_connections
    if run.open_files < count + 1000:
        raise HarnessError(
            f"RLIMIT_NOFILE is {run.open_files}, too low for {count:,} connections "
            "(raise the hard limit, e.g. `ulimit -Hn 65536` as root)"
        )
    port = run.ports.take_one()
    config = servers.router_config(["bench"], run.model_ports[:1])
    router = _start_router(run, "inferfront-memory", config, port)
    try:
        servers.check_answers_like_the_model(port, BENCH_ENDPOINT_PATH)
        idle = _memory_reading(router.pid)
        log(f"  idle: {idle['rss_kib'] / 1024:.1f} MiB; opening {count:,} connections")

        def reading_with_connections(outcome: loadgen.IdleConnectionsOutcome) -> dict[str, Any]:
            return {**_memory_reading(router.pid), **asdict(outcome)}

        loaded = asyncio.run(
            loadgen.with_idle_connections(
                port, BENCH_ENDPOINT_PATH, count, reading_with_connections
            )
        )
        log(f"  with {loaded['opened']:,} connections: {loaded['rss_kib'] / 1024:.1f} MiB")
    finally:
        run.children.stop(router)
    return {
        "idle_rss_kib": idle["rss_kib"],
        "idle_fds": idle["fds"],
        "loaded_rss_kib": loaded["rss_kib"],
        "loaded_fds": loaded["fds"],
        "peak_rss_kib": loaded["peak_rss_kib"],
        "processes": loaded["processes"],
        "opened": loaded["opened"],
        "failed": loaded["failed"],
        "first_error": loaded["first_error"],
    }


def _memory_reading(router_pid: int) -> dict[str, Any]:
    # Summed over the router's process tree: helpers it spawns are part of its cost.
    tree = process_tree(router_pid)
    return {
        "rss_kib": sum(status_kib(pid, "VmRSS") for pid in tree),
        "peak_rss_kib": sum(status_kib(pid, "VmHWM") for pid in tree),
        "fds": sum(open_fd_count(pid) for pid in tree),
        "processes": len(tree),
    }


def _new_results(settings: Settings, open_files: int) -> dict[str, Any]:
    return {
        "meta": {
            "started_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpus": os.cpu_count(),
            "loadavg_start": _loadavg(),
            "cpu_busy_at_start": round(cpu_busy_fraction(), 3),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "commit": _git_commit(),
            "open_files_limit": open_files,
            "versions": _tool_versions(),
        },
        "settings": settings.public(),
        "closed_loop": {},
        "open_loop": {},
        "open_loop_bursts": {},
        "errors": [],
    }


def _loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _command_output(argv: Sequence[str]) -> str | None:
    try:
        completed = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (completed.stdout + completed.stderr).strip()
    return text.splitlines()[0] if text else None


def _git_commit() -> str | None:
    argv = ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None  # None: no commit yet


def _tool_versions() -> dict[str, str]:
    # First words only: "nginx version: nginx/1.22.1" -> "nginx/1.22.1", "HAProxy version
    # 2.6.12-1+deb12u4 2026/10/17 - ..." -> "2.6.12-1+deb12u4", "wrk debian/4.1.0 [epoll]
    # Copyright..." -> "debian/4.1.0"; hey and h2load have no version flag, their packages have one.
    nginx = _command_output(["nginx", "-v"]) or _command_output(["/usr/sbin/nginx", "-v"])
    haproxy = _command_output(["haproxy", "-v"]) or _command_output(["/usr/sbin/haproxy", "-v"])
    wrk = _command_output(["wrk", "-v"])
    versions = {
        "nginx": nginx.rsplit(" ", 1)[-1] if nginx else None,
        "haproxy": _word_after(haproxy, "version"),
        "wrk": wrk.split()[1] if wrk and len(wrk.split()) > 1 else None,
        "hey": _command_output(["dpkg-query", "-W", "-f=${Version}", "hey"]),
        "h2load": _command_output(["dpkg-query", "-W", "-f=${Version}", "nghttp2-client"]),
    }
    return {name: text for name, text in versions.items() if text}


def _word_after(text: str | None, marker: str) -> str | None:
    words = (text or "").split()
    return words[words.index(marker) + 1] if marker in words[:-1] else None


def _save(results_dir: Path, results: dict[str, Any], markdown: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["started_utc"].replace("-", "").replace(":", "")
    outputs = {
        f"{stamp}.md": markdown,
        f"{stamp}.json": json.dumps(results, indent=2) + "\n",
        "latest.md": markdown,
    }
    for name, text in outputs.items():
        # Written whole then renamed: a reader never sees half a file.
        partial = results_dir / f"{name}.tmp"
        partial.write_text(text)
        partial.replace(results_dir / name)
    log(f"saved {results_dir / stamp}.md and .json, and {results_dir / 'latest.md'}")


def _exit_code(settings: Settings, results: dict[str, Any], checks: list[dict[str, str]]) -> int:
    # A verdict left out because its comparison path was not asked for (--only) is no error.
    if results["errors"]:
        return 1
    if settings.strict and any(check["verdict"].startswith("FAIL") for check in checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
