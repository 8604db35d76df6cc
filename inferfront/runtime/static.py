"""Replicas the router did not start (a deployment given as `urls`): probe them, never scale them.

Decisions worth knowing:
- `start()` probes every address once, concurrently, and returns after those first probes, so
  replicas that answer are ready (routable) when the router starts serving. A replica needs
  `readiness.success_threshold` successes in a row to turn ready (1 by default: "right away").
- Not-ready replicas are probed every `startup_poll_s`, ready ones every `readiness.period`;
  `initial_delay` is ignored (these servers are already running).
- `scale_to` cannot add or remove servers it does not own: it logs (once per requested count)
  and ignores the request; `current` stays the number of addresses.
- `stop()` stops probing, marks every replica draining, waits (bounded by `timeout`) for their
  requests in flight to finish, then removes them. The servers themselves keep running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from inferfront.runtime.base import ReplicaEvents
from inferfront.runtime.logs import ReplicaLog
from inferfront.runtime.probes import ProbeSpec, ReplicaInfo, ReplicaState
from inferfront.runtime.server_watches import REPORTED_FAILURE, ServerWatches, WatchMembership

DRAIN_POLL_S = 0.05


class _StaticReplica:
    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.state: ReplicaState = "starting"
        self.started_at = time.time()
        self.readiness: WatchMembership | None = None
        self.probing: asyncio.Task[None] | None = None


class StaticRuntime:
    """Watches the fixed replicas of a `urls` deployment."""

    def __init__(
        self,
        deployment_name: str,
        addresses: Sequence[tuple[str, int]],
        events: ReplicaEvents,
        *,
        readiness: ProbeSpec,
        log: logging.Logger,
        startup_poll_s: float = 0.1,
    ) -> None:
        self.deployment_name = deployment_name
        self._events = events
        self._readiness = readiness
        self._log = log
        self._startup_poll_s = startup_poll_s
        self._replicas = [
            _StaticReplica(f"{deployment_name}-{index}", host, port)
            for index, (host, port) in enumerate(addresses)
        ]
        self._ignored_scale: int | None = None
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Announce every replica, probe each once (concurrently), then keep probing."""
        if self._started:
            raise RuntimeError(f"deployment {self.deployment_name!r}: runtime already started")
        self._started = True
        # Other deployments may list the same servers: one watch per server serves them all.
        watches = ServerWatches.for_running_loop()
        for replica in self._replicas:
            replica.readiness = watches.join(
                replica.host,
                replica.port,
                self._readiness,
                self._startup_poll_s,
                on_change=lambda ready, why, r=replica: self._set_ready(r, ready, why),
            )
            self._events.replica_added(replica.name, replica.host, replica.port)
        await asyncio.gather(*(self._watch(r).probe_once() for r in self._replicas))
        for replica in self._replicas:
            if replica.state == "starting":
                self._log_for(replica).warning(
                    "%s:%d does not answer its readiness probe yet", replica.host, replica.port
                )
            replica.probing = asyncio.create_task(
                self._watch(replica).run(), name=f"{replica.name}-readiness"
            )

    async def scale_to(self, count: int) -> None:
        """Static replicas cannot be scaled: logged and ignored."""
        if count != self._ignored_scale:
            self._ignored_scale = count
            self._log.info(
                "deployment %s: static replicas (urls) cannot be scaled; ignoring scale_to(%d)",
                self.deployment_name,
                count,
            )

    async def stop(self, timeout: float) -> None:
        """Stop probing, drain (bounded by `timeout`), remove. Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop_all(timeout))
        await asyncio.shield(self._stop_task)

    def report_failure(self, name: str) -> None:
        """Out of routing until a readiness probe answers again."""
        replica = next((r for r in self._replicas if r.name == name), None)
        if replica is None or replica.readiness is None or replica.state == "draining":
            return
        if replica.readiness.report_failure():
            self._set_ready(replica, False, REPORTED_FAILURE)

    @property
    def current(self) -> int:
        return sum(1 for r in self._replicas if r.state != "draining")

    @property
    def starting(self) -> int:
        """Replicas that never answered a probe yet."""
        return sum(1 for r in self._replicas if r.state == "starting")

    def replicas(self) -> list[ReplicaInfo]:
        return [
            ReplicaInfo(r.name, r.host, r.port, None, r.state, 0, r.started_at)
            for r in self._replicas
        ]

    def _set_ready(self, replica: _StaticReplica, ready: bool, reason: str) -> None:
        if replica.state == "draining":
            return
        if ready:
            self._log_for(replica).info("ready")
            replica.state = "ready"
        elif replica.state == "ready":
            self._log_for(replica).warning("unready: %s", reason)
            replica.state = "unready"
        else:
            return  # never announced ready: nothing to take back
        self._events.replica_ready(replica.name, ready)

    async def _stop_all(self, timeout: float) -> None:
        if not self._started:
            self._started = True  # nothing was announced; and no start after a stop
            return
        probing = [r.probing for r in self._replicas if r.probing is not None]
        for task in probing:
            task.cancel()
        await asyncio.gather(*probing, return_exceptions=True)
        for replica in self._replicas:
            if replica.readiness is not None:  # also those stopped before their probing began
                replica.readiness.leave()
            replica.state = "draining"
            self._events.replica_draining(replica.name)
        await self._wait_drained(asyncio.get_running_loop().time() + max(timeout, 0.0))
        for replica in self._replicas:
            self._events.replica_removed(replica.name)

    async def _wait_drained(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            busy = {
                r.name: n
                for r in self._replicas
                if (n := self._events.replica_inflight(r.name)) > 0
            }
            if not busy:
                return
            if loop.time() >= deadline:
                self._log.warning(
                    "deployment %s: drain timed out with requests in flight: %s",
                    self.deployment_name,
                    busy,
                )
                return
            await asyncio.sleep(DRAIN_POLL_S)

    @staticmethod
    def _watch(replica: _StaticReplica) -> WatchMembership:
        assert replica.readiness is not None
        return replica.readiness

    def _log_for(self, replica: _StaticReplica) -> ReplicaLog:
        return ReplicaLog(self._log, self.deployment_name, replica.name)
