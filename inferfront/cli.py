"""Command line: `inferfront serve | check | plan`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from inferfront.config import ConfigError, load_config, summarize


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.handler(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferfront", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the router")
    serve.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    serve.add_argument("--host", help="address for requests (default from the file, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port for requests (default 8080)")
    serve.add_argument("--admin-host", help="address for /metrics and /admin (default 127.0.0.1)")
    serve.add_argument("--admin-port", type=int, help="admin port (default 9090)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    cluster = serve.add_argument_group("several front-end instances")
    cluster.add_argument(
        "--cluster-dir",
        help="state directory shared by the instances of one cluster on this machine "
        "(membership and coordinator leases)",
    )
    cluster.add_argument("--instance-id", help="this instance's name (default: host-pid)")
    cluster.add_argument(
        "--coordinator-port", type=int, default=0, help="port for peers (default: any free)"
    )
    cluster.add_argument(
        "--workers",
        type=int,
        default=1,
        help="front-end processes sharing the port under a supervisor that owns the replicas",
    )
    cluster.add_argument(
        "--state-dir", help="the supervisor's state directory (default: a temp dir)"
    )
    cluster.add_argument("--worker-of", help=argparse.SUPPRESS)  # set by the supervisor
    cluster.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    check = commands.add_parser("check", help="validate a configuration file and summarize it")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(handler=cmd_check)

    plan = commands.add_parser("plan", help="how many replicas a load needs")
    plan.add_argument("--rps", type=float, help="target requests per second")
    plan.add_argument("--latency-ms", type=float, help="time to serve one request (ms)")
    plan.add_argument("--concurrency", type=int, default=1, help="requests per replica at once")
    plan.add_argument(
        "--target-utilization", type=float, default=0.7, help="0..1 or percent (default 0.7)"
    )
    plan.add_argument("--trace", help="a request trace to plan over time (see docs)")
    plan.add_argument("--bucket-s", type=float, help="trace: seconds per row (default 60)")
    plan.add_argument(
        "--prefill-ms-per-token", type=float, default=0.2, help="trace: cost per prompt token"
    )
    plan.add_argument(
        "--decode-ms-per-token", type=float, default=20.0, help="trace: cost per output token"
    )
    plan.add_argument("--model", help="trace: model filter (ServeGen rate files)")
    plan.set_defaults(handler=cmd_plan)
    return parser


def _load(path: str):
    try:
        return load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    print(summarize(config))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from inferfront.app import ClusterOptions, Listen, StartupError, run

    config = _load(args.config)
    if config is None:
        return 1
    if args.cluster_dir and not args.worker_of:
        problems = _processes_separate_instances_cannot_share(args.config, config)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = config.server
    listen = Listen(
        host=args.host or server.host,
        port=server.port if args.port is None else args.port,
        admin_host=args.admin_host or server.admin_host,
        admin_port=server.admin_port if args.admin_port is None else args.admin_port,
    )
    if args.workers > 1 and not args.worker_of:
        return _supervise(args, config, listen)
    cluster = None
    if args.worker_of:
        cluster = ClusterOptions(
            state_dir=Path(args.worker_of),
            instance_id=f"worker-{args.worker_index}",
            coordinator_host="127.0.0.1",
            supervised=True,
            expected_members=tuple(f"worker-{i}" for i in range(args.workers)),
        )
        listen.reuse_port = True
    elif args.cluster_dir:
        cluster = ClusterOptions(
            state_dir=Path(args.cluster_dir),
            instance_id=args.instance_id or f"{socket.gethostname()}-{os.getpid()}",
            coordinator_host=listen.admin_host,
            coordinator_port=args.coordinator_port,
        )
        listen.reuse_port = True
    # A worker's address is the supervisor's to announce.
    announce = logging.getLogger("inferfront").debug if args.worker_of else _announce
    try:
        uvloop.run(run(config, listen, announce=announce, cluster=cluster))
    except StartupError as exc:
        print(f"inferfront: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        print(f"inferfront: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def _processes_separate_instances_cannot_share(path: str, config) -> list[str]:
    """Deployments whose replicas are local processes, which separate instances cannot share:
    each would start (and count slots on) its own. A supervisor (--workers) can."""
    return [
        f"inferfront: {path}: endpoints[{e}].deployments[{d}].command: deployment "
        f"{deployment.name!r} of endpoint {endpoint.name!r} runs its replicas as local "
        "processes, which separate instances (--cluster-dir) cannot share: each would start its "
        "own. Run several front-ends with --workers N (one supervisor owns the replicas), or "
        "give the replicas as `urls`."
        for e, endpoint in enumerate(config.endpoints)
        for d, deployment in enumerate(endpoint.deployments)
        if deployment.command is not None
    ]


def _supervise(args: argparse.Namespace, config, listen) -> int:
    """`--workers N`: this process supervises N workers and owns the replicas."""
    import tempfile

    import uvloop

    from inferfront.supervisor.admin import serve_supervisor_admin
    from inferfront.supervisor.supervisor import run_supervisor

    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="inferfront-"))
    # Workers bind the same concrete ports: resolve "any free port" once, here.
    port = listen.port or _free_port(listen.host)
    admin_port = listen.admin_port or _free_port(listen.admin_host)

    # Each (re)started worker gets an admin port free at that moment; a fixed block next to
    # the supervisor's port could be taken by anything meanwhile.
    worker_admin_ports: dict[int, int] = {}

    def worker_argv(index: int) -> list[str]:
        worker_admin_ports[index] = _free_port(listen.admin_host)
        return [
            sys.executable, "-m", "inferfront", "serve", "-c", args.config,
            "--host", listen.host, "--port", str(port),
            "--admin-host", listen.admin_host, "--admin-port", str(worker_admin_ports[index]),
            "--log-level", args.log_level,
            "--worker-of", str(state_dir), "--worker-index", str(index),
            "--workers", str(args.workers),
        ]  # fmt: skip

    async def on_started(supervisor) -> None:
        await serve_supervisor_admin(
            supervisor, listen.admin_host, admin_port, worker_admin_ports.__getitem__
        )
        _announce(f"inferfront: serving on http://{listen.host}:{port} with {args.workers} workers")
        _announce(f"  admin on http://{listen.admin_host}:{admin_port}/admin/v1/cluster")

    uvloop.run(
        run_supervisor(
            config,
            workers=args.workers,
            state_dir=state_dir,
            worker_argv=worker_argv,
            announce=_announce,
            on_started=on_started,
        )
    )
    return 0


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _announce(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_plan(args: argparse.Namespace) -> int:
    from inferfront.scaling import planner

    target = args.target_utilization
    if target > 1:
        target /= 100
    if args.trace:
        model = {
            "prefill_ms_per_token": args.prefill_ms_per_token,
            "decode_ms_per_token": args.decode_ms_per_token,
            "latency_ms": args.latency_ms,
        }
        rows = planner.plan_trace(
            args.trace,
            bucket_s=args.bucket_s,
            concurrency=args.concurrency,
            target=target,
            model=args.model,
            **model,
        )
        print(planner.plan_assumptions(concurrency=args.concurrency, target=target, **model))
        print(planner.format_plan_table(rows))
        return 0
    if args.rps is None or args.latency_ms is None:
        print("inferfront plan: give --rps and --latency-ms, or --trace FILE", file=sys.stderr)
        return 2
    _, explanation = planner.plan_replicas(
        args.rps, args.latency_ms, concurrency=args.concurrency, target_utilization=target
    )
    print(explanation)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
