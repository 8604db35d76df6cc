"""Targets, PASS/FAIL verdicts and the Markdown report of a proxy benchmark run.

`results` is the plain dict proxybench builds (and saves as JSON); a measurement that could not be
taken is {"error": message} in place of its numbers and is reported as not measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ADDED_AVERAGE_MS_MAX = 1.5
ADDED_P99_MS_MAX = 4.0
# Latency measured while a proxy falls behind the offered rate says little: it must keep up too.
ACHIEVED_RATE_MIN_VS_DIRECT = 0.95
THROUGHPUT_MIN_VS_NGINX = 0.40
SCALE_MIN_VS_BASE = 0.90
RSS_MAX_MB = 100.0  # MB = 10^6 bytes
BUSY_CPU_WARNING = 0.25
# nginx as a proxy adds 0.1-0.3 ms at the paced rate on this machine; far more means something
# else loaded the host during the run, and every figure of it is suspect.
REFERENCE_ADDED_AVERAGE_MS_SUSPECT = 1.0

PATH_LABELS = {
    "direct": "direct",
    "nginx": "nginx-proxy",
    "inferfront": "inferfront",
    "inferfront-3w": "inferfront, 3 workers",
}
ROUTER_PATHS = ("inferfront", "inferfront-3w")

Results = Mapping[str, Any]


@dataclass(frozen=True)
class Check:
    section: str
    row: str
    target: str
    verdict: str  # PASS, FAIL or NOT MEASURED
    detail: str = ""


def build_report(results: Results) -> tuple[str, list[dict[str, str]]]:
    """The Markdown report and the list of target checks (as dicts, for the JSON file)."""
    checks: list[Check] = []
    parts = [
        _header(results),
        _closed_loop_section(results, checks),
        _open_loop_section(results, checks),
        _bursts_section(results),
        _scale_section(results, checks),
        _memory_section(results, checks),
    ]
    parts.append(_summary(checks, results.get("errors", []), _disturbed_warning(results)))
    markdown = "\n\n".join(part for part in parts if part) + "\n"
    return markdown, [asdict(check) for check in checks]


def _header(results: Results) -> str:
    meta, settings = results["meta"], results["settings"]
    load = meta.get("loadavg_start", "?")
    lines = [
        f"# inferfront proxy benchmark, {meta['started_utc']}",
        "",
        f"{meta['cpus']} CPUs, {meta.get('cpu_busy_at_start', 0):.0%} busy and load average "
        f"{load} at start; commit {meta.get('commit') or '?'}; "
        f"{'quick' if settings['quick'] else 'full'} run. Each figure: {settings['rounds']} "
        f"run(s) of {_run_s(settings)} s, the targets compared taking turns so that load from "
        "elsewhere hits them alike. Everything on 127.0.0.1; the model is nginx answering a "
        "17-byte JSON body; each proxy is one process (nginx: one worker; HAProxy: one thread) and "
        "the load generator shares the cores. The machine is noisy: read the ratios and the added "
        "latency, not the absolute figures.",
    ]
    busy = _busy_warning(meta)
    if busy:
        lines += ["", busy]
    versions = meta.get("versions", {})
    if versions:
        lines += ["", "Tools: " + "; ".join(f"{name} {text}" for name, text in versions.items())]
    return "\n".join(lines)


def _busy_warning(meta: Mapping[str, Any]) -> str | None:
    """A warning when other work kept the CPUs busy at the start: then even ratios wobble."""
    busy = meta.get("cpu_busy_at_start")
    if busy is None or busy < BUSY_CPU_WARNING:
        return None
    return (
        f"**Warning:** other work kept the CPUs {busy:.0%} busy just before the benchmark "
        "started; expect large run-to-run differences."
    )


def _run_s(settings: Mapping[str, Any]) -> int:
    return max(1, settings["duration_s"] // settings["rounds"])


def _closed_loop_section(results: Results, checks: list[Check]) -> str:
    measured = results.get("closed_loop", {})
    if not measured:
        return ""
    settings = results["settings"]
    nginx_rate = _rate(measured.get("nginx"))
    rows = []
    for path, result in measured.items():
        label = PATH_LABELS[path]
        if "error" in result:
            rows.append([label, *["-"] * 6, "NOT MEASURED: " + _first_line(result)])
            if path in ROUTER_PATHS:
                checks.append(Check("closed loop", label, _throughput_target(), "NOT MEASURED"))
            continue
        ratio = result["requests_per_s"] / nginx_rate if nginx_rate else None
        target, verdict = "-", "-"
        if path in ROUTER_PATHS:
            target = _throughput_target()
            verdict = _closed_loop_verdict(result, ratio)
            checks.append(Check("closed loop", label, target, verdict, _fmt_ratio(ratio)))
        elif result["errors"]:
            verdict = f"{result['errors']} errors"
        rows.append(
            [
                label,
                f"{result['requests_per_s']:,.0f}",
                _fmt_ratio(ratio),
                str(result["errors"]),
                _fmt_us(result.get("proxy_cpu_us_per_request")),
                _fmt_us(result.get("model_cpu_us_per_request")),
                target,
                verdict,
            ]
        )
    title = (
        f"## Closed loop: wrk -t1 -c{settings['wrk_connections']} -d{_run_s(settings)}s, "
        "POST 20-byte JSON"
    )
    note = (
        "CPU per request: user + system time of the proxy's processes and of the model's, from "
        "/proc, over the requests served (a steadier figure than throughput on a shared machine)."
    )
    header = [
        "path",
        "requests/s",
        "vs nginx-proxy",
        "errors",
        "proxy CPU us/request",
        "model CPU us/request",
        "target",
        "result",
    ]
    return f"{title}\n\n{note}\n\n" + _table(header, rows, numeric_columns={1, 2, 3, 4, 5})


def _throughput_target() -> str:
    return f">= {THROUGHPUT_MIN_VS_NGINX:.0%} of nginx-proxy"


def _closed_loop_verdict(result: Mapping[str, Any], ratio: float | None) -> str:
    if result["errors"]:
        return f"FAIL ({result['errors']} errors)"
    if ratio is None:
        return "NOT MEASURED (no nginx-proxy run to compare with)"
    return "PASS" if ratio >= THROUGHPUT_MIN_VS_NGINX else "FAIL"


def _open_loop_section(results: Results, checks: list[Check]) -> str:
    measured = results.get("open_loop", {})
    if not measured:
        return ""
    settings = results["settings"]
    clients, per_client = settings["open_loop_clients"], settings["open_loop_rate_per_client"]
    title = (
        f"## Open loop at {clients * per_client:,}/s, evenly paced: h2load --h1 -c {clients} "
        f"--rps {per_client} for {_run_s(settings)} s, POST 20-byte JSON"
    )
    period_ms = 1000 // per_client
    note = (
        f"{clients} keep-alive clients, each sending {per_client} requests/s, started one per "
        f"millisecond so that their requests interleave: every millisecond a group of about "
        f"{clients // period_ms} arrives, where hey (below) sends all {clients} at once every "
        f"{period_ms} ms."
    )
    return f"{title}\n\n{note}\n\n" + _latency_table(measured, checks, "open loop")


def _bursts_section(results: Results) -> str:
    measured = results.get("open_loop_bursts", {})
    if not measured:
        return ""
    settings = results["settings"]
    clients, per_client = settings["open_loop_clients"], settings["open_loop_rate_per_client"]
    title = (
        f"## The same rate in bursts: hey -z {_run_s(settings)}s -c {clients} -q {per_client}, "
        "POST 20-byte JSON"
    )
    note = (
        f"hey starts its {clients} workers' tickers together, so every {1000 // per_client} ms "
        f"{clients} requests arrive within microseconds: the later ones of each burst wait for "
        "the proxy to handle the earlier ones, and the added latency grows with the CPU time a "
        "proxy spends per request. No target: shown to compare proxies under bursts."
    )
    return f"{title}\n\n{note}\n\n" + _latency_table(measured, None, "bursts")


def _latency_table(measured: Mapping[str, Any], checks: list[Check] | None, section: str) -> str:
    """Rows per path; with `checks`, the routers' rows are judged against the targets."""
    direct = measured.get("direct")
    direct = None if direct is None or "error" in direct else direct
    target = (
        f"added <= {ADDED_AVERAGE_MS_MAX} ms avg, <= {ADDED_P99_MS_MAX:g} ms p99, "
        f"rate >= {ACHIEVED_RATE_MIN_VS_DIRECT:.0%} of direct"
    )
    rows = []
    for path, result in measured.items():
        label = PATH_LABELS[path]
        if "error" in result:
            rows.append([label, *["-"] * 6, "NOT MEASURED: " + _first_line(result)])
            if checks is not None and path in ROUTER_PATHS:
                checks.append(Check(section, label, target, "NOT MEASURED"))
            continue
        added_avg = result["average_ms"] - direct["average_ms"] if direct else None
        added_p99 = result["p99_ms"] - direct["p99_ms"] if direct else None
        row_target, verdict = "-", "-"
        if checks is not None and path in ROUTER_PATHS:
            row_target = target
            verdict = _open_loop_verdict(result, direct, added_avg, added_p99)
            detail = f"added {_fmt_ms(added_avg)} avg, {_fmt_ms(added_p99)} p99"
            checks.append(Check(section, label, target, verdict, detail))
        elif result["non_2xx"]:
            verdict = f"{result['non_2xx']} non-2xx"
        rows.append(
            [
                label,
                f"{result['achieved_rate']:,.0f}",
                f"{result['average_ms']:.2f}",
                f"{result['p99_ms']:.2f}",
                _fmt_ms(added_avg),
                _fmt_ms(added_p99),
                row_target,
                verdict,
            ]
        )
    header = [
        "path",
        "achieved/s",
        "average ms",
        "p99 ms",
        "added avg ms",
        "added p99 ms",
        "target",
        "result",
    ]
    return _table(header, rows, numeric_columns={1, 2, 3, 4, 5})


def _open_loop_verdict(
    result: Mapping[str, Any],
    direct: Mapping[str, Any] | None,
    added_avg: float | None,
    added_p99: float | None,
) -> str:
    if result["non_2xx"]:
        return f"FAIL ({result['non_2xx']} non-2xx)"
    if direct is None or added_avg is None or added_p99 is None:
        return "NOT MEASURED (no direct run to compare with)"
    failures = []
    if added_avg > ADDED_AVERAGE_MS_MAX:
        failures.append("average")
    if added_p99 > ADDED_P99_MS_MAX:
        failures.append("p99")
    if result["achieved_rate"] < ACHIEVED_RATE_MIN_VS_DIRECT * direct["achieved_rate"]:
        failures.append("fell behind the rate")
    return "PASS" if not failures else "FAIL (" + ", ".join(failures) + ")"


def _scale_section(results: Results, checks: list[Check]) -> str:
    scale = results.get("scale")
    if not scale:
        return ""
    target = f">= {SCALE_MIN_VS_BASE:.0%} of base"
    title = "## Scale: inferfront with many replicas or endpoints, against 1 replica and 1 endpoint"
    if "error" in scale:
        checks.append(Check("scale", "all rows", target, "NOT MEASURED", _first_line(scale)))
        return f"{title}\n\nNOT MEASURED: {_first_line(scale)}"
    rows = []
    for row in scale["rows"]:
        label, result, base = row["label"], row["result"], row["base"]
        references = [_reference_vs_base(row.get("nginx")), _reference_vs_base(row.get("haproxy"))]
        if "error" in result or "error" in base:
            reason = _first_line(result if "error" in result else base)
            rows.append(
                [label, *["-"] * 3, *references, *["-"] * 4, target, "NOT MEASURED: " + reason]
            )
            checks.append(Check("scale", label, target, "NOT MEASURED", reason))
            continue
        ratio = row.get("paired_ratio_median")
        if ratio is None:  # results saved before paired runs: the ratio of the totals
            ratio = result["requests_per_s"] / base["requests_per_s"]
        verdict = _scale_verdict(result, base, ratio)
        # Three digits: a ratio of 0.896 shown as 0.90 would contradict its FAIL.
        checks.append(Check("scale", label, target, verdict, _fmt_ratio(ratio, 3)))
        rows.append(
            [
                label,
                f"{result['requests_per_s']:,.0f}",
                f"{base['requests_per_s']:,.0f}",
                _fmt_ratio(ratio, 3),
                *references,
                _cpu_pair(result, base, "proxy_cpu_us_per_request"),
                _cpu_pair(result, base, "model_cpu_us_per_request"),
                _segments_pair(result, base),
                _latency_vs_base(row.get("latency"), row.get("base_latency")),
                target,
                verdict,
            ]
        )
    explanation = (
        "Closed-loop throughput (wrk as above) and latency at the open-loop rate. Base: a second "
        "router with 1 replica and 1 endpoint, running at the same time and taking turns with "
        "the configuration measured, in short runs one right after the other; vs base is the "
        "median of those pairs' ratios (requests/s columns: all runs together). Replica rows: "
        "one endpoint whose deployment lists "
        "N model addresses (one nginx listening on N ports). Endpoint rows: N endpoints, each "
        "with one deployment listing the same one model address, requests spread over them "
        "round robin. CPU per request (user + system, "
        "from /proc) as row / base: the router's, and the model nginx's serving the same requests "
        "on the other end of the router's connections. TCP segments per request (row / base): "
        "what the machine sent meanwhile (/proc/net/snmp OutSegs, all on loopback) over the "
        "requests served; 4 when each answer's ACK rides on the connection's next request. "
        "Latency at the open-loop rate (paced, "
        "as above): average and p99 of the configuration, and in brackets how much longer than "
        "the base's in the same run; the router is then far from saturated, so this is what "
        "many replicas or endpoints cost one request."
    )
    references = (
        "References (no target), each against itself with one server and no routes, measured the "
        "same way in the same run:\n"
        "- nginx, one worker: N upstream servers (round robin, a keep-alive cache with room for "
        "all), or N exact-match locations.\n"
        "- HAProxy, one thread: N servers (balance roundrobin, an idle-connection pool per server "
        "with room for all, reused by any request), or a map of N paths looked up per request, "
        "then the same one backend."
    )
    header = [
        "configuration",
        "requests/s",
        "base requests/s",
        "vs base",
        "nginx: same vs its base",
        "HAProxy: same vs its base",
        "router CPU us/request",
        "model CPU us/request",
        "TCP segments/request",
        "ms at open-loop rate: avg, p99 (vs base)",
        "target",
        "result",
    ]
    table = _table(header, rows, numeric_columns={1, 2, 3, 4, 5, 6, 7, 8, 9})
    return f"{title}\n\n{explanation}\n\n{references}\n\n{table}"


def _reference_vs_base(pair: Mapping[str, Any] | None) -> str:
    """A reference proxy's paired ratio; "-" when absent (results saved before it was measured)."""
    if not pair:
        return "-"
    for part in ("result", "base"):
        if "error" in pair.get(part, {}):
            return "not measured: " + _first_line(pair[part])
    return _fmt_ratio(pair.get("paired_ratio_median"))


def _latency_vs_base(latency: Mapping[str, Any] | None, base: Mapping[str, Any] | None) -> str:
    if not latency or not base or "error" in latency or "error" in base:
        return "-"
    average, p99 = latency["average_ms"], latency["p99_ms"]
    return (
        f"{average:.2f}, {p99:.2f} "
        f"({_fmt_ms(average - base['average_ms'])}, {_fmt_ms(p99 - base['p99_ms'])})"
    )


def _cpu_pair(result: Mapping[str, Any], base: Mapping[str, Any], key: str) -> str:
    return f"{_fmt_us(result.get(key))} / {_fmt_us(base.get(key))}"


def _segments_pair(result: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """Row / base; "-" for results saved before segments were counted."""
    row, base_value = result.get("tcp_segments_per_request"), base.get("tcp_segments_per_request")
    if row is None or base_value is None:
        return "-"
    return f"{row:.2f} / {base_value:.2f}"


def _scale_verdict(result: Mapping[str, Any], base: Mapping[str, Any], ratio: float) -> str:
    if result["errors"] or base["errors"]:
        return f"FAIL ({result['errors']} errors, base {base['errors']})"
    return "PASS" if ratio >= SCALE_MIN_VS_BASE else "FAIL"


def _memory_section(results: Results, checks: list[Check]) -> str:
    memory = results.get("memory")
    if not memory:
        return ""
    connections = results["settings"]["idle_connections"]
    row = f"{connections:,} idle keep-alive connections"
    target = f"<= {RSS_MAX_MB:g} MB"
    title = "## Memory: inferfront RSS (process and its children, /proc VmRSS)"
    if "error" in memory:
        checks.append(Check("memory", row, target, "NOT MEASURED", _first_line(memory)))
        return f"{title}\n\nNOT MEASURED: {memory['error']}"
    loaded_mb = memory["loaded_rss_kib"] * 1024 / 1e6
    verdict = "PASS" if loaded_mb <= RSS_MAX_MB else "FAIL"
    if memory["opened"] < connections:
        verdict = f"FAIL (only {memory['opened']:,} opened: {memory['first_error']})"
    checks.append(Check("memory", row, target, verdict, f"{loaded_mb:.1f} MB"))
    rows = [
        [
            "idle, after one request",
            f"{memory['idle_rss_kib'] * 1024 / 1e6:.1f}",
            str(memory["idle_fds"]),
            "-",
            "-",
        ],
        [row, f"{loaded_mb:.1f}", str(memory["loaded_fds"]), target, verdict],
    ]
    per_connection = (memory["loaded_rss_kib"] - memory["idle_rss_kib"]) * 1024
    note = (
        f"About {per_connection / max(1, memory['opened']) / 1e3:.1f} kB per connection; each "
        "connection sent one request and then stayed open and idle. Open fds = the router's open "
        "file descriptors at the time of the reading (shows the connections were still held)."
    )
    header = ["state", "RSS MB", "open fds", "target", "result"]
    return f"{title}\n\n{_table(header, rows, numeric_columns={1, 2})}\n\n{note}"


def _disturbed_warning(results: Results) -> str | None:
    """A warning when the reference itself was slow at the paced rate: the host was loaded."""
    paced = results.get("open_loop", {})
    nginx, direct = paced.get("nginx"), paced.get("direct")
    if not nginx or not direct or "error" in nginx or "error" in direct:
        return None
    added = nginx["average_ms"] - direct["average_ms"]
    if added <= REFERENCE_ADDED_AVERAGE_MS_SUSPECT:
        return None
    return (
        f"**Warning:** nginx as a proxy itself added {added:.2f} ms on average at the paced rate "
        "(usually under 0.3 ms here): something else loaded the machine during this run, so "
        "its figures say more about that than about the proxies."
    )


def _summary(checks: list[Check], errors: list[str], warning: str | None = None) -> str:
    counts = {verdict: 0 for verdict in ("PASS", "FAIL", "NOT MEASURED")}
    for check in checks:
        counts[check.verdict.split(" (")[0]] += 1
    lines = [
        "## Summary",
        "",
        f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['NOT MEASURED']} not measured.",
    ]
    if warning:
        lines += ["", warning]
    lines += [f"- harness error: {_first_line({'error': error})}" for error in errors]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], numeric_columns: set[int]) -> str:
    align = ["---:" if index in numeric_columns else "---" for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(result: Mapping[str, Any] | None) -> float | None:
    if not result or "error" in result:
        return None
    return result["requests_per_s"]


def _fmt_ratio(ratio: float | None, digits: int = 2) -> str:
    return "-" if ratio is None else f"{ratio:.{digits}f}"


def _fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _first_line(result: Mapping[str, Any]) -> str:
    return str(result["error"]).splitlines()[0][:300]
