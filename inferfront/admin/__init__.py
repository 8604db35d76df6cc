"""Admin HTTP port: metrics, health, readiness and read-only views of the routing state."""

from inferfront.admin.server import AdminServer, Response, deployments_document, json_response

__all__ = ["AdminServer", "Response", "deployments_document", "json_response"]
