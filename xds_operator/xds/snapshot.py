"""Serialized resources and the immutable snapshot one proxy group is served.

A Resource is serialized and hashed once; snapshots share Resource objects, so a change
to one VirtualService re-serializes only its own resources. A type's version is a content
hash that is updated incrementally (the sum of the resources' hashes), so a new snapshot
that differs in one resource costs work for that resource, not for all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
# On a change, clusters and their endpoints go before the listeners that refer to them.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER)
# Types whose requests name the resources wanted; the others are wildcard (all resources).
NAMED_TYPES = frozenset({ENDPOINT})
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS"}

_MODULUS = 1 << 128


@dataclass(frozen=True, eq=False)
class Resource:
    """One Envoy resource, serialized once (deterministically) and content-hashed."""

    name: str
    type_url: str
    body: bytes
    digest: str
    # Resources this one refers to, as (type URL, name): a snapshot must hold them too.
    requires: frozenset[tuple[str, str]] = frozenset()

    # This resource's share of a type's version: a 128-bit hash of its name and content.
    weight: int = 0

    @classmethod
    def of(cls, name: str, message: Message, requires: Iterable[tuple[str, str]] = ()) -> Resource:
        body = message.SerializeToString(deterministic=True)
        hashed = hashlib.blake2b(name.encode() + b"\0" + body, digest_size=16).digest()
        type_url = TYPE_PREFIX + message.DESCRIPTOR.full_name
        return cls(name, type_url, body, hashed[:8].hex(), frozenset(requires), int.from_bytes(hashed))

    @cached_property
    def packed(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.body)


def version_of(resources: Iterable[Resource]) -> str:
    """A content hash of (name, content) pairs, independent of order: equal content, equal version anywhere."""
    return _version(sum(resource.weight for resource in resources) % _MODULUS)


def _version(total: int) -> str:
    return f"{total:032x}"[:16]


class Selection:
    """The answer to a request: a version and (built on first use) the resources it covers, by name."""

    def __init__(self, type_url: str, version: str, resources: Callable[[], tuple[Resource, ...]]):
        self.type_url = type_url
        self.version = version
        self._build = resources

    @cached_property
    def resources(self) -> tuple[Resource, ...]:
        return self._build()

    @cached_property
    def sotw_body(self) -> bytes:
        """A serialized state-of-the-world DiscoveryResponse without its nonce, made once and shared by
        every stream sent this selection (each appends its own nonce: see stream.with_nonce)."""
        response = discovery_pb2.DiscoveryResponse(
            version_info=self.version, type_url=self.type_url, resources=[r.packed for r in self.resources]
        )
        return response.SerializeToString(deterministic=True)


@dataclass(eq=False)
class Snapshot:
    """Everything one proxy group is served, by type URL then resource name. Immutable once built."""

    resources: Mapping[str, Mapping[str, Resource]]
    # What it was built from: source key → content token; tells which inputs a proxy runs.
    contents: Mapping = field(default_factory=dict)
    _totals: dict[str, int] = field(default_factory=dict, repr=False)  # per type: the sum of resource weights
    _selections: dict[tuple[str, frozenset[str] | None], Selection] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, by_type: Mapping[str, Iterable[Resource]], contents: Mapping | None = None) -> Snapshot:
        resources = {type_url: {r.name: r for r in by_type.get(type_url, ())} for type_url in PUSH_ORDER}
        totals = {t: sum(r.weight for r in of_type.values()) % _MODULUS for t, of_type in resources.items()}
        snapshot = cls(resources, dict(contents or {}), totals)
        snapshot.check_consistency()
        return snapshot

    def patched(self, removed: Iterable[Resource], added: Iterable[Resource], contents: Mapping) -> Snapshot:
        """A new snapshot: this one without `removed`, with `added`. Costs the change, plus a dict copy per type.

        Consistency is the caller's to keep (the cache adds and removes whole VirtualServices,
        whose resources refer only to each other).
        """
        resources = {type_url: of_type for type_url, of_type in self.resources.items()}
        totals = dict(self._totals)
        copied: set[str] = set()
        for resource, sign in [*((r, -1) for r in removed), *((r, 1) for r in added)]:
            type_url = resource.type_url
            if type_url not in copied:
                resources[type_url] = dict(resources[type_url])
                copied.add(type_url)
            if sign < 0:
                del resources[type_url][resource.name]
            else:
                resources[type_url][resource.name] = resource
            totals[type_url] = (totals[type_url] + sign * resource.weight) % _MODULUS
        return Snapshot(resources, contents, totals)

    @cached_property
    def versions(self) -> dict[str, str]:
        return {type_url: self.select(type_url).version for type_url in PUSH_ORDER}

    def select(self, type_url: str, names: frozenset[str] | None = None) -> Selection:
        """The resources of a type, all of them (names=None) or only those named; memoized."""
        key = (type_url, names)
        selection = self._selections.get(key)
        if selection is None:
            of_type = self.resources.get(type_url, {})
            if names is None:
                selection = Selection(
                    type_url,
                    _version(self._totals.get(type_url, 0)),
                    lambda: tuple(of_type[n] for n in sorted(of_type)),
                )
            else:
                chosen = tuple(of_type[name] for name in sorted(names) if name in of_type)
                selection = Selection(type_url, version_of(chosen), lambda: chosen)
            self._selections[key] = selection
        return selection

    def check_consistency(self) -> None:
        """Every reference resolves: each EDS cluster has its ClusterLoadAssignment, each listener its cluster.

        Envoy would otherwise wait on (or drop traffic for) something it is never sent.
        """
        for of_type in self.resources.values():
            for resource in of_type.values():
                for type_url, name in resource.requires:
                    if name not in self.resources.get(type_url, {}):
                        raise ValueError(
                            f"inconsistent snapshot: {resource.name!r} needs {SHORT_NAMES[type_url]} resource {name!r}"
                        )


EMPTY = Snapshot.build({})
