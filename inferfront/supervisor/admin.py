"""The supervisor's admin port: its workers, the replicas it owns, and who coordinates what."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from inferfront.admin.server import AdminServer
from inferfront.cluster.local import LocalMembership
from inferfront.cluster.membership import Member
from inferfront.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from inferfront.supervisor.supervisor import Supervisor


async def serve_supervisor_admin(supervisor: Supervisor, host: str, port: int) -> AdminServer:
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

    admin = AdminServer(Metrics(list), list, lambda: (True, ""))
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
