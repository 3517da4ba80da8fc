"""The generated CRD: fresh, a valid CustomResourceDefinition, and in agreement with the validator.

Without an API server, the CRD's two layers are checked separately: its openAPIV3Schema with
`jsonschema` (unknown fields rejected, as kubectl's default strict field validation does), and
its x-kubernetes-validations rules with a real CEL implementation (cel-python), applied where
the API server applies them. Every rejection is checked against parse_virtual_service too, so
the CRD and the validator stay two views of one API.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.paths import REPO
from xds_operator.api import ValidationError, crd, parse_virtual_service
from xds_operator.api.schema import API_GROUP, API_VERSION, KIND, MAX_STATUS_ADDRESSES
from xds_operator.status.conditions import Observed, status_of
from xds_operator.status.progress import Progress
from xds_operator.status.readiness import Resolution, listener_states
from xds_operator.translate import resolve_virtual_service

SAMPLES = sorted(p for p in (REPO / "config" / "samples").glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VERSION = "1.32"

Doc = dict[str, Any]


COMMITTED = crd.OUTPUT


@cache
def committed_text() -> str:
    return COMMITTED.read_text() if COMMITTED.is_file() else ""


def load_committed() -> Doc:
    return yaml.safe_load(committed_text())


@cache
def openapi_schema() -> Doc:
    return load_committed()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def valid_doc() -> Doc:
    """A UDP and a TCP listener on one port number; endpoints with an address, a selector, both forms of optionals."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
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
                            "service_discovery": "strictdns",
                            "hash_key": "callid",
                            "health_check": {"protocol": "TCP", "interval": 500},
                            "endpoints": [
                                {"name": "a", "host": {"address": "10.0.0.1"}, "port": 9001, "health_check_port": 9101},
                                {"name": "b", "host": {"selector": {"app": "worker"}}, "port": 9002},
                            ],
                        },
                    },
                },
                {
                    "name": "sip-l",
                    "tcp": {
                        "port": 2000,
                        "cluster": {
                            "name": "sip-c",
                            "endpoints": [{"name": "a", "host": {"address": "worker.media.svc"}, "port": 9003}],
                        },
                    },
                },
            ],
        },
    }


def listener(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["listeners"][index]


def block(doc: Doc, index: int = 0) -> Doc:
    """The listener's udp or tcp block."""
    item = listener(doc, index)
    return item["udp"] if "udp" in item else item["tcp"]


def cluster(doc: Doc, index: int = 0) -> Doc:
    return block(doc, index)["cluster"]


def endpoint(doc: Doc, index: int = 0) -> Doc:
    return cluster(doc)["endpoints"][index]


def many_listeners(count: int) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        template = listener(doc)
        doc["spec"]["listeners"] = []
        for index in range(count):
            item = copy.deepcopy(template)
            item["name"] = f"l{index}"
            item["udp"]["port"] = 2000 + index
            item["udp"]["cluster"]["name"] = f"c{index}"
            doc["spec"]["listeners"].append(item)

    return mutate


def many_endpoints(count: int) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        cluster(doc)["endpoints"] = [
            {"name": f"e{index}", "host": {"address": f"10.0.0.{index + 1}"}, "port": 9000 + index}
            for index in range(count)
        ]

    return mutate


def mutated(mutate: Callable[[Doc], object]) -> Doc:
    doc = valid_doc()
    mutate(doc)
    return doc


def validator_errors(doc: Doc) -> list[tuple[str, str]]:
    try:
        parse_virtual_service(doc)
    except ValidationError as error:
        return [(e.path, e.message) for e in error.errors]
    return []


# -------------------------------------------------------------------------------- freshness


def test_committed_crd_is_fresh() -> None:
    committed = committed_text()
    fresh = crd.render()
    if committed != fresh:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                fresh.splitlines(keepends=True),
                fromfile=f"committed {crd.OUTPUT.relative_to(REPO)}",
                tofile="generated from protos/",
                n=1,
            )
        )
        pytest.fail(
            f"{crd.OUTPUT.relative_to(REPO)} is stale: the API changed without regenerating the CRD. "
            f"Run `make crds` and commit the result.\n{diff[:4000]}"
        )


def test_check_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_check_mode_reports_a_stale_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    stale = tmp_path / crd.OUTPUT.name
    stale.write_text(crd.render().replace("maxItems: 64", "maxItems: 65"))
    monkeypatch.setattr(crd, "OUTPUT", stale)
    monkeypatch.setattr(crd, "REPO", tmp_path)
    assert crd.main(["--check"]) == 1
    assert "run `make crds`" in capsys.readouterr().err


# -------------------------------------------------------------------------------- the CRD object itself


def test_crd_is_a_valid_custom_resource_definition() -> None:
    kubernetes_validate.validate(load_committed(), KUBERNETES_VERSION, strict=True)


@cache
def kubernetes_definitions() -> dict[str, Any]:
    """The published definitions (kubernetes-validate ships them) of JSONSchemaProps and ValidationRule."""
    version = f"v{KUBERNETES_VERSION}.0-local-strict"
    path = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / version / "_definitions.json"
    definitions = json.loads(path.read_text())["$defs"]
    prefix = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1."
    return {name: definitions[prefix + name] for name in ("JSONSchemaProps", "ValidationRule")}


def schema_nodes(schema: Doc, path: str = "openAPIV3Schema") -> Iterator[tuple[str, Doc]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.properties.{name}")
    if isinstance(schema.get("items"), dict):
        yield from schema_nodes(schema["items"], f"{path}.items")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from schema_nodes(schema["additionalProperties"], f"{path}.additionalProperties")


def test_every_schema_node_is_structural() -> None:
    """kubernetes-validate does not look inside an array's `items` (JSONSchemaPropsOrArray is open), so check here.

    Every node uses only JSONSchemaProps keys, has a type, and every CEL rule only ValidationRule keys.
    """
    known = set(kubernetes_definitions()["JSONSchemaProps"]["properties"])
    rule_keys = set(kubernetes_definitions()["ValidationRule"]["properties"])
    for path, node in schema_nodes(openapi_schema()):
        assert set(node) <= known, f"{path}: not JSONSchemaProps keys: {sorted(set(node) - known)}"
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, f"{path}: type"
        assert not ("properties" in node and "additionalProperties" in node), f"{path}: both kinds of properties"
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= rule_keys, f"{path}: {sorted(set(rule) - rule_keys)}"
            assert rule["message"] and "\n" not in rule["message"], path
        if node.get("x-kubernetes-list-type") == "map":
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"]), path
        assert "x-kubernetes-preserve-unknown-fields" not in node, f"{path}: every field is known"


def test_names_and_columns() -> None:
    spec = load_committed()["spec"]
    assert load_committed()["metadata"]["name"] == f"virtualservices.{API_GROUP}"
    assert spec["names"]["shortNames"] == ["vsvc"]
    assert spec["scope"] == "Namespaced"
    [version] = spec["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns == {
        "Listeners": ".spec.listeners[*].name",
        "UDP": ".spec.listeners[*].udp.port",
        "TCP": ".spec.listeners[*].tcp.port",
        "Port": ".status.listeners[*].port",
        "Programmed": '.status.conditions[?(@.type=="Programmed")].status',
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Age": ".metadata.creationTimestamp",
    }


# -------------------------------------------------------------------------------- openAPIV3Schema


def strict(schema: Any) -> Any:
    """The OpenAPI schema as JSON Schema, rejecting unknown fields like strict field validation does.

    (The API server would prune them instead with validation off; kubectl defaults to strict.)
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    open_ = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not open_:
        converted["additionalProperties"] = False
    if "properties" in schema:  # property names are not schemas: keep them, whatever they are called
        converted["properties"] = {name: strict(child) for name, child in schema["properties"].items()}
    return converted


@cache
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = strict(openapi_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(doc: Doc) -> list[str]:
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in schema_validator().iter_errors(doc)
    ]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_pass_the_crd(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    for document in documents:
        assert schema_errors(document) == []
        assert cel_errors(document) == []


def test_valid_document_passes_both() -> None:
    doc = valid_doc()
    assert validator_errors(doc) == []
    assert schema_errors(doc) == []
    assert cel_errors(doc) == []


def test_status_as_the_operator_writes_it_passes() -> None:
    doc = valid_doc()
    vs = parse_virtual_service(doc)
    listeners = listener_states(
        vs, resolve_virtual_service(vs, lambda ns, sel: ["10.1.0.1"]), lambda host: Resolution.RESOLVES
    )
    for progress, addresses in ((Progress(2, 2), ("10.0.0.1", "10.0.0.2")), (Progress(2, 1), ()), (Progress(), ())):
        observed = Observed(3, serving_generation=3, progress=progress, listeners=listeners, addresses=addresses)
        doc["status"] = status_of(observed, None, "2026-01-01T00:00:00Z")
        assert [c["type"] for c in doc["status"]["conditions"]] == ["Accepted", "Programmed", "Ready", "Conflicted"]
        written = [(listener["name"], listener["protocol"]) for listener in doc["status"]["listeners"]]
        assert written == [("rtp-l", "UDP"), ("sip-l", "TCP")]
        assert schema_errors(doc) == []
    doc["status"]["listeners"][0]["cluster"]["readyEndpoints"] = -1
    assert schema_errors(doc)
    doc["status"]["listeners"][0]["cluster"]["readyEndpoints"] = 0
    doc["status"]["conditions"][0]["status"] = "Yes"
    assert schema_errors(doc)


def test_status_lists_at_most_as_many_proxy_addresses_as_the_schema_allows() -> None:
    doc = valid_doc()
    vs = parse_virtual_service(doc)
    listeners = listener_states(vs, resolve_virtual_service(vs), lambda host: Resolution.RESOLVES)
    many = tuple(f"10.0.{i // 256}.{i % 256}" for i in range(1000))
    doc["status"] = status_of(
        Observed(1, serving_generation=1, listeners=listeners, addresses=many), None, "2026-01-01T00:00:00Z"
    )
    assert len(doc["status"]["listeners"][0]["addresses"]) == MAX_STATUS_ADDRESSES
    doc["status"]["conditions"] = []
    assert schema_errors(doc) == []


# Documents the validator rejects for what a schema can say: both must reject them.
SCHEMA_REJECTIONS: dict[str, Callable[[Doc], object]] = {
    "port 0": lambda d: listener(d)["udp"].update(port=0),
    "port 70000": lambda d: listener(d)["udp"].update(port=70000),
    "port as a string": lambda d: listener(d)["udp"].update(port="2000"),
    "endpoint port 0": lambda d: endpoint(d).update(port=0),
    "health check port 65536": lambda d: endpoint(d).update(health_check_port=65536),
    "interval below 500": lambda d: cluster(d)["health_check"].update(interval=499),
    "unknown service_discovery": lambda d: cluster(d).update(service_discovery="dns"),
    "unknown health check protocol": lambda d: cluster(d)["health_check"].update(protocol="HTTP"),
    "missing spec": lambda d: d.pop("spec"),
    "missing selector": lambda d: d["spec"].pop("selector"),
    "empty selector": lambda d: d["spec"].update(selector={}),
    "selector value not a string": lambda d: d["spec"].update(selector={"app": 1}),
    "missing listeners": lambda d: d["spec"].pop("listeners"),
    "no listeners": lambda d: d["spec"].update(listeners=[]),
    "65 listeners": many_listeners(65),
    "missing listener name": lambda d: listener(d).pop("name"),
    "empty listener name": lambda d: listener(d).update(name=""),
    "listener name with a space": lambda d: listener(d).update(name="rtp l"),
    "listener name of 201 characters": lambda d: listener(d).update(name="l" * 201),
    "missing cluster": lambda d: listener(d)["udp"].pop("cluster"),
    "tcp port 0": lambda d: block(d, 1).update(port=0),
    "unknown tcp field": lambda d: block(d, 1).update(protocol="tcp"),
    "missing cluster name": lambda d: cluster(d).pop("name"),
    "cluster name ending in a dot": lambda d: cluster(d).update(name="rtp."),
    "hash key of 257 characters": lambda d: cluster(d).update(hash_key="k" * 257),
    "empty hash key": lambda d: cluster(d).update(hash_key=""),
    "missing interval": lambda d: cluster(d)["health_check"].pop("interval"),
    "missing endpoints": lambda d: cluster(d).pop("endpoints"),
    "no endpoints": lambda d: cluster(d).update(endpoints=[]),
    "33 endpoints": many_endpoints(33),
    "missing endpoint name": lambda d: endpoint(d).pop("name"),
    "missing host": lambda d: endpoint(d).pop("host"),
    "address of 254 characters": lambda d: endpoint(d).update(host={"address": "a" * 254}),
    "udp idle_timeout 0": lambda d: block(d).update(idle_timeout=0),
    "tcp idle_timeout of more than a day": lambda d: block(d, 1).update(idle_timeout=86_401),
    "udp max_sessions 0": lambda d: block(d).update(max_sessions=0),
    "tcp max_sessions past a million": lambda d: block(d, 1).update(max_sessions=1_000_001),
    "unknown hash_by": lambda d: cluster(d, 1).update(hash_by="source_port"),
    "unknown spec field": lambda d: d["spec"].update(extra=1),
    "unknown endpoint field": lambda d: endpoint(d).update(weight=1),
}


@pytest.mark.parametrize("mutate", SCHEMA_REJECTIONS.values(), ids=SCHEMA_REJECTIONS.keys())
def test_schema_rejects_what_the_validator_rejects(mutate: Callable[[Doc], object]) -> None:
    doc = mutated(mutate)
    assert validator_errors(doc), "the validator accepts it: the case belongs elsewhere"
    assert schema_errors(doc), f"the CRD schema accepts what the validator rejects: {validator_errors(doc)}"


def test_limits_match_the_validator() -> None:
    """At the limit both accept; one past it both reject, and the validator says so."""
    for mutate in (many_listeners(64), many_endpoints(32)):
        doc = mutated(mutate)
        assert (validator_errors(doc), schema_errors(doc)) == ([], [])
    assert validator_errors(mutated(many_listeners(65))) == [("spec.listeners", "must have at most 64 items, got 65")]
    assert validator_errors(mutated(many_endpoints(33))) == [
        ("spec.listeners[0].udp.cluster.endpoints", "must have at most 32 items, got 33")
    ]


def test_defaults_come_from_the_proto() -> None:
    properties = openapi_schema()["properties"]["spec"]["properties"]
    cluster_schema = properties["listeners"]["items"]["properties"]["udp"]["properties"]["cluster"]
    assert cluster_schema["properties"]["service_discovery"]["default"] == "strictdns"
    assert cluster_schema["properties"]["health_check"]["properties"]["protocol"]["default"] == "TCP"
    assert properties["selector"]["additionalProperties"] == {"type": "string"}


# -------------------------------------------------------------------------------- CEL rules


@cache
def cel_program(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def cel_errors(value: Any, schema: Doc | None = None, path: str = "") -> list[tuple[str, str]]:
    """Evaluate every x-kubernetes-validations rule where the API server would: at each node present."""
    schema = openapi_schema() if schema is None else schema
    errors: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            result = cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as error:
            result = error
        if isinstance(result, celpy.CELEvalError):
            errors.append((path, f"evaluation error: {result}"))
        elif result is not True and result != celpy.celtypes.BoolType(True):
            errors.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                errors.extend(cel_errors(value[name], child, f"{path}.{name}" if path else name))
        if isinstance(schema.get("additionalProperties"), dict):
            for name, child_value in value.items():
                errors.extend(cel_errors(child_value, schema["additionalProperties"], f"{path}.{name}"))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors.extend(cel_errors(item, schema["items"], f"{path}[{index}]"))
    return errors


def all_rules() -> list[tuple[str, Doc]]:
    return [
        (path, rule)
        for path, node in schema_nodes(openapi_schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]


# (mutation, the CEL error it must cause, the validator error it must cause)
CEL_REJECTIONS: dict[str, tuple[Callable[[Doc], object], tuple[str, str], tuple[str, str]]] = {
    "host with address and selector": (
        lambda d: endpoint(d)["host"].update(selector={"app": "worker"}),
        ("spec.listeners[0].udp.cluster.endpoints[0].host", "set exactly one of address, selector"),
        ("spec.listeners[0].udp.cluster.endpoints[0].host", "set exactly one of address, selector"),
    ),
    "host with neither": (
        lambda d: endpoint(d).update(host={}),
        ("spec.listeners[0].udp.cluster.endpoints[0].host", "set exactly one of address, selector"),
        ("spec.listeners[0].udp.cluster.endpoints[0].host", "set exactly one of address, selector"),
    ),
    "host with only an empty selector": (
        lambda d: endpoint(d).update(host={"selector": {}}),
        ("spec.listeners[0].udp.cluster.endpoints[0].host", "set exactly one of address, selector"),
        ("spec.listeners[0].udp.cluster.endpoints[0].host", "set exactly one of address, selector"),
    ),
    "listener with udp and tcp": (
        lambda d: listener(d).update(tcp={**copy.deepcopy(block(d, 0)), "port": 3000}),
        ("spec.listeners[0]", "set exactly one of udp, tcp"),
        ("spec.listeners[0]", "set exactly one of udp, tcp"),
    ),
    "listener with neither udp nor tcp": (
        lambda d: listener(d).pop("udp"),
        ("spec.listeners[0]", "set exactly one of udp, tcp"),
        ("spec.listeners[0]", "set exactly one of udp, tcp"),
    ),
    "duplicate listener name": (
        lambda d: listener(d, 1).update(name="rtp-l"),
        ("spec.listeners", "duplicate name: every item of listeners needs its own name"),
        ("spec.listeners[1].name", "duplicate name 'rtp-l' (also in spec.listeners[0])"),
    ),
    "duplicate udp port": (
        lambda d: d["spec"]["listeners"].append(
            {"name": "rtp2-l", "udp": {"port": 2000, "cluster": {**cluster(d, 1), "name": "rtp2-c"}}}
        ),
        ("spec.listeners", "duplicate port: every item of listeners needs its own udp.port"),
        ("spec.listeners[2].udp.port", "duplicate port 2000 (also in spec.listeners[0])"),
    ),
    "duplicate tcp port": (
        lambda d: d["spec"]["listeners"].append(
            {"name": "sip2-l", "tcp": {"port": 2000, "cluster": {**cluster(d, 1), "name": "sip2-c"}}}
        ),
        ("spec.listeners", "duplicate port: every item of listeners needs its own tcp.port"),
        ("spec.listeners[2].tcp.port", "duplicate port 2000 (also in spec.listeners[1])"),
    ),
    "duplicate cluster name across protocols": (
        lambda d: cluster(d, 1).update(name="rtp-c"),
        (
            "spec.listeners",
            "duplicate cluster name: every item of listeners needs its own udp.cluster.name or tcp.cluster.name",
        ),
        ("spec.listeners[1].tcp.cluster.name", "duplicate cluster name 'rtp-c' (also in spec.listeners[0])"),
    ),
    "hash_key and hash_by": (
        lambda d: cluster(d).update(hash_key="callid", hash_by="source_ip"),
        ("spec.listeners[0].udp.cluster", "set at most one of hash_key, hash_by"),
        ("spec.listeners[0].udp.cluster", "set at most one of hash_key, hash_by"),
    ),
    "duplicate endpoint name": (
        lambda d: endpoint(d, 1).update(name="a"),
        ("spec.listeners[0].udp.cluster.endpoints", "duplicate name: every item of endpoints needs its own name"),
        (
            "spec.listeners[0].udp.cluster.endpoints[1].name",
            "duplicate name 'a' (also in spec.listeners[0].udp.cluster.endpoints[0])",
        ),
    ),
}


@pytest.mark.parametrize("rule", [rule["rule"] for _, rule in all_rules()])
def test_every_rule_compiles(rule: str) -> None:
    cel_program(rule)


@pytest.mark.parametrize(("mutate", "cel_error", "validator_error"), CEL_REJECTIONS.values(), ids=CEL_REJECTIONS.keys())
def test_cel_rules_reject_what_the_validator_rejects(
    mutate: Callable[[Doc], object], cel_error: tuple[str, str], validator_error: tuple[str, str]
) -> None:
    doc = mutated(mutate)
    assert schema_errors(doc) == []  # only CEL can say it
    assert cel_errors(doc) == [cel_error]
    assert validator_error in validator_errors(doc)


def test_every_rule_has_a_rejection_case() -> None:
    """A rule added to the API gets a case in CEL_REJECTIONS (and so a check against the validator)."""
    exercised = {error[1] for _, error, _ in CEL_REJECTIONS.values()}
    assert {rule["message"] for _, rule in all_rules()} == exercised


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: endpoint(d).update(host={"address": "10.0.0.1", "selector": {}}),  # an empty selector is unset
        lambda d: cluster(d, 1)["endpoints"][0].update(name="b"),  # endpoint names may repeat across clusters
        lambda d: block(d, 1).pop("port"),  # the schema's error (required), not a CEL evaluation error
        lambda d: cluster(d, 1).pop("name"),
        lambda d: cluster(d, 0).pop("name"),
        lambda d: block(d, 1).update(port=2001),
    ],
    ids=[
        "address and empty selector",
        "same endpoint name in two clusters",
        "missing tcp port",
        "missing tcp cluster name",
        "missing udp cluster name",
        "distinct port numbers",
    ],
)
def test_cel_rules_accept_or_leave_it_to_the_schema(mutate: Callable[[Doc], object]) -> None:
    assert cel_errors(mutated(mutate)) == []


# -------------------------------------------------------------------------------- CEL cost


STATIC_ESTIMATED_COST_LIMIT = 10_000_000  # per rule, times the most instances of its node
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000  # all rules of the CRD together


def estimated_cost(path: str, node: Doc, rule: Doc, ancestors: list[Doc]) -> int:
    """A conservative stand-in for the API server's estimate (cel-go's coster with Kubernetes' sizes).

    Strings count 4 bytes a character and `==` costs 0.1 a byte; a field selection, `has` or a
    comprehension step costs 1. Lists above the rule's node multiply it by their maxItems.
    """
    cardinality = 1
    for ancestor in ancestors:
        if ancestor.get("type") == "array":
            assert "maxItems" in ancestor, f"{path}: a list above a CEL rule needs maxItems"
            cardinality *= ancestor["maxItems"]
    text = rule["rule"]
    if "exists_one(y," not in text or not text.startswith("self.all(x,"):
        return cardinality * (20 + 10 * text.count("has("))  # no comprehension over data: a few operations
    assert "maxItems" in node, f"{path}: {text} iterates a list without maxItems"
    keys = text.split(" ? self.exists_one(y, ")[1].split(" == ")[0]  # what is compared, with its guards
    paths = sorted(set(re.findall(r"\by\.([a-z_.]+)", keys)))  # e.g. udp.cluster.name, udp.cluster, udp
    leaf: Doc = node["items"]
    for name in max(paths, key=len).split("."):
        leaf = leaf["properties"][name]
    compare = math.ceil(0.1 * 4 * leaf["maxLength"]) if leaf["type"] == "string" else 1
    # has() guards and selections on both sides, the step and the accumulator
    inner = compare + 4 * sum(path.count(".") + 1 for path in paths) + 10
    items = node["maxItems"]
    return cardinality * items * (items * inner + 10)


def test_cel_rules_fit_the_api_servers_cost_budget() -> None:
    """The uniqueness rules are O(n^2): this is why listeners and endpoints have maxItems (64 and 32)."""
    total = 0

    def walk(node: Doc, path: str, ancestors: list[Doc]) -> None:
        nonlocal total
        for rule in node.get("x-kubernetes-validations", []):
            cost = estimated_cost(path, node, rule, ancestors)
            assert cost < STATIC_ESTIMATED_COST_LIMIT, f"{path}: {rule['rule']} costs about {cost:,}"
            total += cost
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}", [*ancestors, node])
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[*]", [*ancestors, node])

    walk(openapi_schema(), "", [])
    assert 0 < total < STATIC_ESTIMATED_CRD_COST_LIMIT
