"""The supervisor's admin port: its workers, the replicas it owns, and who coordinates what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from inferfront.admin.server import AdminServer
from inferfront.cluster.local import LocalMembership
from inferfront.cluster.membership import Member
from inferfront.runtime.probe_client import probe_http
from inferfront.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from inferfront.supervisor.supervisor import Supervisor


async def serve_supervisor_admin(
    supervisor: Supervisor, host: str, port: int, worker_admin_port: Callable[[int], int]
) -> AdminServer:
    # An observer of the workers' membership: it reads members and leases, never joins.
    observer = LocalMembership(supervisor.state_dir, Member("supervisor", "", time.time()))

    async def cluster() -> dict:
        await observer.refresh()
        keys = sorted(supervisor.replica_states())
        return {
            "workers": supervisor.workers_info(),
            "members": [
                {"id": m.id, "address": m.address, "started_at": m.started_at}
                for m in observer.members()
            ],
            "coordinators": [_coordinator(observer, key) for key in keys],
            "replicas": supervisor.replica_states(),
        }

    async def ready() -> tuple[bool, str]:
        # Ready when every worker says it is: it has joined the cluster and listens.
        waiting = []
        for worker in supervisor.workers_info():
            index = worker["index"]
            ok = worker["alive"] and await probe_http(
                host, worker_admin_port(index), "/readyz", timeout=1.0
            )
            if not ok:
                waiting.append(index)
        return (False, f"workers {waiting} not ready") if waiting else (True, "")

    admin = AdminServer(Metrics(list), list, ready)
    admin.add_json_route("/admin/v1/cluster", cluster)
    await admin.start(host, port)
    return admin


def _coordinator(observer: LocalMembership, key: str) -> dict:
    holder = observer.holder(key)
    return {
        "deployment": key,
        "coordinator": holder.holder_id if holder else None,
        "since": holder.since if holder else None,
    }
