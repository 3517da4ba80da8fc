"""Which inputs differ between two snapshots, in time proportional to the change between them.

The status side asks, whenever a proxy moves from one snapshot to another (a new one to run, a
new one ACKed), which VirtualServices that touches. Comparing `Snapshot.contents` answers that,
but costs every VirtualService in the snapshot. So the cache records, for each snapshot it makes,
the snapshot it was made from and the keys whose content token changed (`record`), and
`changed_between` walks that lineage up to the nearest common ancestor. Only when the two
snapshots share no recorded ancestor (a new group, a chain cut at MAX_DEPTH) does it compare
contents in full.

Kept beside the snapshots rather than in them: an entry lives as long as its snapshot (weakly
keyed), and the lineage nodes themselves hold only keys, never snapshots.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from xds_operator.api import Key
from xds_operator.xds.snapshot import Snapshot

MAX_DEPTH = 64  # a longer chain starts again from a root: a walk stays short; crossing a root costs a full compare


@dataclass(frozen=True, eq=False)
class _Node:
    parent: _Node | None
    changed: frozenset[Key]  # keys whose token differs from the parent's snapshot
    depth: int


_nodes: weakref.WeakKeyDictionary[Snapshot, _Node] = weakref.WeakKeyDictionary()


def record(snapshot: Snapshot, parent: Snapshot | None, changed: Iterable[Key]) -> None:
    """`snapshot` was made from `parent` by changing (at most) the content tokens of `changed`."""
    if snapshot in _nodes or snapshot is parent:
        return  # already known (snapshots are shared between groups with equal content)
    up = _nodes.get(parent) if parent is not None else None
    if up is not None and up.depth >= MAX_DEPTH:
        up = None
    _nodes[snapshot] = _Node(up, frozenset(changed), 0 if up is None else up.depth + 1)


def changed_between(a: Snapshot, b: Snapshot) -> set[Key]:
    """The keys whose content token differs between a and b (possibly a few more, never fewer)."""
    if a is b:
        return set()
    node_a, node_b = _nodes.get(a), _nodes.get(b)
    if node_a is not None and node_b is not None:
        found = _walk(node_a, node_b)
        if found is not None:
            return found
    return {key for key, _ in set(a.contents.items()) ^ set(b.contents.items())}


def _walk(node_a: _Node, node_b: _Node) -> set[Key] | None:
    """The changes on both paths up to the nearest common ancestor (None: there is none)."""
    path: dict[int, int] = {}  # id of a node above a → its position on a's path (nodes are alive meanwhile)
    above_a: list[_Node] = []
    node: _Node | None = node_a
    while node is not None:
        path[id(node)] = len(above_a)
        above_a.append(node)
        node = node.parent
    keys: set[Key] = set()
    node = node_b
    while node is not None and id(node) not in path:
        keys |= node.changed
        node = node.parent
    if node is None:
        return None
    for passed in above_a[: path[id(node)]]:
        keys |= passed.changed
    return keys
