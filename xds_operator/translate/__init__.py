"""VirtualService (+ resolved endpoint addresses) → Envoy v3 Listener / Cluster / ClusterLoadAssignment.

Pure functions: no I/O, no state. The table in README.md ("How it becomes Envoy configuration") is the
contract; the golden tests in tests/translate/golden/ pin the exact output.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import route_pb2, udp_proxy_pb2
from envoy.type.v3 import hash_policy_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from xds.type.matcher.v3 import matcher_pb2

from xds_operator.api import VirtualService, cluster_of, has_port, pb, protocol_of

UDP_PROXY_FILTER = "envoy.filters.udp_listener.udp_proxy"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
SET_FILTER_STATE_FILTER = "envoy.filters.network.set_filter_state"
CONNECTION_LIMIT_FILTER = "envoy.filters.network.connection_limit"
# The connection's filter-state object that carries a TCP listener's hash_key to tcp_proxy's hash
# policy. Its factory must build an Envoy::Hashable (envoy.string does not: no hash, no pinning);
# envoy.hashable_string hashes the value with xxHash64, as udp_proxy hashes its key.
HASH_KEY_STATE = "servicemesh.l7mp.io.hash_key"
HASHABLE_STRING_FACTORY = "envoy.hashable_string"
# A short connect timeout for the TCP check, so a dead worker is seen within one interval.
MAX_HEALTH_CHECK_TIMEOUT_MS = 1000
CONNECT_TIMEOUT_MS = 1000
# Idle timeouts when a listener sets none, in seconds. UDP: media servers (rtpengine, rtpproxy) call
# RTP dead after 60 s of silence; twice that, so Envoy is never the one to end a session they keep
# (a new session may pick another upstream). TCP: Envoy's own default, written out.
DEFAULT_UDP_IDLE_TIMEOUT_S = 120
DEFAULT_TCP_IDLE_TIMEOUT_S = 3600
# A UDP listener with max_sessions gets a copy of its cluster under this name (see private_cluster_name).
PRIVATE_CLUSTER_SEPARATOR = "@"


class UpstreamAddress(NamedTuple):
    """One resolved upstream: an IP or DNS name, its (UDP or TCP) port, where its health check connects."""

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
        host = endpoint.host
        if host.HasField("address"):
            addresses.add(UpstreamAddress(host.address, endpoint.port, check_port))
        else:
            port = endpoint.port
            addresses.update(UpstreamAddress(ip, port, check_port) for ip in resolve_selector(namespace, host.selector))
    # (Sorted by a key: two endpoints may differ only in whether they set a health check port.)
    return sorted(addresses, key=_upstream_order)


def _upstream_order(upstream: UpstreamAddress) -> tuple[str, int, int]:
    return (upstream.host, upstream.port, -1 if upstream.health_check_port is None else upstream.health_check_port)


Resolved = tuple[tuple[UpstreamAddress, ...], ...]  # per listener, its cluster's upstreams


def resolve_virtual_service(vs: VirtualService, resolve_selector: SelectorResolver = no_pods) -> Resolved:
    """The upstreams of every listener's cluster: what endpoint changes are noticed by."""
    return tuple(
        tuple(resolve_endpoints(vs.namespace, cluster_of(listener), resolve_selector)) for listener in vs.spec.listeners
    )


def translate_virtual_service(
    vs: VirtualService, resolve_selector: SelectorResolver = no_pods, *, resolved: Resolved | None = None
) -> EnvoyResources:
    """Listeners, clusters and (for eds) load assignments; `resolved` saves resolving the endpoints again."""
    if resolved is None:
        resolved = resolve_virtual_service(vs, resolve_selector)
    resources = EnvoyResources()
    for listener, addresses in zip(vs.spec.listeners, resolved, strict=True):
        cluster = cluster_of(listener)
        name = envoy_cluster_name(listener)
        resources.listeners.append(translate_listener(listener))
        resources.clusters.append(translate_cluster(cluster, addresses, name=name, max_sessions=_udp_limit(listener)))
        if cluster.service_discovery == "eds":
            resources.load_assignments.append(translate_load_assignment(name, addresses))
    return resources


def envoy_cluster_name(listener: pb.Listener) -> str:
    """The name of the Envoy cluster a listener proxies to: its cluster's, or a private copy's.

    Envoy limits UDP sessions only with a cluster's max_connections circuit breaker, and a cluster
    may be shared by many listeners (calls to one worker). So a UDP listener with max_sessions gets a
    copy of its cluster named `<cluster>@<listener>`: unique per proxy, as listener names are, and
    never a declared cluster's name (those cannot hold "@").
    """
    cluster = cluster_of(listener)
    if _udp_limit(listener) is None:
        return cluster.name
    return f"{cluster.name}{PRIVATE_CLUSTER_SEPARATOR}{listener.name}"


def _udp_limit(listener: pb.Listener) -> int | None:
    """A UDP listener's max_sessions (TCP listeners limit theirs in the listener: connection_limit)."""
    if protocol_of(listener) == "UDP" and listener.udp.HasField("max_sessions"):
        return listener.udp.max_sessions
    return None


def translate_listener(listener: pb.Listener) -> listener_pb2.Listener:
    if not has_port(listener):  # a programming error: the sources assign a port (ports/) before translating
        raise ValueError(f"listener {listener.name} has no port: assign one (ports/) before translating")
    if protocol_of(listener) == "TCP":
        return _tcp_listener(listener.name, listener.tcp)
    return _udp_listener(listener.name, listener.udp, envoy_cluster_name(listener))


def _udp_listener(name: str, udp: pb.UdpListener, cluster_name: str) -> listener_pb2.Listener:
    """A UDP socket whose udp_proxy listener filter sends every datagram to the cluster."""
    config = udp_proxy_pb2.UdpProxyConfig(stat_prefix=name, matcher=_route_to(cluster_name))
    idle = udp.idle_timeout if udp.HasField("idle_timeout") else DEFAULT_UDP_IDLE_TIMEOUT_S
    config.idle_timeout.seconds = idle
    if udp.cluster.HasField("hash_key"):
        config.hash_policies.add(key=udp.cluster.hash_key)
    elif udp.cluster.hash_by == "source_ip":
        config.hash_policies.add(source_ip=True)
    result = _bound_listener(name, address_pb2.SocketAddress.UDP, udp.port)
    listener_filter = result.listener_filters.add(name=UDP_PROXY_FILTER)
    _pack_into(listener_filter.typed_config, config)
    return result


def _tcp_listener(name: str, tcp: pb.TcpListener) -> listener_pb2.Listener:
    """A TCP socket with one filter chain: tcp_proxy to the cluster, after set_filter_state for a hash key.

    tcp_proxy hashes only what the connection offers (source IP or a filter-state object), so the
    constant key is put into every connection's filter state first: each connection then hashes
    alike and Maglev pins them all to one upstream, on every Envoy replica.
    """
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=tcp.cluster.name)
    proxy.idle_timeout.seconds = tcp.idle_timeout if tcp.HasField("idle_timeout") else DEFAULT_TCP_IDLE_TIMEOUT_S
    result = _bound_listener(name, address_pb2.SocketAddress.TCP, tcp.port)
    chain = result.filter_chains.add()
    if tcp.HasField("max_sessions"):
        # First in the chain: a connection past the limit is closed before anything else runs.
        limit = connection_limit_pb2.ConnectionLimit(stat_prefix=name, max_connections={"value": tcp.max_sessions})
        _pack_into(chain.filters.add(name=CONNECTION_LIMIT_FILTER).typed_config, limit)
    if tcp.cluster.hash_by == "source_ip":
        proxy.hash_policy.append(hash_policy_pb2.HashPolicy(source_ip={}))
    if tcp.cluster.HasField("hash_key"):
        state = set_filter_state_pb2.Config()
        value = state.on_new_connection.add(object_key=HASH_KEY_STATE, factory_key=HASHABLE_STRING_FACTORY)
        # A format string: % starts a command operator, %% is a literal %.
        value.format_string.text_format_source.inline_string = tcp.cluster.hash_key.replace("%", "%%")
        _pack_into(chain.filters.add(name=SET_FILTER_STATE_FILTER).typed_config, state)
        proxy.hash_policy.append(hash_policy_pb2.HashPolicy(filter_state={"key": HASH_KEY_STATE}))
    _pack_into(chain.filters.add(name=TCP_PROXY_FILTER).typed_config, proxy)
    return result


def _bound_listener(name: str, protocol: address_pb2.SocketAddress.Protocol, port: int) -> listener_pb2.Listener:
    result = listener_pb2.Listener(name=name)
    socket_address = result.address.socket_address
    socket_address.protocol = protocol
    socket_address.address = "0.0.0.0"
    socket_address.port_value = port
    return result


MAX_CONNECTIONS_PER_CLUSTER = 1_000_000

# Parts every cluster shares, built once and copied in (cheaper than building them each time).
_EDS_OVER_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)


def translate_cluster(
    cluster: pb.Cluster, addresses: Sequence[UpstreamAddress], *, name: str = "", max_sessions: int | None = None
) -> cluster_pb2.Cluster:
    """The Envoy cluster; `name` and `max_sessions` make a listener's private copy (see envoy_cluster_name)."""
    name = name or cluster.name
    result = cluster_pb2.Cluster(
        name=name,
        connect_timeout=_millis(CONNECT_TIMEOUT_MS),
        # An endpoint we remove (pod gone or not Ready) gets no new sessions, even while healthy.
        ignore_health_on_host_removal=True,
    )
    # Apply host health changes at once instead of merging them over Envoy's default 1 s
    # window: a dead worker stops getting datagrams one health-check interval sooner.
    result.common_lb_config.update_merge_window.SetInParent()
    # Every UDP session (and TCP connection) counts against the cluster's max_connections circuit
    # breaker, 1,024 by default: a worker cluster shared by many calls would silently drop the
    # sessions past it. The bound that matters is the proxy's file descriptors. A private copy's
    # breaker is its listener's session limit.
    limit = MAX_CONNECTIONS_PER_CLUSTER if max_sessions is None else max_sessions
    result.circuit_breakers.thresholds.add(max_connections={"value": limit})
    if cluster.service_discovery == "eds":
        result.type = cluster_pb2.Cluster.EDS
        result.eds_cluster_config.eds_config.CopyFrom(_EDS_OVER_ADS)
    else:
        result.type = cluster_pb2.Cluster.STRICT_DNS
        result.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        _fill_load_assignment(result.load_assignment, name, addresses)
    if cluster.HasField("hash_key") or cluster.hash_by == "source_ip":
        # Maglev: the same key (or client IP) picks the same upstream on every Envoy replica.
        result.lb_policy = cluster_pb2.Cluster.MAGLEV
    if cluster.HasField("health_check"):
        result.health_checks.append(_health_check(cluster.health_check.interval))
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


@functools.lru_cache(maxsize=64)
def _health_check(interval_ms: int) -> health_check_pb2.HealthCheck:
    """One health check per interval, shared: appending it to a cluster copies it."""
    return translate_health_check(pb.HealthCheck(protocol="TCP", interval=interval_ms))


def translate_load_assignment(
    cluster_name: str, addresses: Sequence[UpstreamAddress]
) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment()
    _fill_load_assignment(assignment, cluster_name, addresses)
    return assignment


def _fill_load_assignment(
    assignment: endpoint_pb2.ClusterLoadAssignment, cluster_name: str, addresses: Sequence[UpstreamAddress]
) -> None:
    assignment.cluster_name = cluster_name
    if not addresses:
        return
    lb_endpoints = assignment.endpoints.add().lb_endpoints
    for upstream in addresses:
        endpoint = lb_endpoints.add().endpoint
        socket_address = endpoint.address.socket_address
        socket_address.address = upstream.host
        socket_address.port_value = upstream.port
        if upstream.health_check_port is not None:
            endpoint.health_check_config.port_value = upstream.health_check_port


def _route_to(cluster_name: str) -> matcher_pb2.Matcher:
    """The udp_proxy matcher that sends every datagram to one cluster (the `cluster` field is deprecated)."""
    action = matcher_pb2.Matcher.OnMatch()
    action.action.name = "route"
    action.action.typed_config.CopyFrom(_pack(route_pb2.Route(cluster=cluster_name)))
    return matcher_pb2.Matcher(on_no_match=action)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    _pack_into(packed, message)
    return packed


def _pack_into(packed: any_pb2.Any, message: Message) -> None:
    # Deterministic bytes, so equal configuration always hashes to an equal version.
    packed.type_url = f"type.googleapis.com/{message.DESCRIPTOR.full_name}"
    packed.value = message.SerializeToString(deterministic=True)


def _millis(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value // 1000, nanos=(value % 1000) * 1_000_000)
