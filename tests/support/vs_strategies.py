"""Hypothesis strategies for VirtualService documents: valid ones, and valid ones mutated into bad input.

`virtual_services()` draws documents the API accepts, over the whole schema (every optional field,
both kinds of host, both discovery modes, extreme but legal values). `mutated()` takes such a
document and breaks it the ways real input is broken: wrong types, missing and extra fields,
out-of-range numbers, odd strings, deep nesting, huge lists.
"""

from __future__ import annotations

import copy
import string
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from xds_operator.api import API_GROUP, API_VERSION, KIND

# Deterministic and quick: CI sees the same inputs every run, and the suite stays fast.
PROFILE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(count: int) -> settings:
    """PROFILE with another number of examples."""
    return settings(PROFILE, max_examples=count)


ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits


def _trimmed(text: str, inner: str, fallback: str = "x") -> str:
    """Make text start and end with an alphanumeric character, as the name patterns want."""
    return text.strip(inner) or fallback


ports = st.integers(1, 65535)
# Envoy listener and cluster names, as the proto's pattern allows ([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?).
names = st.one_of(
    st.text(alphabet=ALNUM + "._-", min_size=1, max_size=40).map(lambda text: _trimmed(text, "._-")),
    st.just("a" * 200),  # the longest allowed
)
k8s_names = st.text(alphabet=LOWER_ALNUM + "-.", min_size=1, max_size=30).map(lambda text: _trimmed(text, "-."))
k8s_namespaces = st.text(alphabet=LOWER_ALNUM + "-", min_size=1, max_size=20).map(lambda text: _trimmed(text, "-"))
# Label keys and values as a proxy's node metadata or a pod could have them (any non-empty text).
labels = st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=12), min_size=1, max_size=3)
ip_addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
# strictdns hosts: IPs, DNS names, and any other text (Envoy resolves it at run time, or fails to).
dns_hosts = st.one_of(
    ip_addresses,
    st.lists(st.text(alphabet=LOWER_ALNUM + "-", min_size=1, max_size=10), min_size=1, max_size=4).map(".".join),
    st.text(min_size=1, max_size=253),
)


@st.composite
def endpoints(draw: st.DrawFn, eds: bool) -> dict[str, Any]:
    if draw(st.booleans()):
        host: dict[str, Any] = {"selector": draw(labels)}
    else:
        host = {"address": draw(ip_addresses if eds else dns_hosts)}
    endpoint = {"name": draw(st.text(min_size=1, max_size=200)), "host": host, "port": draw(ports)}
    if draw(st.booleans()):
        endpoint["health_check_port"] = draw(ports)
    return endpoint


@st.composite
def clusters(draw: st.DrawFn) -> dict[str, Any]:
    discovery = draw(st.sampled_from([None, "strictdns", "eds"]))
    cluster: dict[str, Any] = {
        "name": draw(names),
        "endpoints": draw(st.lists(endpoints(discovery == "eds"), min_size=1, max_size=4, unique_by=_name)),
    }
    if discovery is not None:
        cluster["service_discovery"] = discovery
    hashing = draw(st.sampled_from([None, "hash_key", "hash_by"]))  # at most one of the two
    if hashing == "hash_key":
        cluster["hash_key"] = draw(st.text(min_size=1, max_size=256))
    elif hashing == "hash_by":
        cluster["hash_by"] = "source_ip"
    if draw(st.booleans()):
        check: dict[str, Any] = {"interval": draw(st.integers(500, 3_600_000))}
        if draw(st.booleans()):
            check["protocol"] = "TCP"
        cluster["health_check"] = check
    return cluster


def _name(item: dict[str, Any]) -> Any:
    return item["name"]


# A listener block: port and cluster, and maybe its session controls.
blocks = st.fixed_dictionaries(
    {"port": ports, "cluster": clusters()},
    optional={"idle_timeout": st.integers(1, 86_400), "max_sessions": st.integers(1, 1_000_000)},
)
listeners = st.one_of(*(st.fixed_dictionaries({"name": names, protocol: blocks}) for protocol in ("udp", "tcp")))


def listener_block(item: dict[str, Any]) -> dict[str, Any]:
    """A listener document's protocol block: its udp or tcp mapping."""
    return item.get("udp") or item["tcp"]


@st.composite
def virtual_services(draw: st.DrawFn, max_listeners: int = 4) -> dict[str, Any]:
    """A document the API accepts."""
    metadata: dict[str, Any] = {"name": draw(k8s_names)}
    if draw(st.booleans()):
        metadata["namespace"] = draw(k8s_namespaces)
    if draw(st.booleans()):
        metadata["generation"] = draw(st.integers(0, 2**40))
    # Ports are unique per protocol; cluster names across both (Envoy has one cluster namespace).
    unique = (
        _name,
        lambda item: ("udp" in item, listener_block(item)["port"]),
        lambda item: listener_block(item)["cluster"]["name"],
    )
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "selector": draw(labels),
            "listeners": draw(st.lists(listeners, min_size=1, max_size=max_listeners, unique_by=unique)),
        },
    }


# -------------------------------------------------------------------------------- bad input

# Anything YAML or JSON can decode to, nested a little.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=8),  # YAML !!binary
    st.datetimes(),  # YAML timestamps
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
odd_strings = st.one_of(
    st.text(min_size=1, max_size=40),
    st.builds(
        lambda a, b: a + "\udc80" + b, st.text(max_size=5), st.text(max_size=5)
    ),  # a lone surrogate (JSON "\\udc80")
    st.sampled_from(
        ["", " ", "a:b", "xdstp://x/y", "*", "a/b", "a b", "\x00", "é", "\ud800", "a\nb", "::", "-a", "a-", "."]
    ),
    st.builds(lambda n: "x" * n, st.sampled_from([199, 200, 201, 253, 254, 256, 257, 100_000])),
)
out_of_range = st.sampled_from([0, -1, 65536, 499, 3_600_001, 2**32, 2**63, 2**64, -(2**63) - 1, 10**30])


def deep(depth: int) -> Any:
    """A list nested `depth` times (as a JSON API body could carry it: YAML stops at 1,000)."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


replacements = st.one_of(
    json_like,
    odd_strings,
    out_of_range,
    st.builds(deep, st.sampled_from([50, 5_000, 50_000])),
    st.builds(lambda n, item: [item] * n, st.sampled_from([65, 1_000, 10_000]), json_like),  # huge lists
    st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from([100, 5_000])),  # huge maps
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths (keys and indexes) inside a decoded document, the root included; the schema's depth is
    about 10, so deeper and wider (mutated) parts are not walked."""
    found = [prefix]
    if len(prefix) < 12 and isinstance(value, dict):
        for key, item in list(value.items())[:20]:
            found.extend(_paths(item, (*prefix, key)))
    elif len(prefix) < 12 and isinstance(value, list):
        for index, item in enumerate(value[:5]):
            found.extend(_paths(item, (*prefix, index)))
    return found


def _parent(document: Any, path: tuple) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid document with one to three mutations."""
    document = copy.deepcopy(draw(virtual_services()))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        if not path:  # the root
            if kind in ("replace", "delete"):
                document = draw(replacements)
            continue
        parent = _parent(document, path)
        if kind == "replace":
            parent[path[-1]] = draw(replacements)
        elif kind == "delete":
            del parent[path[-1]]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.one_of(st.text(max_size=10), st.integers(), st.none(), st.booleans()))] = draw(json_like)
        elif kind == "duplicate" and isinstance(parent, list):  # repeats a name, a port, ...
            parent.append(copy.deepcopy(parent[path[-1]]))
        if not isinstance(document, dict | list):
            break
    return document
