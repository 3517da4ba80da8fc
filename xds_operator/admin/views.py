"""The JSON of /debug/proxies, as types: the xDS server writes it, `xds-operator status` reads it back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NotRequired, TypedDict

# How a proxy answered the latest response of one type: nothing sent yet, no answer yet, or its answer.
StreamState = Literal["waiting", "pending", "ACKed", "NACKed"]


class TypeStatus(TypedDict):
    """One resource type of one stream."""

    version: str | None  # of what the proxy has or is being sent; None: nothing sent yet
    state: StreamState
    acked_version: str | None  # what the proxy runs (after a NACK: what it kept)
    error: str | None  # Envoy's text for the latest NACK; None after an ACK


class ProxyView(TypedDict):
    """One connected ADS stream."""

    node_id: str  # as shown: cut if very long
    variant: str  # "sotw" or "delta"
    labels: Mapping[str, str] | None  # None while its identity (pod) is not known
    group: str  # its labels as sorted key=value pairs (see xds.server.group_name), cut if very long
    types: dict[str, TypeStatus]  # by short type name: "CDS", "EDS", "LDS" (only the subscribed ones)
    # Endpoint health as the proxy's own checks see it (its HDS stream); None: it has no HDS stream.
    health: NotRequired[HealthView | None]


class UnhealthyEndpoint(TypedDict):
    """An endpoint whose health check fails on one proxy."""

    cluster: str
    endpoint: str  # "ip:port", the address traffic goes to
    health_check_port: int | None  # where the check connects, if not the endpoint's port


class HealthView(TypedDict):
    """One proxy's HDS stream: what it checks and what it reported."""

    clusters: int  # health-checked clusters it was asked to check
    endpoints: int  # their endpoints
    healthy: int  # those whose check passes
    unhealthy_count: int  # those counted as failing
    unhealthy: list[UnhealthyEndpoint]  # them, the first MAX_SHOWN_UNHEALTHY (xds/health.py)
    reports: int  # reports received that changed something
