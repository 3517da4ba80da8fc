"""Golden tests for translate: VirtualService (+ resolved pods) → Envoy Listener / Cluster / ClusterLoadAssignment.

Inputs are tests/translate/golden/<case>.input.yaml; the expected output is
tests/translate/golden/<case>.golden.json (protobuf JSON, Any payloads expanded). Run with
UPDATE_GOLDEN=1 to rewrite the golden files, then review the diff. The rules of the README's
translation table ("How it becomes Envoy configuration", under "The VirtualService API") are also
asserted directly, so a golden file rewritten by mistake cannot hide a broken rule.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import route_pb2, udp_proxy_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from xds_operator.api import VirtualService, cluster_of, parse_virtual_service, port_of, protocol_of
from xds_operator.translate import (
    CONNECTION_LIMIT_FILTER,
    HASH_KEY_STATE,
    HASHABLE_STRING_FACTORY,
    SET_FILTER_STATE_FILTER,
    TCP_PROXY_FILTER,
    UDP_PROXY_FILTER,
    EnvoyResources,
    translate_virtual_service,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(path.name.removesuffix(".input.yaml") for path in GOLDEN.glob("*.input.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# The pods the fake resolver knows: (namespace, selector) → pod IPs, deliberately unsorted.
PODS: dict[tuple[str, frozenset[tuple[str, str]]], list[str]] = {
    ("media", frozenset({("app", "media-worker")})): ["10.1.0.12", "10.1.0.3", "10.1.0.7"],
    ("other", frozenset({("app", "media-worker")})): ["10.66.0.1"],  # a different namespace: never used
}


def fake_pods(namespace: str, selector: Mapping[str, str]) -> Sequence[str]:
    """A selector resolver over the fixed PODS table (input to translate, not a mock)."""
    return PODS.get((namespace, frozenset(selector.items())), [])


def load(case: str) -> VirtualService:
    path = GOLDEN / f"{case}.input.yaml"
    return parse_virtual_service(yaml.safe_load(path.read_text()), origin=str(path))


def to_json(message: Message) -> object:
    return json.loads(json_format.MessageToJson(message, sort_keys=True))


def render(resources: EnvoyResources) -> str:
    """The golden text of one translation: every resource as protobuf JSON, in output order."""
    document = {
        "listeners": [to_json(m) for m in resources.listeners],
        "clusters": [to_json(m) for m in resources.clusters],
        "load_assignments": [to_json(m) for m in resources.load_assignments],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def all_translations() -> list[EnvoyResources]:
    return [translate_virtual_service(load(case), fake_pods) for case in CASES]


def udp_proxy_config(listener: Message) -> udp_proxy_pb2.UdpProxyConfig:
    [listener_filter] = listener.listener_filters
    assert listener_filter.name == UDP_PROXY_FILTER
    config = udp_proxy_pb2.UdpProxyConfig()
    assert listener_filter.typed_config.Unpack(config)
    return config


def tcp_filters(listener: Message) -> list[tuple[str, Message]]:
    """The network filters of a TCP listener's only filter chain, unpacked, in order."""
    assert list(listener.listener_filters) == []
    [chain] = listener.filter_chains
    kinds = {
        SET_FILTER_STATE_FILTER: set_filter_state_pb2.Config,
        TCP_PROXY_FILTER: tcp_proxy_pb2.TcpProxy,
        CONNECTION_LIMIT_FILTER: connection_limit_pb2.ConnectionLimit,
    }
    unpacked = []
    for network_filter in chain.filters:
        config = kinds[network_filter.name]()
        assert network_filter.typed_config.Unpack(config)
        unpacked.append((network_filter.name, config))
    return unpacked


def listener_pairs(case: str) -> list[tuple[object, Message, Message]]:
    """(spec listener, Envoy listener, Envoy cluster) of a golden case."""
    vs = load(case)
    translation = translate_virtual_service(vs, fake_pods)
    return list(zip(vs.spec.listeners, translation.listeners, translation.clusters, strict=True))


# -- golden files ---------------------------------------------------------------------------


def test_there_are_golden_cases() -> None:
    assert {"strictdns-hash-healthcheck", "eds-addresses", "plain", "selector", "tcp"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    actual = render(translate_virtual_service(load(case), fake_pods))
    golden_path = GOLDEN / f"{case}.golden.json"
    if UPDATE:
        golden_path.write_text(actual)
        return
    if not golden_path.exists():
        pytest.fail(f"{golden_path.name} is missing; create it with UPDATE_GOLDEN=1 and review it")
    expected = golden_path.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"golden/{golden_path.name}",
                "translated",
            )
        )
        pytest.fail(f"translation of {case} differs from its golden file (UPDATE_GOLDEN=1 rewrites it):\n{diff}")


# -- the table rules, asserted directly -----------------------------------------------------


def test_udp_proxy_routes_through_matcher_never_the_deprecated_cluster_field() -> None:
    for case in CASES:
        for spec_listener, listener, cluster in listener_pairs(case):
            if protocol_of(spec_listener) != "UDP":
                continue
            config = udp_proxy_config(listener)
            assert config.cluster == "", case
            assert config.WhichOneof("route_specifier") == "matcher", case
            assert not config.matcher.HasField("matcher_list"), case
            on_no_match = config.matcher.on_no_match
            assert on_no_match.action.name == "route"
            route = route_pb2.Route()
            assert on_no_match.action.typed_config.Unpack(route)
            assert route.cluster == cluster.name
            assert config.stat_prefix == listener.name


def test_listener_binds_its_protocol_on_all_addresses() -> None:
    protocols = {"UDP": address_pb2.SocketAddress.UDP, "TCP": address_pb2.SocketAddress.TCP}
    seen = set()
    for case in ("selector", "tcp"):
        for spec_listener, listener, _ in listener_pairs(case):
            socket = listener.address.socket_address
            assert listener.name == spec_listener.name
            expected = ("0.0.0.0", port_of(spec_listener), protocols[protocol_of(spec_listener)])
            assert (socket.address, socket.port_value, socket.protocol) == expected
            seen.add(protocol_of(spec_listener))
    assert seen == {"UDP", "TCP"}


def test_tcp_listener_is_one_filter_chain_with_tcp_proxy_to_its_cluster() -> None:
    tcp = [(s, listener, c) for s, listener, c in listener_pairs("tcp") if protocol_of(s) == "TCP"]
    assert len(tcp) == 2
    for spec_listener, listener, cluster in tcp:
        *before, (name, proxy) = tcp_filters(listener)
        assert name == TCP_PROXY_FILTER
        assert (proxy.cluster, proxy.stat_prefix) == (cluster.name, listener.name)
        assert [filter_name for filter_name, _ in before] == (
            [SET_FILTER_STATE_FILTER] if cluster_of(spec_listener).HasField("hash_key") else []
        )


def test_tcp_hash_key_reaches_tcp_proxy_through_a_hashable_filter_state_object() -> None:
    """set_filter_state stores the key (a format string: % doubled) where tcp_proxy's hash policy reads it."""
    [(spec_listener, listener, _)] = [p for p in listener_pairs("tcp") if p[0].name == "sip-l"]
    assert cluster_of(spec_listener).hash_key == "call%id"
    (_, state), (_, proxy) = tcp_filters(listener)
    [value] = state.on_new_connection
    assert (value.object_key, value.factory_key) == (HASH_KEY_STATE, HASHABLE_STRING_FACTORY)
    assert value.format_string.text_format_source.inline_string == "call%%id"
    [policy] = proxy.hash_policy
    assert policy.filter_state.key == HASH_KEY_STATE


def test_maglev_and_hash_policy_only_with_hash_key() -> None:
    seen = set()
    for case in CASES:
        for spec_listener, listener, cluster in listener_pairs(case):
            spec_cluster = cluster_of(spec_listener)
            if spec_cluster.HasField("hash_by"):
                continue  # hashing by source IP: tests/test_sessions_translate.py
            has_key = spec_cluster.HasField("hash_key")
            seen.add((protocol_of(spec_listener), has_key))
            if protocol_of(spec_listener) == "UDP":
                policies = [policy.key for policy in udp_proxy_config(listener).hash_policies]
                expected = [spec_cluster.hash_key] if has_key else []
            else:
                proxy = tcp_filters(listener)[-1][1]
                policies = [policy.filter_state.key for policy in proxy.hash_policy]
                expected = [HASH_KEY_STATE] if has_key else []
            assert policies == expected
            assert cluster.lb_policy == (cluster_pb2.Cluster.MAGLEV if has_key else cluster_pb2.Cluster.ROUND_ROBIN)
    assert seen == {("UDP", True), ("UDP", False), ("TCP", True), ("TCP", False)}  # every branch has a case


def test_health_check_rules() -> None:
    seen = set()
    for case in CASES:
        for spec_listener, _, cluster in listener_pairs(case):
            spec_cluster = cluster_of(spec_listener)
            seen.add(spec_cluster.HasField("health_check"))
            if not spec_cluster.HasField("health_check"):
                assert list(cluster.health_checks) == []
                assert not cluster.common_lb_config.HasField("healthy_panic_threshold")
                continue
            [check] = cluster.health_checks
            interval_ms = spec_cluster.health_check.interval
            assert check.interval.ToMilliseconds() == interval_ms
            assert check.no_traffic_interval == check.interval
            assert 0 < check.timeout.ToMilliseconds() < interval_ms
            assert (check.unhealthy_threshold.value, check.healthy_threshold.value) == (1, 1)
            assert check.WhichOneof("health_checker") == "tcp_health_check"
            assert not check.tcp_health_check.HasField("send") and list(check.tcp_health_check.receive) == []
            assert cluster.common_lb_config.HasField("healthy_panic_threshold")
            assert cluster.common_lb_config.healthy_panic_threshold.value == 0
    assert seen == {True, False}


def test_every_cluster_ignores_health_on_host_removal() -> None:
    clusters = [cluster for translation in all_translations() for cluster in translation.clusters]
    assert len(clusters) >= 5
    assert all(cluster.ignore_health_on_host_removal for cluster in clusters)


def test_eds_cluster_uses_ads_v3_and_gets_a_load_assignment() -> None:
    translation = translate_virtual_service(load("eds-addresses"), fake_pods)
    [cluster] = translation.clusters
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert not cluster.HasField("load_assignment")
    eds_config = cluster.eds_cluster_config.eds_config
    assert eds_config.WhichOneof("config_source_specifier") == "ads"
    assert eds_config.resource_api_version == config_source_pb2.V3
    [assignment] = translation.load_assignments
    assert assignment.cluster_name == cluster.name
    endpoints = [lb.endpoint for locality in assignment.endpoints for lb in locality.lb_endpoints]
    assert {(e.address.socket_address.address, e.address.socket_address.port_value) for e in endpoints} == {
        ("192.0.2.10", 7000),
        ("2001:db8::7", 7000),
    }


def test_strictdns_cluster_has_inline_endpoints_and_no_load_assignment_resource() -> None:
    translation = translate_virtual_service(load("strictdns-hash-healthcheck"), fake_pods)
    [cluster] = translation.clusters
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    assert translation.load_assignments == []
    assert cluster.load_assignment.cluster_name == cluster.name
    endpoints = [lb.endpoint for locality in cluster.load_assignment.endpoints for lb in locality.lb_endpoints]
    assert [
        (e.address.socket_address.address, e.address.socket_address.port_value, e.health_check_config.port_value)
        for e in endpoints
    ] == [("10.0.0.1", 9001, 9101), ("worker-b.media.svc.cluster.local", 9002, 9102)]


def test_selector_endpoints_are_resolved_pods_of_the_namespace() -> None:
    translation = translate_virtual_service(load("selector"), fake_pods)
    assignment = {a.cluster_name: a for a in translation.load_assignments}["rtp-c"]
    endpoints = [lb.endpoint for locality in assignment.endpoints for lb in locality.lb_endpoints]
    got = [(e.address.socket_address.address, e.health_check_config.port_value) for e in endpoints]
    # Pods sorted, the fixed address alongside; health_check_port only on the selector's endpoints.
    assert sorted(got) == sorted([("10.1.0.12", 8080), ("10.1.0.3", 8080), ("10.1.0.7", 8080), ("10.9.9.9", 0)])
    assert "10.66.0.1" not in json.dumps([to_json(m) for m in translation.clusters + translation.load_assignments])


def test_selector_without_pods_leaves_the_cluster_without_endpoints() -> None:
    """No resolver (directory mode): a selector-only eds cluster still gets an (empty) assignment."""
    vs = load("selector")
    translation = translate_virtual_service(vs)
    [assignment] = translation.load_assignments
    addresses = [lb.endpoint.address.socket_address.address for loc in assignment.endpoints for lb in loc.lb_endpoints]
    assert addresses == ["10.9.9.9"]
    rtcp = {c.name: c for c in translation.clusters}["rtcp-c"]
    assert list(rtcp.load_assignment.endpoints) == []


# -- determinism ----------------------------------------------------------------------------


def serialized(resources: EnvoyResources) -> list[bytes]:
    messages = resources.listeners + resources.clusters + resources.load_assignments
    return [m.SerializeToString(deterministic=True) for m in messages]


@pytest.mark.parametrize("case", CASES)
def test_translation_is_deterministic(case: str) -> None:
    first = serialized(translate_virtual_service(load(case), fake_pods))
    second = serialized(translate_virtual_service(load(case), fake_pods))
    assert first == second


def test_pod_order_does_not_change_the_bytes() -> None:
    """The resolver may list pods in any order; the output is the same."""

    def reversed_pods(namespace: str, selector: Mapping[str, str]) -> Sequence[str]:
        return list(reversed(fake_pods(namespace, selector)))

    vs = load("selector")
    assert serialized(translate_virtual_service(vs, fake_pods)) == serialized(
        translate_virtual_service(vs, reversed_pods)
    )
