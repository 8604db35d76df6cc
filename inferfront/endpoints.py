"""Live state of the configured endpoints and deployments: what the proxy routes with.

A `DeploymentState` joins the routing decision (its `SlotTable`), the replica runtime that feeds
it (through the `ReplicaEvents` callbacks), the keep-alive pools to its replicas and its counters.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from inferfront.proxy.upstream import UpstreamPool, UpstreamPools
from inferfront.routing.slots import Replica, SlotTable
from inferfront.routing.traffic import Mirror, TrafficSplit
from inferfront.telemetry.stats import DeploymentStats

if TYPE_CHECKING:
    from inferfront.config import Deployment, Endpoint
    from inferfront.coordinator.broker import Broker
    from inferfront.proxy.exchange import Exchange
    from inferfront.runtime.base import ReplicaRuntime

# Connection refused means nothing listens: one is enough to stop routing there until a probe
# answers. Other connect errors (timeouts, unreachable) may be passing: take a few.
REFUSED_FAILURES_TO_UNROUTE = 1
OTHER_FAILURES_TO_UNROUTE = 3


class DeadlineQueues:
    """Requests under way with their deadlines, one insertion-ordered queue per distinct
    request timeout, shared by every deployment with that timeout.

    Arrival order is deadline order within a queue, so the proxy's sweep only looks at the front
    of each. Sharing matters with many deployments: a request touches one queue that every
    request keeps warm, and the sweep visits a handful of queues instead of every deployment.
    """

    __slots__ = ("by_timeout",)

    def __init__(self) -> None:
        self.by_timeout: dict[float, OrderedDict[Exchange, float]] = {}

    def for_timeout(self, timeout_s: float) -> OrderedDict[Exchange, float]:
        queue = self.by_timeout.get(timeout_s)
        if queue is None:
            queue = self.by_timeout[timeout_s] = OrderedDict()
        return queue


class PooledReplica(Replica):
    """A replica of the routing table with the data plane's keep-alive pool to it (None once
    removed). Held here rather than looked up by address per request: with 1,000 replicas that
    lookup found the address and the dict entry cold in the CPU cache each time."""

    __slots__ = ("pool",)

    def __init__(self, name: str, host: str, port: int, pool: UpstreamPool) -> None:
        super().__init__(name, host, port)
        self.pool: UpstreamPool | None = pool


class DeploymentState:
    """One deployment of one endpoint, as the data plane sees it."""

    # Slots keep the attributes a request reads in the object itself (one cache line fewer to
    # fetch per object: with 1,000 endpoints each request finds its deployment cold).
    __slots__ = (
        "_connect_failures",
        "_pools",
        "_was_ready",
        "config",
        "deadlines",
        "endpoint",
        "key",
        "name",
        "name_bytes",
        "pools",
        "queue_wait_s",
        "runtime",
        "scaler",
        "scales_from_zero",
        "scoring_route",
        "slots",
        "stats",
        "table",
        "timeout_s",
    )

    def __init__(
        self,
        endpoint: str,
        config: Deployment,
        pools: UpstreamPools,
        deadlines: DeadlineQueues,
    ) -> None:
        self.endpoint = endpoint
        self.name = config.name
        self.config = config
        self.name_bytes = config.name.encode()
        settings = config.request_settings
        self.scoring_route = config.scoring_route.encode()
        self.timeout_s = settings.request_timeout_ms / 1000
        self.queue_wait_s = settings.max_queue_wait_ms / 1000
        self.key = f"{endpoint}/{config.name}"
        self.scales_from_zero = config.autoscaled and config.scale_settings.min_instances == 0
        # The replica registry, and the routing decision when this instance makes it.
        self.table = SlotTable(
            settings.max_concurrent_requests_per_instance, config.effective_max_queued_requests
        )
        # What the proxy asks for a slot: the table itself, or a cluster Broker in front of it.
        self.slots: SlotTable | Broker = self.table
        self.stats = DeploymentStats()
        self.runtime: ReplicaRuntime | None = None
        self._pools = pools
        self.pools = pools.by_address  # replica address -> keep-alive pool (shared)
        self._connect_failures: dict[str, int] = {}
        self._was_ready: set[str] = set()  # replicas that have been ready at least once
        self.scaler = None  # set by the autoscaler when the deployment is scaled
        # Requests under way, oldest first, with their deadlines: the queue shared by every
        # deployment with this timeout, whose front the proxy's sweep pops when expired.
        self.deadlines = deadlines.for_timeout(self.timeout_s)

    # -- ReplicaEvents (called by the runtime) ----------------------------------------------

    def replica_added(self, name: str, host: str, port: int) -> None:
        self.table.add(PooledReplica(name, host, port, self._pools.attach(host, port)))

    def replica_ready(self, name: str, ready: bool) -> None:
        if name in self.table.replicas:  # a draining replica stays out (SlotTable.drain)
            if ready:
                self._connect_failures.pop(name, None)
                self._was_ready.add(name)
            self.table.set_ready(name, ready)

    def replica_draining(self, name: str) -> None:
        if name in self.table.replicas:
            self.table.drain(name)

    def replica_inflight(self, name: str) -> int:
        replica = self.table.replicas.get(name)
        return replica.inflight if replica is not None else 0

    def replica_removed(self, name: str) -> None:
        replica = self.table.replicas.get(name)
        if replica is None:
            return
        self.table.remove(name)
        self._was_ready.discard(name)
        self._connect_failures.pop(name, None)
        replica.pool = None  # type: ignore[attr-defined]  # a request granted it meanwhile retries
        self._pools.detach(replica.address)

    # -- used by the proxy ------------------------------------------------------------------

    def connect_failed(self, replica: Replica, refused: bool) -> None:
        if self.slots is not self.table:
            self.slots.connect_failed(replica.name, refused)  # the coordinator decides routing
        count = self._connect_failures.get(replica.name, 0) + 1
        self._connect_failures[replica.name] = count
        limit = REFUSED_FAILURES_TO_UNROUTE if refused else OTHER_FAILURES_TO_UNROUTE
        if count >= limit and replica.name in self.table.replicas:
            self.table.set_ready(replica.name, False)
            if self.runtime is not None:
                self.runtime.report_failure(replica.name)

    def connect_succeeded(self, replica: Replica) -> None:
        if self._connect_failures:
            self._connect_failures.pop(replica.name, None)

    # -- telemetry view ---------------------------------------------------------------------

    def replica_states(self) -> dict[str, str]:
        states = {}
        for name, replica in self.table.replicas.items():
            if replica.draining:
                states[name] = "draining"
            elif replica.routable:
                states[name] = "ready"
            elif name in self._was_ready or name in self._connect_failures:
                states[name] = "unready"
            else:
                states[name] = "starting"
        return states

    def queued_at_coordinator(self) -> None:
        """A request waits here with no ready replica: scale from zero now, not at the next poll."""
        if self.scaler is not None:
            self.scaler.wake()

    def scaling_snapshot(self) -> dict | None:
        return self.scaler.snapshot() if self.scaler is not None else None


class EndpointState:
    """One endpoint: its key check, traffic split, mirror and deployments."""

    __slots__ = (
        "_authorizations",
        "_by_name",
        "_only",
        "auth_required",
        "config",
        "deployments",
        "mirror",
        "name",
        "split",
    )

    def __init__(self, config: Endpoint, pools: UpstreamPools, deadlines: DeadlineQueues) -> None:
        self.name = config.name
        self.config = config
        self.auth_required = config.auth_mode == "key"
        self._authorizations = tuple(b"Bearer " + key.encode() for key in config.accepted_keys)
        self.deployments: dict[bytes, DeploymentState] = {
            d.name.encode(): DeploymentState(config.name, d, pools, deadlines)
            for d in config.deployments
        }
        self._by_name = {d.name: d for d in self.deployments.values()}
        self.split = TrafficSplit(dict(config.traffic))
        # The usual endpoint sends all its traffic to one deployment: no split to consult.
        weighted = [name for name, weight in config.traffic.items() if weight > 0]
        self._only = self._by_name[weighted[0]] if len(weighted) == 1 else None
        mirror = next(iter(config.mirror_traffic.items()), None)
        self.mirror = Mirror(mirror[0], mirror[1]) if mirror else None

    def authorized(self, authorization: bytes | None) -> bool:
        if not self.auth_required:
            return True
        if not authorization:
            return False
        # Compare against every key (constant time each) so timing tells nothing about which.
        ok = False
        for expected in self._authorizations:
            ok |= hmac.compare_digest(authorization, expected)
        return ok

    def pick(self) -> DeploymentState | None:
        if self._only is not None:
            return self._only
        name = self.split.pick()
        return self._by_name[name] if name is not None else None

    def mirror_target(self) -> DeploymentState | None:
        if self.mirror is None:
            return None
        name = self.mirror.take()
        return self._by_name[name] if name is not None else None


class Endpoints:
    """Every endpoint by name: the proxy's only lookup table."""

    def __init__(self, configs: list[Endpoint]) -> None:
        self.pools = UpstreamPools()
        self.deadlines = DeadlineQueues()
        self.by_name: dict[bytes, EndpointState] = {
            c.name.encode(): EndpointState(c, self.pools, self.deadlines) for c in configs
        }

    def deployments(self) -> Iterator[DeploymentState]:
        for endpoint in self.by_name.values():
            yield from endpoint.deployments.values()
