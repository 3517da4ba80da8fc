"""Serialized resources and the immutable snapshot one proxy group is served.

A Resource is serialized and hashed once; snapshots share Resource objects, so a change
to one VirtualService re-serializes only its own resources. A type's version is a content
hash that is updated incrementally (the sum of the resources' hashes), so a new snapshot
that differs in one resource costs work for that resource, not for all of them.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import immutables
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_operator.api import Key

TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
# On a change, clusters and their endpoints go before the listeners that refer to them.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER)
# Types whose requests name the resources wanted; the others are wildcard (all resources).
NAMED_TYPES = frozenset({ENDPOINT})
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS"}

# What a snapshot was built from: VirtualService key → its content token (persistent: patched in O(log n)).
Contents = immutables.Map[Key, str]

# The most one response of one type may carry (the resources' encoded size; gRPC's send limit is 64 MiB).
# The cache leaves out, newest first, the VirtualServices that would make a proxy's response larger.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

# Content hashes of sets are sums of 128-bit weights modulo this: independent of order, and
# updated in O(1) when one member comes or goes.
MODULUS = 1 << 128


def weight_of(data: bytes) -> int:
    """A member's 128-bit weight in such a sum."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest())


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
        weight = weight_of(name.encode() + b"\0" + body)
        type_url = TYPE_PREFIX + message.DESCRIPTOR.full_name
        digest = f"{weight:032x}"[:16]  # the weight's leading 64 bits, as hex: the resource's version
        return cls(name, type_url, body, digest, frozenset(requires), weight)

    @cached_property
    def wire_size(self) -> int:
        """Its encoded size in a response, as a delta `Resource` (name, version, Any): never less than in
        a state-of-the-world one. Computed without encoding anything."""
        any_size = _field_size(len(self.type_url.encode())) + _field_size(len(self.body))
        entry = _field_size(len(self.name.encode())) + _field_size(len(self.digest)) + _field_size(any_size)
        return _field_size(entry)

    @cached_property
    def packed(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.body)

    @cached_property
    def as_response_item(self) -> bytes:
        """This resource as an encoded `DiscoveryResponse.resources` entry (field 2, an Any)."""
        return length_delimited(2, self.packed.SerializeToString(deterministic=True))


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """A protobuf length-delimited field (wire type 2): tag, length, payload."""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _field_size(length: int) -> int:
    """The encoded size of a length-delimited field (field number under 16) with a payload of `length` bytes."""
    return 1 + len(_varint(length)) + length


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def version_of(resources: Iterable[Resource]) -> str:
    """A content hash of (name, content) pairs, independent of order: equal content, equal version anywhere."""
    return _version(sum(resource.weight for resource in resources) % MODULUS)


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

    @property
    def nonce(self) -> str:
        """The nonce of the state-of-the-world response: its version (a stream never gets one version twice
        in a row, so consecutive nonces differ, and equal nonces mean equal content)."""
        return self.version

    @property
    def sotw_response(self) -> bytes:
        """The serialized state-of-the-world DiscoveryResponse, made once and sent as is to every stream.

        Kept for the most recent selections only: thousands of distinct groups would otherwise
        hold a full response each long after it was sent; rebuilding one is a cheap join.
        """
        return _SOTW_RESPONSES.get(self)


class _RecentResponses:
    """Encoded responses of the `size` most recently used selections that are still alive.

    Selections are held weakly: one whose snapshot was replaced takes its response with it. (A
    plain LRU cache kept the last 256 versions alive, responses and snapshots: 300 edits of a
    10,000-VirtualService configuration held 0.8 GB.)
    """

    def __init__(self, size: int):
        self._size = size
        self._entries: OrderedDict[int, tuple[weakref.ref[Selection], bytes]] = OrderedDict()

    def get(self, selection: Selection) -> bytes:
        key = id(selection)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is selection:
            self._entries.move_to_end(key)
            return entry[1]
        encoded = _encode_sotw(selection)
        self._entries[key] = (weakref.ref(selection, functools.partial(self._forget, key)), encoded)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return encoded

    def _forget(self, key: int, reference: weakref.ref[Selection]) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is reference:  # not a newer selection that reuses the id
            del self._entries[key]


_SOTW_RESPONSES = _RecentResponses(256)


def _encode_sotw(selection: Selection) -> bytes:
    """Encoded by joining each resource's pre-encoded entry: no message is built or copied per stream."""
    return b"".join(
        [
            length_delimited(1, selection.version.encode()),  # version_info
            *(resource.as_response_item for resource in selection.resources),  # resources
            length_delimited(4, selection.type_url.encode()),  # type_url
            length_delimited(5, selection.nonce.encode()),  # nonce
        ]
    )


class History:
    """Which resource names each patch changed, for the snapshots derived from one build.

    A delta stream holds what an earlier snapshot had; the names changed since then are the
    union along the patches between the two, so its next response costs the change, not a
    comparison of every resource. Patches may branch (groups that shared a snapshot diverge),
    so each entry names its parent. Bounded: the oldest entries go first, and a lineage that
    can no longer be followed back answers None (the caller compares in full).
    """

    MAX_ENTRIES = 4096  # patches remembered per lineage: ~minutes of heavy churn, a few names each
    MAX_STEPS = 512  # beyond this many patches apart, a full comparison is about as cheap

    def __init__(self) -> None:
        self._sequence = itertools.count(1)
        self._entries: OrderedDict[int, tuple[int, Mapping[str, frozenset[str]]]] = OrderedDict()

    def record(self, parent: int, changed: Mapping[str, frozenset[str]]) -> int:
        """A patch of the snapshot numbered `parent`; returns the new snapshot's number."""
        number = next(self._sequence)
        self._entries[number] = (parent, changed)
        if len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)
        return number

    def changed_between(self, older: int, newer: int, type_url: str) -> set[str] | None:
        """Names of `type_url` changed from snapshot `older` to `newer`; None if that path is not known."""
        names: set[str] = set()
        for _ in range(self.MAX_STEPS):
            if newer == older:
                return names
            entry = self._entries.get(newer)
            if entry is None:
                return None
            newer, changed = entry
            names |= changed.get(type_url, frozenset())
        return None


@dataclass(eq=False)
class Snapshot:
    """Everything one proxy group is served, by type URL then resource name. Immutable once built."""

    resources: Mapping[str, immutables.Map[str, Resource]]
    # What it was built from (see Contents); tells which inputs a proxy runs.
    contents: Contents = field(default_factory=immutables.Map)
    _totals: dict[str, int] = field(default_factory=dict, repr=False)  # per type: the sum of resource weights
    sizes: dict[str, int] = field(default_factory=dict, repr=False)  # per type: the resources' wire_size, summed
    _selections: dict[str, Selection] = field(default_factory=dict, repr=False)  # per type: all its resources
    # Its place in the lineage of patches it belongs to (see History).
    history: History = field(default_factory=History, repr=False)
    number: int = 0

    @classmethod
    def build(cls, by_type: Mapping[str, Iterable[Resource]], contents: Mapping[Key, str] | None = None) -> Snapshot:
        resources = {
            type_url: immutables.Map({r.name: r for r in by_type.get(type_url, ())}) for type_url in PUSH_ORDER
        }
        totals = {t: sum(r.weight for r in of_type.values()) % MODULUS for t, of_type in resources.items()}
        sizes = {t: sum(r.wire_size for r in of_type.values()) for t, of_type in resources.items()}
        snapshot = cls(resources, immutables.Map(contents or {}), totals, sizes)
        snapshot.check_consistency()
        return snapshot

    def changed_since(self, older: Snapshot, type_url: str) -> set[str] | None:
        """The names of `type_url` that may differ between `older` and this snapshot (a superset), in
        time proportional to the patches between them; None if this is not known (compare in full)."""
        if older is self:
            return set()
        if older.history is not self.history:
            return None
        return self.history.changed_between(older.number, self.number, type_url)

    def patched(self, removed: Iterable[Resource], added: Iterable[Resource], contents: Contents) -> Snapshot:
        """A new snapshot: this one without `removed`, with `added`, in time proportional to the change.

        Consistency is the caller's to keep (the cache adds and removes whole VirtualServices,
        whose resources refer only to each other).
        """
        # Persistent maps (HAMTs): a new version shares all but the changed paths with the old one,
        # so a patch costs O(log n) per resource, where copying a dict of 10,000 cost ~1 ms per type.
        mutations = {type_url: of_type.mutate() for type_url, of_type in self.resources.items()}
        totals = dict(self._totals)
        sizes = dict(self.sizes)
        changed: dict[str, set[str]] = {}
        for resource, sign in [*((r, -1) for r in removed), *((r, 1) for r in added)]:
            type_url = resource.type_url
            if sign < 0:
                del mutations[type_url][resource.name]
            else:
                mutations[type_url][resource.name] = resource
            changed.setdefault(type_url, set()).add(resource.name)
            totals[type_url] = (totals[type_url] + sign * resource.weight) % MODULUS
            sizes[type_url] = sizes.get(type_url, 0) + sign * resource.wire_size
        resources = {type_url: mutation.finish() for type_url, mutation in mutations.items()}
        number = self.history.record(self.number, {t: frozenset(names) for t, names in changed.items()})
        return Snapshot(resources, contents, totals, sizes, history=self.history, number=number)

    @cached_property
    def versions(self) -> dict[str, str]:
        return {type_url: self.select(type_url).version for type_url in PUSH_ORDER}

    def select(self, type_url: str, names: frozenset[str] | None = None) -> Selection:
        """The resources of a type, all of them (names=None) or only those named.

        Only the whole-type selection is memoized (shared by every stream): a client's own name set is
        not kept here, where it would live as long as the snapshot (streams keep their last selection).
        """
        whole = self._whole(type_url)
        of_type = self.resources.get(type_url, immutables.Map())
        if names is None or (len(names) >= len(of_type) and names.issuperset(of_type.keys())):
            return whole  # the usual case: a proxy asks for every one it was sent
        chosen = tuple(of_type[name] for name in sorted(names) if name in of_type)
        return Selection(type_url, version_of(chosen), lambda: chosen)

    def _whole(self, type_url: str) -> Selection:
        selection = self._selections.get(type_url)
        if selection is None:
            of_type = self.resources.get(type_url, immutables.Map())
            selection = self._selections[type_url] = Selection(
                type_url, _version(self._totals.get(type_url, 0)), lambda: tuple(of_type[n] for n in sorted(of_type))
            )
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
