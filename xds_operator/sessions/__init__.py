"""Routes for stateful sessions, for applications: one VirtualService per session, pinned to its worker pod.

Imports nothing of the operator but these modules and the kubernetes client's watch loop
(`xds_operator.sources.kubernetes.reflector`): no gRPC, no protobuf, nothing started on import.
See README.md, "Pinning a session to its pod".
"""

from xds_operator.sessions.manifest import MANAGER_LABEL, SESSION_LABEL, owner_reference, route_name, virtual_service
from xds_operator.sessions.routes import (
    Route,
    RouteDeleted,
    RouteError,
    RouteNotReady,
    SessionRoutes,
    WorkerPodNotFound,
)

__all__ = [
    "MANAGER_LABEL",
    "SESSION_LABEL",
    "Route",
    "RouteDeleted",
    "RouteError",
    "RouteNotReady",
    "SessionRoutes",
    "WorkerPodNotFound",
    "owner_reference",
    "route_name",
    "virtual_service",
]
