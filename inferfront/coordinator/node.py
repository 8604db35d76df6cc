"""This instance as a member of a cluster of front-ends: membership, coordinator election, the
coordinator service, and the brokers that send every deployment's decisions to its coordinator.

Every `RESOLVE_INTERVAL_S` (and at once when a coordinator link drops) the node re-reads the
membership, lets the elector claim free leases, and points each broker at the current holder of
its deployment's lease: itself (no network hop) or another instance over one persistent link.

The admin view of a deployment this instance does not coordinate is fetched from its coordinator
(STATE over the same link, bounded by `STATE_TIMEOUT_S`): only there are the in-flight counts,
the queue and the scaling state real.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING

from inferfront.cluster.membership import Elector, Member
from inferfront.coordinator.broker import LOCAL_LINK, Broker, ClusterClient, TcpLink
from inferfront.coordinator.service import CoordinatorService

if TYPE_CHECKING:
    from inferfront.cluster.membership import Membership
    from inferfront.endpoints import DeploymentState

log = logging.getLogger("inferfront.coordinator")

RESOLVE_INTERVAL_S = 0.2
# While some deployment has no reachable coordinator, look again this often: the new holder
# usually claims the lease within one election tick of the old one's death.
ORPHAN_RESOLVE_INTERVAL_S = 0.02
# How long GET /admin/v1/deployments waits for other coordinators' views before it shows this
# instance's own instead (marked): an admin page must answer even with a coordinator stuck.
STATE_TIMEOUT_S = 0.5

AUTHORITATIVE = "authoritative"  # this instance coordinates the deployment
FETCHED = "fetched"  # from the coordinator, just now
UNREACHABLE = "coordinator unreachable"  # this instance's own view: no answer in time


def config_hash(keys: list[str], text: str) -> str:
    return hashlib.sha256((text + "\0" + "\0".join(keys)).encode()).hexdigest()[:16]


class ClusterNode:
    def __init__(
        self,
        instance_id: str,
        deployments: list[DeploymentState],
        membership_factory,
        *,
        config_text: str,
        host: str = "127.0.0.1",
        port: int = 0,
        on_role_change=None,
        expected_members: tuple[str, ...] = (),
    ) -> None:
        self.instance_id = instance_id
        self.deployments = sorted(deployments, key=lambda d: d.key)
        self.keys = [d.key for d in self.deployments]
        self.config_hash = config_hash(self.keys, config_text)
        self.host = host
        self.port = port
        self._membership_factory = membership_factory
        self.membership: Membership | None = None
        self.service = CoordinatorService(instance_id, self.config_hash, self.deployments)
        self.client = ClusterClient(instance_id, self.config_hash)
        self.brokers: list[Broker] = []
        self.coordinating_since: dict[str, float] = {}
        self._on_role_change = on_role_change
        self._expected = expected_members
        self._task: asyncio.Task | None = None
        self._elector: Elector | None = None

    async def start(self) -> None:
        port = await self.service.listen(self.host, self.port)
        member = Member(self.instance_id, f"{self.host}:{port}", time.time())
        self.membership = self._membership_factory(member)
        await self.membership.join()
        for dep, state in enumerate(self.deployments):
            broker = Broker(self.client, dep, state.key, state.table, self.service)
            self.brokers.append(broker)
            state.slots = broker
        self.client.brokers = self.brokers
        self._elector = Elector(
            self.membership, self.keys, self._gained, self._lost, expected=self._expected
        )
        await self._round()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    # -- roles ------------------------------------------------------------------------------

    def _gained(self, key: str) -> None:
        dep = self.keys.index(key)
        members = [m.id for m in self.membership.members()]  # type: ignore[union-attr]
        self.coordinating_since[key] = time.time()
        self.brokers[dep].switch(LOCAL_LINK, members, time.time())
        log.info("instance %s now coordinates %s", self.instance_id, key)
        if self._on_role_change is not None:
            self._on_role_change(self.deployments[dep], True)

    def _lost(self, key: str) -> None:
        dep = self.keys.index(key)
        self.coordinating_since.pop(key, None)
        self.service.roles.pop(dep, None)
        self.brokers[dep].switch(None, [], 0.0)
        log.warning("instance %s no longer coordinates %s", self.instance_id, key)
        if self._on_role_change is not None:
            self._on_role_change(self.deployments[dep], False)

    # -- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            orphaned = any(broker.link is None for broker in self.brokers)
            await self.client.wait_resolve(
                ORPHAN_RESOLVE_INTERVAL_S if orphaned else RESOLVE_INTERVAL_S
            )
            try:
                await self._round()
            except Exception:  # keep trying: a failed round must not stop routing
                log.exception("cluster round failed")

    async def _round(self) -> None:
        await self._elector.tick()  # type: ignore[union-attr]  # refreshes the membership too
        live = {m.id for m in self.membership.members()}  # type: ignore[union-attr]
        self.service.forget_departed(live)
        for broker in self.brokers:
            await self._point(broker)

    async def _point(self, broker: Broker) -> None:
        holder = self.membership.holder(broker.key)  # type: ignore[union-attr]
        if holder is None:
            if broker.link is not None and not broker.link.local:
                broker.switch(None, [], 0.0)
            return
        if holder.holder_id == self.instance_id:
            return  # _gained already pointed it here
        link = await self.client.link_to(holder.holder_id, holder.address)
        if link is None:
            if broker.link is not None:
                broker.switch(None, [], 0.0)
            return
        if broker.link is not link:
            broker.switch(link, [], 0.0)
        broker.resend_unsent()

    # -- views ------------------------------------------------------------------------------

    async def admin_overlays(self) -> dict[str, dict]:
        """Deployment key -> what its admin view shows: "coordinator" (an instance id, or None)
        and "view" (AUTHORITATIVE, FETCHED or UNREACHABLE); when fetched, the coordinator's
        document too, which replaces this instance's own in-flight counts, queue and scaling."""
        overlays: dict[str, dict] = {}
        fetches: list[tuple[str, str, asyncio.Future[dict | None]]] = []
        for broker in self.brokers:
            link = broker.link
            if broker.dep in self.service.roles:
                overlays[broker.key] = {"coordinator": self.instance_id, "view": AUTHORITATIVE}
            elif isinstance(link, TcpLink):
                fetches.append((broker.key, link.member_id, link.request_state(broker.dep)))
            else:
                overlays[broker.key] = {
                    "coordinator": self._holder_id(broker.key),
                    "view": UNREACHABLE,
                }
        if fetches:
            _, late = await asyncio.wait(
                [future for *_, future in fetches], timeout=STATE_TIMEOUT_S
            )
            for future in late:
                future.cancel()
        for key, member_id, future in fetches:
            document = None if future.cancelled() else future.result()
            if document is None:
                overlays[key] = {"coordinator": member_id, "view": UNREACHABLE}
            else:
                overlays[key] = {**document, "coordinator": member_id, "view": FETCHED}
        return overlays

    def _holder_id(self, key: str) -> str | None:
        holder = self.membership.holder(key) if self.membership is not None else None
        return holder.holder_id if holder is not None else None

    def snapshot(self) -> dict:
        membership = self.membership
        members = membership.members() if membership is not None else []
        roles = []
        for key in self.keys:
            holder = membership.holder(key) if membership is not None else None
            roles.append(
                {
                    "deployment": key,
                    "coordinator": holder.holder_id if holder else None,
                    "since": holder.since if holder else None,
                }
            )
        return {
            "instance": self.instance_id,
            "members": [
                {"id": m.id, "address": m.address, "started_at": m.started_at} for m in members
            ],
            "coordinators": roles,
        }

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.client.close()
        await self.service.close()
        if self.membership is not None:
            await self.membership.leave()
