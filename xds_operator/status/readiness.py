"""Per listener of a VirtualService: its protocol and port, and how many ready endpoints its cluster has.

Pure: the caller hands in the upstreams the snapshots were built with (pod selectors already
resolved to Ready, non-terminating pods with an IP) and a cached answer to "does this host
resolve" (an IP always does; a DNS name is looked up elsewhere, off the event loop).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from xds_operator.api import VirtualService, cluster_of, pb, port_of, protocol_of
from xds_operator.translate import Resolved


class Resolution(enum.Enum):
    """Whether an endpoint's host resolves to an address, as far as is known now."""

    RESOLVES = "resolves"
    DOES_NOT_RESOLVE = "does not resolve"
    PENDING = "is being resolved"  # the first lookup has not answered yet


AddressCheck = Callable[[str], Resolution]


@dataclass(frozen=True)
class ClusterState:
    name: str
    ready_endpoints: int
    why_none: str = ""  # when it has none: why, per endpoint


@dataclass(frozen=True)
class ClusterHealth:
    """A health-checked cluster as the proxies that report on it see it (their HDS reports)."""

    passing: int  # endpoints whose check passes, on the proxy that sees the fewest
    checked: int  # endpoints the proxies check
    failing_on: tuple[str, ...] = ()  # proxies (node ids) on which no endpoint passes, sorted
    failing: str = ""  # on the first of them: the endpoints that fail, e.g. "10.0.0.7:2001 (health check port 1233)"


@dataclass(frozen=True)
class ListenerState:
    name: str
    protocol: str  # UDP, TCP: the name of the listener's block
    port: int
    cluster: ClusterState


def listener_states(vs: VirtualService, resolved: Resolved, resolves: AddressCheck) -> tuple[ListenerState, ...]:
    """One state per listener, in spec order; `resolved` holds each listener's upstreams."""
    states = []
    for listener, upstreams in zip(vs.spec.listeners, resolved, strict=True):
        cluster = cluster_of(listener)
        ready = sum(1 for upstream in upstreams if resolves(upstream.host) is Resolution.RESOLVES)
        why = "" if ready else _why_none(cluster, resolves)
        states.append(
            ListenerState(
                listener.name, protocol_of(listener), port_of(listener), ClusterState(cluster.name, ready, why)
            )
        )
    return tuple(states)


def _why_none(cluster: pb.Cluster, resolves: AddressCheck) -> str:
    reasons = []
    for endpoint in cluster.endpoints:
        host = endpoint.host
        if host.HasField("address"):
            reasons.append(f"endpoint {endpoint.name}: {host.address} {resolves(host.address).value}")
        else:
            pairs = ",".join(f"{key}={value}" for key, value in sorted(host.selector.items()))
            reasons.append(f"endpoint {endpoint.name}: no Ready pod with an IP matches {pairs}")
    return "; ".join(reasons)
