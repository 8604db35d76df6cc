"""`inferfront serve --workers N`: a supervising parent that owns the replicas and keeps N
front-end workers alive, and the channel that streams replica events to those workers."""

from inferfront.supervisor.channel import ReplicaRecord, deployment_key, socket_path
from inferfront.supervisor.supervisor import DeploymentEvents, Supervisor, run_supervisor
from inferfront.supervisor.worker_link import RemoteRuntime, SupervisorLink

__all__ = [
    "DeploymentEvents",
    "RemoteRuntime",
    "ReplicaRecord",
    "Supervisor",
    "SupervisorLink",
    "deployment_key",
    "run_supervisor",
    "socket_path",
]
