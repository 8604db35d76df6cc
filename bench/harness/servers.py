"""The servers a proxy benchmark runs: nginx as the stand-in model and as the reference proxy,
HAProxy as the second reference for the scale rows, and the inferfront router under test. Each is
started through `Children` and is ready on return."""

from __future__ import annotations

import http.client
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench.harness.procs import Child, Children, HarnessError, wait_until

BENCH_DIR = Path(__file__).resolve().parents[1]
NGINX_TEMPLATES = BENCH_DIR / "nginx"
HAPROXY_TEMPLATES = BENCH_DIR / "haproxy"
MODEL_BODY = b'{"ok":true,"n":1}'
REQUEST_BODY = b'{"data":[1,2,3,4,5]}'  # 20 bytes, as in the reference measurements
ENDPOINT_PATH = "/api/v1/endpoint/{name}/score"
DEPLOYMENT_NAME = "blue"  # names need 3-32 characters


def find_executable(name: str, extra_dirs: Sequence[str] = ("/usr/sbin", "/usr/local/sbin")) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    raise HarnessError(f"`{name}` is not installed: run `make bench` (bench/run.sh installs it)")


def post(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One POST of the benchmark body on a fresh connection: (status, response body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", path, REQUEST_BODY, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_answers_like_the_model(port: int, path: str) -> None:
    """Raise unless `path` on `port` returns the model's answer: a proxy that answers 404 or 503
    quickly would otherwise look fast."""
    try:
        status, body = post(port, path)
    except OSError as error:
        raise HarnessError(f"POST 127.0.0.1:{port}{path} failed: {error}") from error
    if status != 200 or body != MODEL_BODY:
        raise HarnessError(
            f"POST 127.0.0.1:{port}{path} answered {status} {body[:200]!r}, "
            f"expected 200 {MODEL_BODY!r}"
        )


def _answers(port: int, path: str) -> bool:
    try:
        return post(port, path, timeout_s=1.0) == (200, MODEL_BODY)
    except OSError:
        return False


def _exited(child: Child) -> str | None:
    if child.running():
        return None
    tail = child.log_tail()
    last_line = next((line for line in reversed(tail.splitlines()) if line.strip()), "no output")
    # The last line first, where a one-line summary will show it; the tail for the JSON and log.
    return f"exited with code {child.popen.returncode}: {last_line}\nlast output:\n{tail}"


def _render(template: Path, values: dict[str, str]) -> str:
    # {{NAME}} placeholders: nginx's own $variables must pass through untouched.
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise HarnessError(f"{template.name}: unfilled placeholder left")
    return text


def _start_nginx(
    children: Children, name: str, workdir: Path, template: str, values: dict[str, str]
) -> Child:
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    common = {"PID_FILE": str(home / "nginx.pid"), "ERROR_LOG": str(home / "error.log")}
    config = home / "nginx.conf"
    values = {**common, "TEMP_DIR": str(home), **values}
    config.write_text(_render(NGINX_TEMPLATES / template, values))
    argv = [find_executable("nginx"), "-p", str(home), "-e", str(home / "error.log")]
    return children.start(name, [*argv, "-c", str(config)], home / "output.log")


def _nginx_limits(open_files: int) -> dict[str, str]:
    # The worker cannot go above the hard limit it inherits; leave room for files and listeners.
    return {"NOFILE": str(open_files), "WORKER_CONNECTIONS": str(max(1024, open_files - 64))}


def start_model(children: Children, workdir: Path, ports: Sequence[int], open_files: int) -> Child:
    """nginx with one worker answering MODEL_BODY on every port in `ports` (one per replica)."""
    listen = "\n".join(f"        listen 127.0.0.1:{port};" for port in ports)
    values = {"LISTEN_LINES": listen, **_nginx_limits(open_files)}
    child = _start_nginx(children, "model-nginx", workdir, "upstream.conf.template", values)
    for port in {ports[0], ports[-1]}:
        wait_until(
            lambda port=port: _answers(port, "/"),
            30,
            f"model nginx on port {port}",
            lambda: _exited(child),
        )
    return child


def start_nginx_proxy(
    children: Children,
    workdir: Path,
    port: int,
    model_ports: Sequence[int],
    open_files: int,
    endpoint_paths: Sequence[str] = (),
    name: str = "nginx-proxy",
) -> Child:
    """nginx with one worker proxying round robin to `model_ports` over pooled keep-alive
    connections; with `endpoint_paths`, one location block per path (as many routes as a
    router with that many endpoints), each proxying to the same upstream servers."""
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in model_ports)
    # Room for an idle connection to every server: a smaller cache would reconnect per request.
    keepalive = max(64, 2 * len(model_ports))
    locations = "\n".join(
        f"        location = {path} {{ proxy_pass http://model; proxy_http_version 1.1; "
        'proxy_set_header Connection ""; }'
        for path in endpoint_paths
    )
    values = {
        "PORT": str(port),
        "UPSTREAM_SERVERS": servers,
        "KEEPALIVE": str(keepalive),
        "ENDPOINT_LOCATIONS": locations,
        **_nginx_limits(open_files),
    }
    child = _start_nginx(children, name, workdir, "proxy.conf.template", values)
    wait_until(lambda: _answers(port, "/"), 30, name, lambda: _exited(child))
    return child


def start_haproxy_proxy(
    children: Children,
    workdir: Path,
    port: int,
    model_ports: Sequence[int],
    open_files: int,
    endpoint_paths: Sequence[str] = (),
    name: str = "haproxy-proxy",
) -> Child:
    """HAProxy with one thread proxying round robin to `model_ports`, reusing idle keep-alive
    connections kept per server; with `endpoint_paths`, each request's path is looked up in a map
    of those paths (unknown paths get 404) before the one backend, as a router resolves one of N
    endpoints and still shares its connections to a replica across them."""
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"    server model-{p} 127.0.0.1:{p}" for p in model_ports)
    values = {
        "PORT": str(port),
        "MAXCONN": str(_haproxy_maxconn(open_files)),
        "SERVERS": servers,
        "ENDPOINT_RULES": _haproxy_endpoint_rules(home, endpoint_paths),
    }
    config = home / "haproxy.cfg"
    config.write_text(_render(HAPROXY_TEMPLATES / "proxy.cfg.template", values))
    # -db: in the foreground, one process, so that Children stops it like any other child.
    argv = [find_executable("haproxy"), "-db", "-f", str(config)]
    child = children.start(name, argv, home / "output.log")
    # "/" is not in the map: wait on a path that is.
    ready_path = endpoint_paths[0] if endpoint_paths else "/"
    wait_until(lambda: _answers(port, ready_path), 30, name, lambda: _exited(child))
    return child


def _haproxy_maxconn(open_files: int) -> int:
    # HAProxy wants 2 fds per connection plus a few of its own (measured: 2 * maxconn + 14 with
    # one listener) and refuses to start if it cannot raise its limit that far.
    return max(64, (open_files - 64) // 2)


def _haproxy_endpoint_rules(home: Path, endpoint_paths: Sequence[str]) -> str:
    """Frontend lines resolving the request's path in a map with one line per endpoint path (an
    exact-match tree lookup, as a router finds the endpoint by name); none without paths."""
    if not endpoint_paths:
        return ""
    map_file = home / "endpoints.map"
    map_file.write_text("".join(f"{path} {index}\n" for index, path in enumerate(endpoint_paths)))
    return (
        f"    http-request set-var(txn.endpoint) path,map_str({map_file})\n"
        "    http-request deny deny_status 404 if !{ var(txn.endpoint) -m found }"
    )


def endpoint_names(count: int) -> list[str]:
    return ["bench"] if count == 1 else [f"bench-{index}" for index in range(count)]


def router_config(endpoints: Sequence[str], replica_ports: Sequence[int]) -> dict[str, object]:
    """The router's YAML config: every endpoint has one deployment listing every replica port."""
    deployment = {
        "name": DEPLOYMENT_NAME,
        "urls": [f"http://127.0.0.1:{port}" for port in replica_ports],
        "request_settings": {
            "max_concurrent_requests_per_instance": 1000,
            "max_queued_requests": 100000,
            "request_timeout_ms": 60000,
            "max_queue_wait_ms": 60000,
        },
    }
    return {
        "server": {"access_log": False},
        "endpoints": [
            {
                "name": name,
                "auth_mode": "none",
                "traffic": {DEPLOYMENT_NAME: 100},
                "deployments": [deployment],
            }
            for name in endpoints
        ],
    }


def start_router(
    children: Children,
    executable: Path,
    workdir: Path,
    name: str,
    config: dict[str, object],
    port: int,
    admin_port: int,
    ready_timeout_s: float = 60,
    extra_args: Sequence[str] = (),
) -> Child:
    """One `inferfront serve` process, returned once GET /readyz on the admin port answers 200."""
    if not executable.is_file():
        raise HarnessError(
            f"inferfront executable not found at {executable}: install the project into .venv "
            "(`make bench` does) or pass --inferfront PATH"
        )
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "inferfront.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [str(executable), "serve", "-c", str(config_path)]
    argv += ["--port", str(port), "--admin-port", str(admin_port), *extra_args]
    child = children.start(name, argv, home / "output.log")
    wait_until(
        lambda: _ready(admin_port),
        ready_timeout_s,
        f"inferfront ({name}) GET /readyz on admin port {admin_port}",
        lambda: _exited(child),
    )
    return child


def _ready(admin_port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1.0)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()
