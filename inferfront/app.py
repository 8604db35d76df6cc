"""Wiring: configuration -> live endpoints, replica runtimes, the proxy and the admin server; and
an orderly shutdown (stop accepting, drain, stop replicas)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from inferfront.admin.server import AdminServer
from inferfront.cluster.local import LocalMembership, MemberIdInUse
from inferfront.config import Config, Deployment
from inferfront.coordinator.node import ClusterNode
from inferfront.endpoints import DeploymentState, Endpoints
from inferfront.proxy.pool_probe import probe_on_idle_connection
from inferfront.proxy.server import Proxy
from inferfront.runtime.local import LocalProcessRuntime
from inferfront.runtime.probe_client import KeptConnections, Lender
from inferfront.runtime.probes import ProbeSpec
from inferfront.runtime.static import StaticRuntime
from inferfront.scaling.autoscaler import Autoscaler, policy_from_settings
from inferfront.supervisor.worker_link import RemoteRuntime, SupervisorLink
from inferfront.telemetry.accesslog import AccessLog
from inferfront.telemetry.metrics import Metrics

log = logging.getLogger("inferfront")


class StartupError(Exception):
    """The router cannot start as configured (the message says what to fix)."""


@dataclass
class Listen:
    host: str
    port: int
    admin_host: str
    admin_port: int
    reuse_port: bool = False  # several processes share the request port (workers)


@dataclass
class ClusterOptions:
    """Run as one of several front-end instances that share coordination state."""

    state_dir: Path
    instance_id: str
    coordinator_host: str = "127.0.0.1"
    coordinator_port: int = 0
    supervised: bool = False  # a worker: replicas are the supervisor's (state_dir has its socket)
    expected_members: tuple[str, ...] = ()  # instances started together (a supervisor's workers)


def probe_spec(probe) -> ProbeSpec:
    return ProbeSpec(
        path=probe.path,
        initial_delay=probe.initial_delay,
        period=probe.period,
        timeout=probe.timeout,
        success_threshold=probe.success_threshold,
        failure_threshold=probe.failure_threshold,
    )


def make_runtime(config: Deployment, state: DeploymentState, drain_timeout_s: float):
    replica_log = logging.getLogger(f"inferfront.replica.{state.endpoint}.{state.name}")
    readiness = probe_spec(config.readiness_probe)
    if config.command is not None:
        return LocalProcessRuntime(
            f"{state.endpoint}-{state.name}",
            config.command,
            state,
            env=config.env,
            cwd=config.cwd,
            readiness=readiness,
            liveness=probe_spec(config.liveness_probe),
            initial_replicas=config.initial_replicas,
            log=replica_log,
            drain_timeout_s=drain_timeout_s,
        )
    return StaticRuntime(state.name, config.addresses, state, readiness=readiness, log=replica_log)


class Router:
    """One router process: every configured endpoint, served on one port."""

    def __init__(
        self,
        config: Config,
        listen: Listen,
        cluster: ClusterOptions | None = None,
        runtime_factory=None,
    ) -> None:
        self.config = config
        self.listen = listen
        self.cluster = cluster
        self.node: ClusterNode | None = None
        self.supervisor_link: SupervisorLink | None = None
        # How each deployment's replicas are run: in-process runtimes by default; a worker
        # under a supervisor gets proxies to the supervisor's runtimes instead.
        self.runtime_factory = runtime_factory or (
            lambda state: make_runtime(state.config, state, config.server.drain_timeout_s)
        )
        self.endpoints = Endpoints(list(config.endpoints))
        self.proxy: Proxy | None = None
        self.admin: AdminServer | None = None
        self.access_log: AccessLog | None = None
        self._stopping = asyncio.Event()
        self._probe_lender: Lender | None = None

    def deployments(self) -> list[DeploymentState]:
        return list(self.endpoints.deployments())

    def ready(self) -> tuple[bool, str]:
        if self.proxy is None or self._stopping.is_set():
            return False, "not accepting requests"
        return True, ""

    async def start(self) -> None:
        server = self.config.server
        # Probes of this router's replicas may borrow its idle keep-alive connections.
        lender = partial(probe_on_idle_connection, self.endpoints.pools, server.limits)
        KeptConnections.for_running_loop().add(lender)
        self._probe_lender = lender
        if self.cluster is not None and self.cluster.supervised:
            await self._attach_to_supervisor(self.cluster.state_dir)
        else:
            for state in self.endpoints.deployments():
                state.runtime = self.runtime_factory(state)
            await asyncio.gather(*(self._start_runtime(s) for s in self.endpoints.deployments()))
        if self.cluster is None:
            for state in self.endpoints.deployments():
                self._coordinating(state, True)
        else:
            await self._join_cluster(self.cluster)
        loop = asyncio.get_running_loop()
        if server.access_log:
            self.access_log = AccessLog(sys.stdout)
            self.access_log.start(loop)
        self.proxy = Proxy(
            self.endpoints,
            server.limits,
            retries=server.retries,
            access_log=self.access_log,
            instance=self.cluster.instance_id if self.cluster else None,
        )
        await self.proxy.listen(
            self.listen.host, self.listen.port, reuse_port=self.listen.reuse_port
        )
        metrics = Metrics(self.deployments, extra=self._extra_metrics)
        # In a cluster, deployments coordinated elsewhere are shown as their coordinator sees them.
        overlays = self.node.admin_overlays if self.node is not None else None
        self.admin = AdminServer(metrics, self.deployments, self.ready, overlays=overlays)
        self.admin.add_json_route("/admin/v1/cluster", self.cluster_view)
        await self.admin.start(self.listen.admin_host, self.listen.admin_port)

    async def _start_runtime(self, state: DeploymentState) -> None:
        try:
            await state.runtime.start()
        except OSError as exc:
            command = " ".join(state.config.command or ())
            raise StartupError(
                f"{self.config.source}: endpoint {state.endpoint}, deployment {state.name}: "
                f"cannot start `{command}`: {exc.strerror or exc}"
            ) from exc

    def _coordinating(self, state: DeploymentState, coordinating: bool) -> None:
        """Only a deployment's coordinator decides its scaling."""
        if coordinating and state.config.autoscaled and state.scaler is None:
            policy = policy_from_settings(state.config.scale_settings)
            state.scaler = Autoscaler(state.key, policy, state.table, state.runtime)
            state.scaler.start()
        elif not coordinating and state.scaler is not None:
            scaler, state.scaler = state.scaler, None
            asyncio.get_running_loop().create_task(scaler.stop())

    async def _attach_to_supervisor(self, state_dir: Path) -> None:
        """A worker: replica events come from the supervisor, which owns the replicas."""
        states = {s.key: s for s in self.endpoints.deployments()}
        self.supervisor_link = SupervisorLink(state_dir, states)
        for key, state in states.items():
            state.runtime = RemoteRuntime(self.supervisor_link, key)
        await self.supervisor_link.connect()

    async def _join_cluster(self, options: ClusterOptions) -> None:
        text = self.config.source.read_text() if self.config.source else ""
        self.node = ClusterNode(
            options.instance_id,
            self.deployments(),
            lambda member: LocalMembership(options.state_dir, member),
            config_text=text,
            host=options.coordinator_host,
            port=options.coordinator_port,
            on_role_change=self._coordinating,
            expected_members=options.expected_members,
        )
        try:
            await self.node.start()
        except MemberIdInUse as exc:
            raise StartupError(
                f"instance id {options.instance_id!r} is in use by a live instance sharing "
                f"{options.state_dir}: give each instance its own --instance-id"
            ) from exc

    def cluster_view(self) -> dict:
        if self.node is None:
            return {"instance": None, "members": [], "coordinators": []}
        return self.node.snapshot()

    def _extra_metrics(self):
        proxy = self.proxy
        if proxy is not None:
            yield ("open_connections", "Client connections open.", len(proxy.connections), {})
            yield (
                "mirror_copies_skipped",
                "Mirror copies not sent since start (no free slot, or body too large).",
                proxy.mirrors.skipped,
                {},
            )
        node = self.node
        if node is None:
            return
        view = node.snapshot()
        yield ("cluster_members", "Live front-end instances.", len(view["members"]), {})
        for role in view["coordinators"]:
            coordinator = role["coordinator"] or ""
            yield (
                "coordinator",
                "1 for the instance that coordinates the deployment (as this instance sees it).",
                1,
                {"deployment": role["deployment"], "instance": coordinator},
            )
            if role["since"] is not None:
                yield (
                    "coordinator_since_seconds",
                    "When the coordinator took the deployment over (Unix time).",
                    role["since"],
                    {"deployment": role["deployment"], "instance": coordinator},
                )

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then stop the replicas."""
        self._stopping.set()
        drain = self.config.server.drain_timeout_s
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        if proxy is not None:
            proxy.stop_accepting()
            proxy.close_idle()
            deadline = loop.time() + drain
            while proxy.busy() and loop.time() < deadline:
                await asyncio.sleep(0.05)  # polling a count, bounded by the drain deadline
                proxy.close_idle()
        for state in self.endpoints.deployments():
            if state.scaler is not None:
                await state.scaler.stop()
        if self.node is not None:
            await self.node.stop()
        if self.supervisor_link is not None:
            await self.supervisor_link.close()
        runtimes = [s.runtime for s in self.endpoints.deployments() if s.runtime is not None]
        await asyncio.gather(*(r.stop(drain) for r in runtimes), return_exceptions=True)
        if proxy is not None:
            for conn in list(proxy.connections):
                conn._abort()
            proxy.close()
        if self._probe_lender is not None:
            KeptConnections.for_running_loop().remove(self._probe_lender)
        self.endpoints.pools.close()
        if self.admin is not None:
            await self.admin.close()
        if self.access_log is not None:
            self.access_log.close()


async def run(
    config: Config, listen: Listen, announce=print, cluster: ClusterOptions | None = None
) -> None:
    router = Router(config, listen, cluster)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, router.request_stop)
    try:
        await router.start()
        announce_start(router, announce)
        await router.wait_stopped()
        announce("inferfront: stopping (draining requests in flight)")
    finally:
        await router.stop()


def announce_start(router: Router, announce) -> None:
    listen = router.listen
    port = router.proxy.port if router.proxy else listen.port
    base = f"http://{listen.host}:{port}"
    announce(
        f"inferfront: serving on {base} (admin on http://{listen.admin_host}:{router.admin.port})"
    )
    for endpoint in router.endpoints.by_name.values():
        url = f"{base}/api/v1/endpoint/{endpoint.name}/score"
        auth = " -H 'Authorization: Bearer <key>'" if endpoint.auth_required else ""
        announce(f"  endpoint {endpoint.name}: {url}")
        announce(
            f"    try: curl -s {url}{auth} -H 'Content-Type: application/json' "
            """-d '{"data": [[5.1, 3.5, 1.4, 0.2]]}'"""
        )
