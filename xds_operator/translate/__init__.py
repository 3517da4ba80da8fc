"""VirtualService (+ resolved endpoint addresses) → Envoy v3 Listener / Cluster / ClusterLoadAssignment.

Pure functions: no I/O, no state. The table in DESIGN.md ("Translation to Envoy") is the
contract; the golden tests in tests/golden/ pin the exact output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import route_pb2, udp_proxy_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from xds.type.matcher.v3 import matcher_pb2

from ..api import VirtualService, pb

UDP_PROXY_FILTER = "envoy.filters.udp_listener.udp_proxy"
# A short connect timeout for the TCP check, so a dead worker is seen within one interval.
MAX_HEALTH_CHECK_TIMEOUT_MS = 1000
CONNECT_TIMEOUT_MS = 1000


@dataclass(frozen=True, order=True)
class UpstreamAddress:
    """One resolved upstream: an IP or DNS name, its UDP port, where its health check connects."""

    host: str
    port: int
    health_check_port: int | None = None


# Resolves a pod selector, in a namespace, to the IPs of its Ready pods.
SelectorResolver = Callable[[str, Mapping[str, str]], Sequence[str]]


def no_pods(namespace: str, selector: Mapping[str, str]) -> Sequence[str]:
    """The resolver of sources that know no pods (the directory source)."""
    return ()


@dataclass(frozen=True)
class EnvoyResources:
    """What one VirtualService contributes to a proxy's configuration."""

    listeners: list[listener_pb2.Listener] = field(default_factory=list)
    clusters: list[cluster_pb2.Cluster] = field(default_factory=list)
    load_assignments: list[endpoint_pb2.ClusterLoadAssignment] = field(default_factory=list)


def resolve_endpoints(namespace: str, cluster: pb.Cluster, resolve_selector: SelectorResolver) -> list[UpstreamAddress]:
    """The upstream addresses of a cluster, in a stable order (so equal input gives equal bytes)."""
    addresses: set[UpstreamAddress] = set()
    for endpoint in cluster.endpoints:
        check_port = endpoint.health_check_port if endpoint.HasField("health_check_port") else None
        if endpoint.host.HasField("address"):
            hosts: Sequence[str] = (endpoint.host.address,)
        else:
            hosts = resolve_selector(namespace, endpoint.host.selector)
        addresses.update(UpstreamAddress(host, endpoint.port, check_port) for host in hosts)
    return sorted(addresses)


def translate_virtual_service(vs: VirtualService, resolve_selector: SelectorResolver = no_pods) -> EnvoyResources:
    resources = EnvoyResources()
    for listener in vs.spec.listeners:
        udp = listener.udp
        resources.listeners.append(translate_listener(listener))
        addresses = resolve_endpoints(vs.namespace, udp.cluster, resolve_selector)
        resources.clusters.append(translate_cluster(udp.cluster, addresses))
        if udp.cluster.service_discovery == "eds":
            resources.load_assignments.append(translate_load_assignment(udp.cluster.name, addresses))
    return resources


def translate_listener(listener: pb.Listener) -> listener_pb2.Listener:
    udp = listener.udp
    config = udp_proxy_pb2.UdpProxyConfig(stat_prefix=listener.name, matcher=_route_to(udp.cluster.name))
    if udp.cluster.HasField("hash_key"):
        config.hash_policies.add(key=udp.cluster.hash_key)
    return listener_pb2.Listener(
        name=listener.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                protocol=address_pb2.SocketAddress.UDP, address="0.0.0.0", port_value=udp.port
            )
        ),
        listener_filters=[listener_components_pb2.ListenerFilter(name=UDP_PROXY_FILTER, typed_config=_pack(config))],
    )


def translate_cluster(cluster: pb.Cluster, addresses: Sequence[UpstreamAddress]) -> cluster_pb2.Cluster:
    result = cluster_pb2.Cluster(
        name=cluster.name,
        connect_timeout=_millis(CONNECT_TIMEOUT_MS),
        # An endpoint we remove (pod gone or not Ready) gets no new sessions, even while healthy.
        ignore_health_on_host_removal=True,
    )
    # Apply host health changes at once instead of merging them over Envoy's default 1 s
    # window: a dead worker stops getting datagrams one health-check interval sooner.
    result.common_lb_config.update_merge_window.CopyFrom(duration_pb2.Duration())
    if cluster.service_discovery == "eds":
        result.type = cluster_pb2.Cluster.EDS
        result.eds_cluster_config.eds_config.CopyFrom(
            config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
            )
        )
    else:
        result.type = cluster_pb2.Cluster.STRICT_DNS
        result.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        result.load_assignment.CopyFrom(translate_load_assignment(cluster.name, addresses))
    if cluster.HasField("hash_key"):
        # Maglev: the same key picks the same upstream on every Envoy replica.
        result.lb_policy = cluster_pb2.Cluster.MAGLEV
    if cluster.HasField("health_check"):
        result.health_checks.append(translate_health_check(cluster.health_check))
        # Never spread traffic over unhealthy hosts, even when most of them are down.
        result.common_lb_config.healthy_panic_threshold.value = 0
    return result


def translate_health_check(check: pb.HealthCheck) -> health_check_pb2.HealthCheck:
    interval = _millis(check.interval)
    return health_check_pb2.HealthCheck(
        timeout=_millis(min(check.interval, MAX_HEALTH_CHECK_TIMEOUT_MS) // 2),
        interval=interval,
        no_traffic_interval=interval,
        unhealthy_threshold={"value": 1},
        healthy_threshold={"value": 1},
        # A fresh connection per check: a kept-open one would say nothing about whether the
        # worker still accepts connections.
        reuse_connection={"value": False},
        # Empty send/receive payloads: a TCP connect check.
        tcp_health_check=health_check_pb2.HealthCheck.TcpHealthCheck(),
    )


def translate_load_assignment(
    cluster_name: str, addresses: Sequence[UpstreamAddress]
) -> endpoint_pb2.ClusterLoadAssignment:
    endpoints = []
    for upstream in addresses:
        endpoint = endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=upstream.host, port_value=upstream.port)
            )
        )
        if upstream.health_check_port is not None:
            endpoint.health_check_config.port_value = upstream.health_check_port
        endpoints.append(endpoint_components_pb2.LbEndpoint(endpoint=endpoint))
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    if endpoints:
        assignment.endpoints.add().lb_endpoints.extend(endpoints)
    return assignment


def _route_to(cluster_name: str) -> matcher_pb2.Matcher:
    """The udp_proxy matcher that sends every datagram to one cluster (the `cluster` field is deprecated)."""
    action = matcher_pb2.Matcher.OnMatch()
    action.action.name = "route"
    action.action.typed_config.CopyFrom(_pack(route_pb2.Route(cluster=cluster_name)))
    return matcher_pb2.Matcher(on_no_match=action)


def _pack(message: Message) -> any_pb2.Any:
    # Deterministic bytes, so equal configuration always hashes to an equal version.
    return any_pb2.Any(
        type_url=f"type.googleapis.com/{message.DESCRIPTOR.full_name}",
        value=message.SerializeToString(deterministic=True),
    )


def _millis(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value // 1000, nanos=(value % 1000) * 1_000_000)
