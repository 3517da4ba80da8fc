"""The VirtualService API: parsing valid documents and every rejection the product promises.

Each rejection asserts the exact field path and a message a user can act on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO
from xds_operator.api import (
    FieldError,
    ValidationError,
    VirtualService,
    cluster_of,
    parse_spec,
    parse_virtual_service,
    pb,
    port_of,
    protocol_of,
)

SAMPLES = sorted(p for p in (REPO / "config" / "samples").glob("*.yaml") if p.name != "kustomization.yaml")

Doc = dict[str, Any]


def valid_doc() -> Doc:
    """A small valid VirtualService: one listener, one strictdns cluster, two address endpoints."""
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "calls", "namespace": "media"},
        "spec": {
            "selector": {"app": "envoy-ingress"},
            "listeners": [
                {
                    "name": "rtp-l",
                    "udp": {
                        "port": 2000,
                        "cluster": {
                            "name": "rtp-c",
                            "hash_key": "callid",
                            "health_check": {"protocol": "TCP", "interval": 500},
                            "endpoints": [
                                {"name": "a", "host": {"address": "10.0.0.1"}, "port": 9001, "health_check_port": 9101},
                                {"name": "b", "host": {"selector": {"app": "worker"}}, "port": 9002},
                            ],
                        },
                    },
                }
            ],
        },
    }


def listener(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["listeners"][index]


def cluster(doc: Doc, index: int = 0) -> Doc:
    return listener(doc, index)["udp"]["cluster"]


def endpoint(doc: Doc, index: int = 0, listener_index: int = 0) -> Doc:
    return cluster(doc, listener_index)["endpoints"][index]


def second_listener(
    doc: Doc, *, name: str = "rtp2-l", port: int = 3000, cluster_name: str = "rtp2-c", protocol: str = "udp"
) -> Doc:
    """Append a copy of listener 0 (as a `protocol` block) with the given name, port and cluster name."""
    extra = copy.deepcopy(listener(doc))
    extra["name"] = name
    block = extra[protocol] = extra.pop("udp", None) or extra.pop("tcp")
    block["port"] = port
    block["cluster"]["name"] = cluster_name
    doc["spec"]["listeners"].append(extra)
    return extra


def as_tcp(doc: Doc, index: int = 0) -> Doc:
    """Turn listener `index` into a TCP listener with the same fields."""
    listener(doc, index)["tcp"] = listener(doc, index).pop("udp")
    return doc


def errors_of(document: Any) -> list[tuple[str, str]]:
    """The (path, message) pairs of a rejected document; fails the test if it is accepted."""
    with pytest.raises(ValidationError) as caught:
        parse_virtual_service(document)
    return [(error.path, error.message) for error in caught.value.errors]


def rejected(mutate: Callable[[Doc], object]) -> list[tuple[str, str]]:
    doc = valid_doc()
    mutate(doc)
    return errors_of(doc)


# -- valid documents ------------------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_parse(path: Path) -> None:
    """Every sample in config/samples is a valid VirtualService."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    for document in documents:
        vs = parse_virtual_service(document, origin=str(path))
        assert isinstance(vs, VirtualService)
        assert vs.origin == str(path)
        assert len(vs.spec.listeners) >= 1


def test_ingress_calls_sample_fields() -> None:
    """The sample's fields arrive in the typed model unchanged."""
    document = yaml.safe_load((REPO / "config/samples/ingress-calls.yaml").read_text())
    vs = parse_virtual_service(document)
    assert vs.key == ("default", "ingress-calls")
    assert dict(vs.spec.selector) == {"app": "envoy-ingress"}
    udp = vs.spec.listeners[0].udp
    assert vs.spec.listeners[0].name == "ingress-rtp-l"
    assert udp.port == 2000
    assert udp.cluster.name == "ingress-rtp-c"
    assert udp.cluster.hash_key == "callid"
    assert udp.cluster.health_check.interval == 500
    assert [e.name for e in udp.cluster.endpoints] == ["worker-a", "worker-b"]
    assert [e.health_check_port for e in udp.cluster.endpoints] == [9101, 9102]


def test_inline_document_parses_with_metadata() -> None:
    doc = valid_doc()
    doc["metadata"].update(generation=3, creationTimestamp="2024-05-01T10:00:00Z", uid="u-1")
    vs = parse_virtual_service(doc, origin="inline")
    assert (vs.namespace, vs.name, vs.generation, vs.created, vs.uid) == (
        "media",
        "calls",
        3,
        1714557600 * 10**9,  # 2024-05-01T10:00:00Z, in nanoseconds since the epoch
        "u-1",
    )
    host_b = vs.spec.listeners[0].udp.cluster.endpoints[1].host
    assert not host_b.HasField("address")
    assert dict(host_b.selector) == {"app": "worker"}
    assert not vs.spec.listeners[0].udp.cluster.endpoints[1].HasField("health_check_port")


def test_status_is_ignored() -> None:
    """A document read back from Kubernetes carries a status; it is not an error."""
    doc = valid_doc()
    doc["status"] = {"conditions": []}
    assert parse_virtual_service(doc).name == "calls"


def test_defaults() -> None:
    """service_discovery defaults to strictdns, health_check.protocol to TCP, namespace to default."""
    doc = valid_doc()
    del doc["metadata"]["namespace"]
    cluster(doc)["health_check"] = {"interval": 1000}
    vs = parse_virtual_service(doc)
    assert vs.namespace == "default"
    assert vs.spec.listeners[0].udp.cluster.service_discovery == "strictdns"
    assert vs.spec.listeners[0].udp.cluster.health_check.protocol == "TCP"


def test_optional_fields_absent() -> None:
    """No hash_key and no health_check: both stay unset (not empty defaults)."""
    doc = valid_doc()
    del cluster(doc)["hash_key"]
    del cluster(doc)["health_check"]
    c = parse_virtual_service(doc).spec.listeners[0].udp.cluster
    assert not c.HasField("hash_key")
    assert not c.HasField("health_check")


def test_eds_with_ip_addresses_is_valid() -> None:
    doc = valid_doc()
    cluster(doc)["service_discovery"] = "eds"
    endpoint(doc, 0)["host"] = {"address": "fd00::1"}
    assert parse_virtual_service(doc).spec.listeners[0].udp.cluster.service_discovery == "eds"


def test_port_bounds_inclusive() -> None:
    doc = valid_doc()
    listener(doc)["udp"]["port"] = 65535
    endpoint(doc, 0)["port"] = 1
    endpoint(doc, 0)["health_check_port"] = 65535
    cluster(doc)["health_check"]["interval"] = 500
    parse_virtual_service(doc)


def test_parse_spec_alone() -> None:
    """A spec alone parses to exactly the spec of the whole document; its problems carry the same paths,
    raised, or collected into a list the caller gives."""
    doc = valid_doc()
    spec = parse_spec(doc["spec"])
    assert spec == parse_virtual_service(doc).spec
    assert [listener.name for listener in spec.listeners] == ["rtp-l"]
    assert [endpoint.name for endpoint in spec.listeners[0].udp.cluster.endpoints] == ["a", "b"]
    with pytest.raises(ValidationError) as caught:
        parse_spec({"selector": {"a": "b"}})
    assert caught.value.errors == [FieldError("spec.listeners", "required")]
    collected: list[FieldError] = []
    parse_spec({"selector": {"a": "b"}}, errors=collected)  # no raise: the caller collects
    assert collected == [FieldError("spec.listeners", "required")]


# -- unknown fields and wrong types ---------------------------------------------------------


def test_unknown_field_top_level() -> None:
    assert rejected(lambda d: d.update(extra=1)) == [("extra", "unknown field")]


def test_unknown_field_in_spec() -> None:
    assert rejected(lambda d: d["spec"].update(listener=[])) == [
        ("spec.listener", "unknown field; did you mean 'listeners'?")
    ]


def test_unknown_field_nested() -> None:
    assert rejected(lambda d: cluster(d).update(lb_policy="MAGLEV")) == [
        ("spec.listeners[0].udp.cluster.lb_policy", "unknown field")
    ]
    assert rejected(lambda d: endpoint(d, 1)["host"].update(ip="1.2.3.4")) == [
        ("spec.listeners[0].udp.cluster.endpoints[1].host.ip", "unknown field")
    ]


def test_unknown_metadata_field() -> None:
    expected = [("metadata.nme", "unknown field; did you mean 'name'?")]
    assert rejected(lambda d: d["metadata"].update(nme="x")) == expected


def test_unknown_field_suggests_the_closest_known_name() -> None:
    # A camelCase spelling of a proto field name, or a typo: the message names the field meant.
    assert rejected(lambda d: cluster(d).update(serviceDiscovery="eds")) == [
        ("spec.listeners[0].udp.cluster.serviceDiscovery", "unknown field; did you mean 'service_discovery'?")
    ]
    assert rejected(lambda d: d.update(metdata={})) == [("metdata", "unknown field; did you mean 'metadata'?")]
    assert rejected(lambda d: d.update(**{"x" * 1000: 1})) == [("x" * 60 + "...", "unknown field")]


def test_port_as_string() -> None:
    assert rejected(lambda d: listener(d)["udp"].update(port="2000")) == [
        ("spec.listeners[0].udp.port", "expected an integer, got a string")
    ]


def test_bool_is_not_an_integer() -> None:
    assert rejected(lambda d: listener(d)["udp"].update(port=True)) == [
        ("spec.listeners[0].udp.port", "expected an integer, got a boolean")
    ]
    assert rejected(lambda d: cluster(d)["health_check"].update(interval=False)) == [
        ("spec.listeners[0].udp.cluster.health_check.interval", "expected an integer, got a boolean")
    ]


def test_float_is_not_an_integer() -> None:
    assert rejected(lambda d: endpoint(d).update(port=9001.0)) == [
        ("spec.listeners[0].udp.cluster.endpoints[0].port", "expected an integer, got a number")
    ]


def test_integer_where_string_expected() -> None:
    assert rejected(lambda d: listener(d).update(name=5)) == [
        ("spec.listeners[0].name", "expected a string, got an integer")
    ]


def test_selector_values_must_be_strings() -> None:
    assert rejected(lambda d: d["spec"]["selector"].update(version=2)) == [
        ("spec.selector.version", "expected a string, got an integer")
    ]


def test_listeners_must_be_a_list() -> None:
    assert rejected(lambda d: d["spec"].update(listeners={"name": "x"})) == [
        ("spec.listeners", "expected a list, got an object")
    ]


def test_listener_item_must_be_an_object() -> None:
    assert rejected(lambda d: d["spec"]["listeners"].append("rtp")) == [
        ("spec.listeners[1]", "expected an object, got a string")
    ]


def test_spec_must_be_an_object() -> None:
    assert rejected(lambda d: d.update(spec="x")) == [("spec", "expected an object, got a string")]


# -- required fields ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["spec"].pop("selector"), "spec.selector"),
        (lambda d: d["spec"].pop("listeners"), "spec.listeners"),
        (lambda d: listener(d).pop("name"), "spec.listeners[0].name"),
        (lambda d: listener(d)["udp"].pop("cluster"), "spec.listeners[0].udp.cluster"),
        (lambda d: cluster(d).pop("name"), "spec.listeners[0].udp.cluster.name"),
        (lambda d: cluster(d).pop("endpoints"), "spec.listeners[0].udp.cluster.endpoints"),
        (lambda d: endpoint(d, 1).pop("name"), "spec.listeners[0].udp.cluster.endpoints[1].name"),
        (lambda d: endpoint(d, 1).pop("host"), "spec.listeners[0].udp.cluster.endpoints[1].host"),
        (lambda d: endpoint(d, 1).pop("port"), "spec.listeners[0].udp.cluster.endpoints[1].port"),
        (lambda d: cluster(d)["health_check"].pop("interval"), "spec.listeners[0].udp.cluster.health_check.interval"),
        (lambda d: d.pop("spec"), "spec"),
        (lambda d: d.pop("metadata"), "metadata"),
        (lambda d: d["metadata"].pop("name"), "metadata.name"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_missing_required_field(mutate: Callable[[Doc], object], path: str) -> None:
    assert rejected(mutate) == [(path, "required")]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (lambda d: d["spec"].update(selector={}), "spec.selector", "must not be empty"),
        (lambda d: d["spec"].update(listeners=[]), "spec.listeners", "must have at least one item"),
        (
            lambda d: cluster(d).update(endpoints=[]),
            "spec.listeners[0].udp.cluster.endpoints",
            "must have at least one item",
        ),
        (lambda d: cluster(d).update(name=""), "spec.listeners[0].udp.cluster.name", "must not be empty"),
    ],
    ids=["selector", "listeners", "endpoints", "cluster-name"],
)
def test_required_field_empty(mutate: Callable[[Doc], object], path: str, message: str) -> None:
    assert rejected(mutate) == [(path, message)]


# -- ranges and enums -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 0, "must be at least 1, got 0"),
        ("port", 65536, "must be at most 65535, got 65536"),
        ("port", -1, "must be at least 1, got -1"),
        ("health_check_port", 0, "must be at least 1, got 0"),
        ("health_check_port", 65536, "must be at most 65535, got 65536"),
    ],
)
def test_endpoint_port_range(field: str, value: int, message: str) -> None:
    assert rejected(lambda d: endpoint(d).update({field: value})) == [
        (f"spec.listeners[0].udp.cluster.endpoints[0].{field}", message)
    ]


@pytest.mark.parametrize(
    ("value", "message"), [(0, "must be at least 1, got 0"), (65536, "must be at most 65535, got 65536")]
)
def test_listener_port_range(value: int, message: str) -> None:
    assert rejected(lambda d: listener(d)["udp"].update(port=value)) == [("spec.listeners[0].udp.port", message)]


def test_health_check_interval_below_500() -> None:
    assert rejected(lambda d: cluster(d)["health_check"].update(interval=499)) == [
        ("spec.listeners[0].udp.cluster.health_check.interval", "must be at least 500, got 499")
    ]


@pytest.mark.parametrize("protocol", ["HTTP", "UDP", "tcp"])
def test_health_check_protocol_only_tcp(protocol: str) -> None:
    [(path, message)] = rejected(lambda d: cluster(d)["health_check"].update(protocol=protocol))
    assert path == "spec.listeners[0].udp.cluster.health_check.protocol"
    assert message == f"must be one of TCP; got {protocol!r}"


@pytest.mark.parametrize("mode", ["dns", "STRICT_DNS", "static", "EDS"])
def test_service_discovery_enum(mode: str) -> None:
    [(path, message)] = rejected(lambda d: cluster(d).update(service_discovery=mode))
    assert path == "spec.listeners[0].udp.cluster.service_discovery"
    assert message == f"must be one of strictdns, eds; got {mode!r}"


def test_listener_name_pattern() -> None:
    [(path, message)] = rejected(lambda d: listener(d).update(name="bad name!"))
    assert path == "spec.listeners[0].name"
    assert "'bad name!' must match" in message


def test_hash_key_too_long() -> None:
    assert rejected(lambda d: cluster(d).update(hash_key="k" * 257)) == [
        ("spec.listeners[0].udp.cluster.hash_key", "must be at most 256 characters, got 257")
    ]


# -- hosts ----------------------------------------------------------------------------------


def test_host_with_both_address_and_selector() -> None:
    assert rejected(lambda d: endpoint(d, 1)["host"].update(address="10.0.0.2")) == [
        ("spec.listeners[0].udp.cluster.endpoints[1].host", "set exactly one of address, selector")
    ]


@pytest.mark.parametrize(
    "host", [{}, {"selector": {}}, {"address": None}], ids=["empty", "empty-selector", "null-address"]
)
def test_host_with_neither_address_nor_selector(host: Doc) -> None:
    assert rejected(lambda d: endpoint(d, 1).update(host=host)) == [
        ("spec.listeners[0].udp.cluster.endpoints[1].host", "set exactly one of address, selector")
    ]


def test_eds_cluster_rejects_dns_name() -> None:
    def mutate(d: Doc) -> None:
        cluster(d)["service_discovery"] = "eds"
        endpoint(d, 0)["host"] = {"address": "worker.media.svc"}

    [(path, message)] = rejected(mutate)
    assert path == "spec.listeners[0].udp.cluster.endpoints[0].host.address"
    assert "'worker.media.svc' is not an IP address" in message
    assert "strictdns" in message


def test_strictdns_cluster_accepts_dns_name() -> None:
    doc = valid_doc()
    endpoint(doc, 0)["host"] = {"address": "worker.media.svc"}
    assert parse_virtual_service(doc).spec.listeners[0].udp.cluster.endpoints[0].host.address == "worker.media.svc"


# -- tcp listeners -------------------------------------------------------------------------


def test_tcp_listener_parses_with_the_same_fields() -> None:
    vs = parse_virtual_service(as_tcp(valid_doc()))
    [only] = vs.spec.listeners
    assert only.WhichOneof("protocol") == "tcp"
    assert (protocol_of(only), port_of(only), cluster_of(only).name) == ("TCP", 2000, "rtp-c")
    assert cluster_of(only).hash_key == "callid"
    assert [e.name for e in cluster_of(only).endpoints] == ["a", "b"]


def test_protocol_helpers_on_a_udp_listener() -> None:
    [only] = parse_virtual_service(valid_doc()).spec.listeners
    assert (protocol_of(only), port_of(only), cluster_of(only).name) == ("UDP", 2000, "rtp-c")


def test_protocol_helpers_name_a_listener_without_a_block() -> None:
    with pytest.raises(ValueError, match="'bare' has neither a udp nor a tcp block"):
        protocol_of(pb.Listener(name="bare"))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: listener(d).pop("udp"),
        lambda d: listener(d).update(udp=None),  # explicit YAML null
        lambda d: listener(d).update(udp={}),
    ],
    ids=["absent", "null", "empty"],
)
def test_listener_needs_a_udp_or_a_tcp_block(mutate: Callable[[Doc], object]) -> None:
    assert ("spec.listeners[0]", "set exactly one of udp, tcp") in rejected(mutate)


def test_listener_with_both_blocks_is_rejected_once() -> None:
    """Only the listener is blamed: the other listeners' ports and clusters are not reported as duplicates."""

    def mutate(d: Doc) -> None:
        second_listener(d, name="tcp-l", cluster_name="tcp-c", port=2000, protocol="tcp")
        listener(d)["tcp"] = copy.deepcopy(listener(d)["udp"])

    assert rejected(mutate) == [("spec.listeners[0]", "set exactly one of udp, tcp")]


def test_tcp_errors_name_the_tcp_path() -> None:
    def mutate(d: Doc) -> None:
        as_tcp(d)
        listener(d)["tcp"]["port"] = 0
        listener(d)["tcp"]["cluster"]["service_discovery"] = "eds"
        listener(d)["tcp"]["cluster"]["endpoints"][0]["host"] = {"address": "worker.media.svc"}

    errors = rejected(mutate)
    assert ("spec.listeners[0].tcp.port", "must be at least 1, got 0") in errors
    assert any(path == "spec.listeners[0].tcp.cluster.endpoints[0].host.address" for path, _ in errors)


def test_udp_and_tcp_listeners_may_share_a_port() -> None:
    doc = valid_doc()
    second_listener(doc, port=2000, protocol="tcp")
    spec = parse_virtual_service(doc).spec
    assert [(protocol_of(item), port_of(item)) for item in spec.listeners] == [("UDP", 2000), ("TCP", 2000)]


def test_two_tcp_listeners_may_not_share_a_port() -> None:
    def mutate(d: Doc) -> None:
        as_tcp(d)
        second_listener(d, port=3000, protocol="tcp")
        second_listener(d, name="rtp3-l", cluster_name="rtp3-c", port=3000, protocol="tcp")

    assert rejected(mutate) == [("spec.listeners[2].tcp.port", "duplicate port 3000 (also in spec.listeners[1])")]


def test_cluster_names_are_unique_across_protocols() -> None:
    assert rejected(lambda d: second_listener(d, cluster_name="rtp-c", protocol="tcp")) == [
        ("spec.listeners[1].tcp.cluster.name", "duplicate cluster name 'rtp-c' (also in spec.listeners[0])")
    ]


# -- uniqueness -----------------------------------------------------------------------------


def test_duplicate_listener_names() -> None:
    assert rejected(lambda d: second_listener(d, name="rtp-l")) == [
        ("spec.listeners[1].name", "duplicate name 'rtp-l' (also in spec.listeners[0])")
    ]


def test_duplicate_cluster_names_across_listeners() -> None:
    assert rejected(lambda d: second_listener(d, cluster_name="rtp-c")) == [
        ("spec.listeners[1].udp.cluster.name", "duplicate cluster name 'rtp-c' (also in spec.listeners[0])")
    ]


def test_duplicate_ports_across_listeners() -> None:
    assert rejected(lambda d: second_listener(d, port=2000)) == [
        ("spec.listeners[1].udp.port", "duplicate port 2000 (also in spec.listeners[0])")
    ]


def test_duplicate_endpoint_names() -> None:
    assert rejected(lambda d: endpoint(d, 1).update(name="a")) == [
        (
            "spec.listeners[0].udp.cluster.endpoints[1].name",
            "duplicate name 'a' (also in spec.listeners[0].udp.cluster.endpoints[0])",
        )
    ]


def test_same_endpoint_name_in_different_clusters_is_fine() -> None:
    doc = valid_doc()
    second_listener(doc)
    assert len(parse_virtual_service(doc).spec.listeners) == 2


# -- metadata, apiVersion, kind, document shape ---------------------------------------------


@pytest.mark.parametrize("name", ["Calls", "calls_1", "-calls", "calls-", "a" * 254, ""])
def test_bad_metadata_name(name: str) -> None:
    [(path, message)] = rejected(lambda d: d["metadata"].update(name=name))
    assert path == "metadata.name"
    shown = name if len(name) <= 60 else name[:60] + "..."  # messages quote long values cut short
    assert message == ("required" if name == "" else f"{shown!r} is not a valid Kubernetes object name")


def test_bad_namespace() -> None:
    assert rejected(lambda d: d["metadata"].update(namespace="Media.x")) == [
        ("metadata.namespace", "'Media.x' is not a valid namespace")
    ]


def test_generation_must_be_an_integer() -> None:
    """A malformed generation is a validation error, not a crash."""
    assert rejected(lambda d: d["metadata"].update(generation="abc")) == [
        ("metadata.generation", "expected an integer, got a string")
    ]


def test_wrong_api_version() -> None:
    assert rejected(lambda d: d.update(apiVersion="servicemesh.l7mp.io/v2")) == [
        ("apiVersion", "must be 'servicemesh.l7mp.io/v1', got 'servicemesh.l7mp.io/v2'")
    ]


def test_wrong_kind() -> None:
    assert rejected(lambda d: d.update(kind="Service")) == [("kind", "must be 'VirtualService', got 'Service'")]


@pytest.mark.parametrize(
    ("document", "described"), [([1, 2], "a list"), ("text", "a string"), (None, "null"), (3, "an integer")]
)
def test_document_not_a_mapping(document: Any, described: str) -> None:
    assert errors_of(document) == [("(document)", f"expected a mapping, got {described}")]


# -- all errors at once ---------------------------------------------------------------------


def test_all_errors_reported_at_once() -> None:
    """One pass reports every problem of a document, including the cross-listener ones."""
    doc = valid_doc()
    doc["kind"] = "Other"
    doc["bogus"] = True
    doc["metadata"]["name"] = "Bad"
    listener(doc)["udp"]["port"] = 0
    cluster(doc)["health_check"]["interval"] = 10
    endpoint(doc, 1)["host"]["address"] = "10.0.0.9"
    endpoint(doc, 0)["health_check_port"] = "9101"
    second_listener(doc, name="second", port=3000, cluster_name="c2")
    second_listener(doc, name="third", port=3000, cluster_name="c2")
    errors = errors_of(doc)
    expected = {
        ("kind", "must be 'VirtualService', got 'Other'"),
        ("bogus", "unknown field"),
        ("metadata.name", "'Bad' is not a valid Kubernetes object name"),
        ("spec.listeners[0].udp.port", "must be at least 1, got 0"),
        ("spec.listeners[0].udp.cluster.health_check.interval", "must be at least 500, got 10"),
        ("spec.listeners[0].udp.cluster.endpoints[1].host", "set exactly one of address, selector"),
        ("spec.listeners[0].udp.cluster.endpoints[0].health_check_port", "expected an integer, got a string"),
        ("spec.listeners[2].udp.port", "duplicate port 3000 (also in spec.listeners[1])"),
        ("spec.listeners[2].udp.cluster.name", "duplicate cluster name 'c2' (also in spec.listeners[1])"),
    }
    assert expected <= set(errors)
    # The copies in listeners 1 and 2 repeat listener 0's bad fields; nothing beyond those is reported.
    assert all(path.startswith(("kind", "bogus", "metadata", "spec.listeners[")) for path, _ in errors)


def test_validation_error_message_lists_every_problem() -> None:
    doc = valid_doc()
    listener(doc)["udp"]["port"] = "x"
    del cluster(doc)["name"]
    with pytest.raises(ValidationError) as caught:
        parse_virtual_service(doc)
    text = str(caught.value)
    assert "spec.listeners[0].udp.port: expected an integer, got a string" in text
    assert "spec.listeners[0].udp.cluster.name: required" in text
