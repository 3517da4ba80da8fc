"""Serialized resources and the immutable snapshot one proxy group is served.

A Resource is serialized and hashed once; snapshots share Resource objects, so a change
to one VirtualService re-serializes only its own resources.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

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


@dataclass(frozen=True, eq=False)
class Resource:
    """One Envoy resource, serialized once (deterministically) and content-hashed."""

    name: str
    type_url: str
    body: bytes
    digest: str
    # Resources this one refers to, as (type URL, name): a snapshot must hold them too.
    requires: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, name: str, message: Message, requires: Iterable[tuple[str, str]] = ()) -> Resource:
        body = message.SerializeToString(deterministic=True)
        digest = hashlib.sha256(body).hexdigest()[:16]
        return cls(name, TYPE_PREFIX + message.DESCRIPTOR.full_name, body, digest, frozenset(requires))

    @cached_property
    def packed(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.body)


def version_of(resources: Iterable[Resource]) -> str:
    """A content hash over (name, digest) pairs: equal content gives an equal version anywhere."""
    hasher = hashlib.sha256()
    for resource in sorted(resources, key=lambda r: r.name):
        hasher.update(resource.name.encode())
        hasher.update(b"\0")
        hasher.update(resource.digest.encode())
        hasher.update(b"\n")
    return hasher.hexdigest()[:16]


@dataclass(frozen=True)
class Selection:
    """The answer to a request: a version and the resources it covers."""

    version: str
    resources: tuple[Resource, ...]


@dataclass(eq=False)
class Snapshot:
    """Everything one proxy group is served, by type URL then resource name. Immutable once built."""

    resources: Mapping[str, Mapping[str, Resource]]
    # What it was built from: ((source key, content token), ...); tells which inputs a proxy runs.
    contents: tuple = ()
    _selections: dict[tuple[str, frozenset[str] | None], Selection] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, by_type: Mapping[str, Iterable[Resource]], contents: tuple = ()) -> Snapshot:
        snapshot = cls({type_url: {r.name: r for r in by_type.get(type_url, ())} for type_url in PUSH_ORDER}, contents)
        snapshot.check_consistency()
        return snapshot

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
                chosen = tuple(of_type[name] for name in sorted(of_type))
            else:
                chosen = tuple(of_type[name] for name in sorted(names) if name in of_type)
            selection = Selection(version_of(chosen), chosen)
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
