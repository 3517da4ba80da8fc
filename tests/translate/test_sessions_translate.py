"""Session controls (idle_timeout, max_sessions) and hashing by source IP: validation and translation.

The end-to-end behaviour with a real Envoy is in tests/e2e/test_sessions.py; here: every new field
rejects bad values with its path, and each translates as the README's table says.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import route_pb2, udp_proxy_pb2

from xds_operator.api import ValidationError, parse_virtual_service
from xds_operator.translate import (
    CONNECTION_LIMIT_FILTER,
    DEFAULT_TCP_IDLE_TIMEOUT_S,
    DEFAULT_UDP_IDLE_TIMEOUT_S,
    MAX_CONNECTIONS_PER_CLUSTER,
    TCP_PROXY_FILTER,
    EnvoyResources,
    translate_virtual_service,
)
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER
from xds_operator.xds.stream import resource_names_in

INGRESS = {"app": "envoy-ingress"}


def document(*listeners: dict[str, Any], name: str = "media") -> dict[str, Any]:
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": dict(INGRESS), "listeners": list(listeners)},
    }


def listener(
    name: str, protocol: str = "udp", port: int = 3000, cluster: str = "worker-c", **extra: Any
) -> dict[str, Any]:
    """A listener; `extra` goes into its protocol block, except hash_* into its cluster."""
    cluster_doc: dict[str, Any] = {
        "name": cluster,
        "endpoints": [{"name": "w", "host": {"address": "10.0.0.1"}, "port": 4000}],
    }
    for key in ("hash_key", "hash_by", "service_discovery"):
        if key in extra:
            cluster_doc[key] = extra.pop(key)
    return {"name": name, protocol: {"port": port, "cluster": cluster_doc, **extra}}


def translated(*listeners: dict[str, Any]) -> EnvoyResources:
    return translate_virtual_service(parse_virtual_service(document(*listeners)))


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as raised:
        parse_virtual_service(doc)
    return [str(error) for error in raised.value.errors]


def udp_config(resources: EnvoyResources, index: int = 0) -> udp_proxy_pb2.UdpProxyConfig:
    config = udp_proxy_pb2.UdpProxyConfig()
    assert resources.listeners[index].listener_filters[0].typed_config.Unpack(config)
    return config


def udp_route(config: udp_proxy_pb2.UdpProxyConfig) -> str:
    route = route_pb2.Route()
    assert config.matcher.on_no_match.action.typed_config.Unpack(route)
    return route.cluster


def tcp_chain(resources: EnvoyResources, index: int = 0) -> dict[str, Any]:
    """The TCP listener's network filters by name, unpacked (and their order under "order")."""
    [chain] = resources.listeners[index].filter_chains
    kinds = {CONNECTION_LIMIT_FILTER: connection_limit_pb2.ConnectionLimit, TCP_PROXY_FILTER: tcp_proxy_pb2.TcpProxy}
    found: dict[str, Any] = {"order": [f.name for f in chain.filters]}
    for network_filter in chain.filters:
        if network_filter.name in kinds:
            config = kinds[network_filter.name]()
            assert network_filter.typed_config.Unpack(config)
            found[network_filter.name] = config
    return found


def breaker(cluster: cluster_pb2.Cluster) -> int:
    [threshold] = cluster.circuit_breakers.thresholds
    return int(threshold.max_connections.value)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("idle_timeout", 0, "must be at least 1, got 0"),
        ("idle_timeout", 86_401, "must be at most 86400, got 86401"),
        ("idle_timeout", "60s", "expected an integer, got a string"),
        ("idle_timeout", True, "expected an integer, got a boolean"),
        ("max_sessions", 0, "must be at least 1, got 0"),
        ("max_sessions", 1_000_001, "must be at most 1000000, got 1000001"),
        ("max_sessions", 2.5, "expected an integer, got a number"),
    ],
)
@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_session_fields_reject_bad_values_with_their_path(protocol: str, field: str, value: Any, message: str) -> None:
    doc = document(listener("a-l"), listener("b-l", protocol, port=3001, cluster="b-c", **{field: value}))
    assert errors_of(doc) == [f"spec.listeners[1].{protocol}.{field}: {message}"]


def test_hash_by_accepts_only_source_ip() -> None:
    doc = document(listener("a-l", hash_by="source_port"))
    assert errors_of(doc) == ["spec.listeners[0].udp.cluster.hash_by: must be one of source_ip; got 'source_port'"]


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_hash_key_and_hash_by_together_are_rejected(protocol: str) -> None:
    doc = document(listener("a-l", protocol, hash_key="callid", hash_by="source_ip"))
    assert errors_of(doc) == [f"spec.listeners[0].{protocol}.cluster: set at most one of hash_key, hash_by"]


def test_the_limits_themselves_are_accepted() -> None:
    doc = document(
        listener("a-l", idle_timeout=1, max_sessions=1),
        listener("b-l", "tcp", cluster="b-c", idle_timeout=86_400, max_sessions=1_000_000, hash_by="source_ip"),
    )
    parse_virtual_service(doc)


# -- translation --------------------------------------------------------------------------


def test_idle_timeouts_default_to_media_values_and_follow_the_field() -> None:
    defaults = translated(listener("a-l"), listener("b-l", "tcp", cluster="b-c"))
    assert udp_config(defaults).idle_timeout.seconds == DEFAULT_UDP_IDLE_TIMEOUT_S == 120
    assert tcp_chain(defaults, 1)[TCP_PROXY_FILTER].idle_timeout.seconds == DEFAULT_TCP_IDLE_TIMEOUT_S == 3600
    chosen = translated(listener("a-l", idle_timeout=7), listener("b-l", "tcp", cluster="b-c", idle_timeout=9))
    assert udp_config(chosen).idle_timeout.seconds == 7
    assert tcp_chain(chosen, 1)[TCP_PROXY_FILTER].idle_timeout.seconds == 9


def test_without_a_limit_the_udp_listener_routes_to_its_declared_cluster() -> None:
    resources = translated(listener("a-l"))
    assert udp_route(udp_config(resources)) == "worker-c"
    assert [c.name for c in resources.clusters] == ["worker-c"]
    assert breaker(resources.clusters[0]) == MAX_CONNECTIONS_PER_CLUSTER


@pytest.mark.parametrize("discovery", ["strictdns", "eds"])
def test_a_udp_session_limit_is_the_breaker_of_a_private_copy_of_the_cluster(discovery: str) -> None:
    resources = translated(listener("a-l", max_sessions=50, service_discovery=discovery))
    [cluster] = resources.clusters
    assert cluster.name == "worker-c@a-l"
    assert udp_route(udp_config(resources)) == "worker-c@a-l"
    assert breaker(cluster) == 50
    plain = translated(listener("a-l", service_discovery=discovery)).clusters[0]
    # Otherwise the very same cluster: endpoints, health, load balancing.
    copied = cluster_pb2.Cluster()
    copied.CopyFrom(cluster)
    copied.name = plain.name
    copied.circuit_breakers.CopyFrom(plain.circuit_breakers)
    if discovery == "strictdns":
        assert cluster.load_assignment.cluster_name == "worker-c@a-l"
        copied.load_assignment.cluster_name = plain.name
        assert resources.load_assignments == []
    else:
        assert [a.cluster_name for a in resources.load_assignments] == ["worker-c@a-l"]
    assert copied == plain


def test_a_tcp_session_limit_is_a_connection_limit_filter_first_in_the_chain() -> None:
    resources = translated(listener("b-l", "tcp", max_sessions=20, hash_key="callid"))
    chain = tcp_chain(resources)
    assert chain["order"][0] == CONNECTION_LIMIT_FILTER and chain["order"][-1] == TCP_PROXY_FILTER
    limit = chain[CONNECTION_LIMIT_FILTER]
    assert (limit.max_connections.value, limit.stat_prefix) == (20, "b-l")
    # The cluster stays the shared one: TCP limits its connections in the listener.
    assert [c.name for c in resources.clusters] == ["worker-c"]
    assert breaker(resources.clusters[0]) == MAX_CONNECTIONS_PER_CLUSTER
    assert "envoy.filters.network.connection_limit" not in tcp_chain(translated(listener("c-l", "tcp")))["order"]


def test_hash_by_source_ip_hashes_the_client_ip_with_maglev() -> None:
    resources = translated(
        listener("a-l", hash_by="source_ip"), listener("b-l", "tcp", cluster="b-c", hash_by="source_ip")
    )
    [udp_policy] = udp_config(resources).hash_policies
    assert udp_policy.WhichOneof("policy_specifier") == "source_ip" and udp_policy.source_ip
    chain = tcp_chain(resources, 1)
    [tcp_policy] = chain[TCP_PROXY_FILTER].hash_policy
    assert tcp_policy.WhichOneof("policy_specifier") == "source_ip"
    assert chain["order"] == [TCP_PROXY_FILTER]  # no set_filter_state: the key is the connection's own address
    assert [c.lb_policy for c in resources.clusters] == [cluster_pb2.Cluster.MAGLEV] * 2


# -- sharing on a proxy -------------------------------------------------------------------


def cache_of(*docs: dict[str, Any]) -> SnapshotCache:
    cache = SnapshotCache()
    for doc in docs:
        cache.upsert(parse_virtual_service(doc))
    cache.commit()
    return cache


def test_calls_sharing_a_worker_cluster_keep_sharing_it_when_one_limits_its_sessions() -> None:
    """A limited call gets its own copy; the others still share the declared cluster; nothing conflicts."""
    calls = [
        document(listener(f"call-{n}-l", port=3000 + n, hash_key=f"call-{n}", **extra), name=f"call-{n}")
        for n, extra in enumerate([{}, {}, {"max_sessions": 2}])
    ]
    cache = cache_of(*calls)
    assert cache.conflicts == {}
    snapshot = cache.snapshot_for(INGRESS)
    assert set(snapshot.resources[CLUSTER]) == {"worker-c", "worker-c@call-2-l"}
    assert set(snapshot.resources[LISTENER]) == {"call-0-l", "call-1-l", "call-2-l"}


def test_a_private_eds_copy_brings_its_own_load_assignment() -> None:
    shared = document(listener("a-l", service_discovery="eds"), name="a")
    limited = document(listener("b-l", port=3001, service_discovery="eds", max_sessions=5), name="b")
    cache = cache_of(shared, limited)
    snapshot = cache.snapshot_for(INGRESS)
    assert cache.conflicts == {}
    assert set(snapshot.resources[ENDPOINT]) == {"worker-c", "worker-c@b-l"}


def test_two_tcp_listeners_with_different_limits_still_share_their_cluster() -> None:
    first = document(listener("a-l", "tcp", max_sessions=10), name="a")
    second = document(listener("b-l", "tcp", port=3001, max_sessions=20), name="b")
    cache = cache_of(first, copy.deepcopy(second))
    assert cache.conflicts == {}
    assert set(cache.snapshot_for(INGRESS).resources[CLUSTER]) == {"worker-c"}


def test_a_nack_naming_a_private_copy_names_it_alone() -> None:
    """Envoy's error text names `<cluster>@<listener>`: that copy is blamed, not the shared cluster it copies."""
    names = resource_names_in("Error adding/updating cluster(s) worker-c@call-2-l: something is wrong")
    assert "worker-c@call-2-l" in names
    assert "worker-c" not in names
