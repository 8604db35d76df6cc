"""The seam between replica runtimes (mechanics) and the routing table (policy).

A runtime owns replica lifecycles (start, probe, restart, stop) and reports what it sees through
`ReplicaEvents`; it never decides routing. The routing side reports connect failures back through
`ReplicaRuntime.report_failure` so the runtime can take a replica out until a probe sees it healthy.
"""

from __future__ import annotations

from typing import Protocol


class ReplicaEvents(Protocol):
    """Callbacks a runtime makes into the deployment's routing table (on the event loop)."""

    def replica_added(self, name: str, host: str, port: int) -> None:
        """A replica exists (starting); it takes no traffic until `replica_ready(name, True)`."""

    def replica_ready(self, name: str, ready: bool) -> None:
        """Readiness changed: ready replicas take traffic, unready ones keep only what they have."""

    def replica_draining(self, name: str) -> None:
        """The runtime is about to stop this replica: route nothing new to it."""

    def replica_inflight(self, name: str) -> int:
        """Requests in flight on the replica (a draining runtime waits for zero)."""

    def replica_removed(self, name: str) -> None:
        """The replica is gone."""


class ReplicaRuntime(Protocol):
    """Starts, watches and stops the replicas of one deployment."""

    async def start(self) -> None:
        """Bring up the initial replicas (returns once they are launched, not necessarily ready)."""

    async def scale_to(self, count: int) -> None:
        """Converge on `count` replicas: start new ones, or drain and stop surplus idle ones."""

    async def stop(self, timeout: float) -> None:
        """Drain (bounded by `timeout` seconds) and stop every replica. Leaves no process behind."""

    def report_failure(self, name: str) -> None:
        """The proxy could not connect to this replica (consecutive failures past the threshold)."""

    @property
    def current(self) -> int:
        """Replicas that exist (starting, ready or not), excluding ones being stopped."""

    @property
    def starting(self) -> int:
        """Replicas launched but not yet ready."""
