"""Per VirtualService: how many selected proxies run its current resources, which ones, and who rejected them.

Pure: it reads what the server knows of each proxy (its current and its last fully ACKed
snapshot, any NACK text and the VirtualServices whose resources that text names) and what the
cache holds. Proxies that are alike (same labels,
same snapshots, same error) are counted together, so the cost follows groups, not proxies.
ProgressTracker answers per VirtualService and says which ones a proxy change touched, so a
status pass after one change costs that change, not every VirtualService.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from xds_operator.api import Key, VirtualService
from xds_operator.xds.lineage import changed_between
from xds_operator.xds.server import ProxyProgress
from xds_operator.xds.snapshot import EMPTY, Snapshot


@dataclass
class Progress:
    selected: int = 0  # connected proxies whose labels the VirtualService selects
    applied: int = 0  # of those, how many have ACKed its current resources
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (node id, Envoy's error text)
    # The node ids of the proxies that ACKed its current resources, one tuple per set of alike
    # proxies; the tuples are shared by every VirtualService those proxies run (no copy per one).
    serving: list[tuple[str, ...]] = field(default_factory=list, compare=False)  # (compared as addresses)
    replicas: int = 1  # control plane replicas whose proxies are counted (see operator/peers.py)
    waiting: list[str] = field(default_factory=list)  # replicas that do not serve this generation yet


def summarize(proxies: Iterable[ProxyProgress], services: Mapping[Key, VirtualService]) -> dict[Key, Progress]:
    """Every VirtualService's progress at once (the tracker below gives it one at a time)."""
    tracker = ProgressTracker()
    tracker.update(proxies)
    return {key: tracker.progress(vs) for key, vs in services.items()}


LabelSet = frozenset[tuple[str, str]]
Shape = tuple[LabelSet, Snapshot | None, Snapshot | None, str | None, frozenset[Key]]


@dataclass(frozen=True, eq=False)
class Alike:
    """Connected proxies with equal labels, equal snapshots (to run, and ACKed) and equal NACK text."""

    labels: dict[str, str]
    current: Snapshot | None  # what they should run
    applied: Snapshot | None  # the latest snapshot they ACKed in full
    rejection: str | None
    # The VirtualServices owning a listener or cluster Envoy's NACK names (see ProxyProgress.rejected).
    rejected: frozenset[Key]
    nodes: tuple[str, ...]

    def runs(self, key: Key) -> bool:
        """Whether they ACKed this VirtualService's current resources."""
        token = self.current.contents.get(key) if self.current is not None else None
        return (
            token is not None
            and self.applied is not None
            and self.applied.contents.get(key) == token
            and key not in self.rejected
        )

    def blames(self, key: Key) -> bool:
        """Whether their NACK is about this VirtualService.

        When Envoy's error text names resources of theirs, exactly the VirtualServices owning them
        are blamed. Otherwise: the ones new or changed since the last snapshot they took, and if
        none is (they rejected something they never ran), every one they should run.
        """
        if self.rejection is None or self.current is None or key not in self.current.contents:
            return False
        if self.rejected:
            return key in self.rejected
        return self._blames_all or not self.runs(key)

    def blamed(self) -> set[Key]:
        """Every VirtualService `blames` is True for (proportional to the change, unless they blame all)."""
        if self.rejection is None or self.current is None:
            return set()
        if self.rejected:
            return {key for key in self.rejected if key in self.current.contents}
        if self._blames_all:
            return set(self.current.contents)
        return {key for key in self._changed if self.blames(key)}

    @cached_property
    def _changed(self) -> set[Key]:
        return changed_between(self.applied or EMPTY, self.current) if self.current is not None else set()

    @cached_property
    def _blames_all(self) -> bool:
        current = self.current
        return current is not None and not any(key in current.contents and not self.runs(key) for key in self._changed)


class ProgressTracker:
    """Progress per VirtualService, asked for one at a time, with what changed since the last update.

    `update` takes the proxies' state now (cost: the proxies, not the VirtualServices) and says
    which VirtualServices' progress may differ from before: those whose tokens differ between the
    snapshots proxies moved between (see lineage.py), plus every one selected by a label set whose
    proxies came or went (their counts all change).
    """

    def __init__(self) -> None:
        self._classes: dict[Shape, Alike] = {}
        self._by_labels: dict[LabelSet, list[Alike]] = {}

    def update(self, proxies: Iterable[ProxyProgress]) -> tuple[set[Key], list[dict[str, str]]]:
        """Returns (keys whose progress may have changed, labels whose every selected VirtualService may have)."""
        grouped: dict[Shape, list[str]] = {}
        for proxy in proxies:
            if proxy.labels is not None:  # not identified yet: not selected by anything
                labels = frozenset(proxy.labels.items())
                shape = (labels, proxy.current, proxy.applied, proxy.rejection, proxy.rejected)
                grouped.setdefault(shape, []).append(proxy.node_id)
        old = self._classes
        if grouped.keys() == old.keys() and all(old[shape].nodes == tuple(grouped[shape]) for shape in grouped):
            return set(), []
        self._classes = {shape: Alike(dict(shape[0]), *shape[1:], tuple(nodes)) for shape, nodes in grouped.items()}
        old_by_labels, self._by_labels = self._by_labels, {}
        for shape, alike in self._classes.items():
            self._by_labels.setdefault(shape[0], []).append(alike)
        keys: set[Key] = set()
        relabelled: list[dict[str, str]] = []
        for label_set in old_by_labels.keys() | self._by_labels.keys():
            before, after = old_by_labels.get(label_set, []), self._by_labels.get(label_set, [])
            moved = _moves(before, after)
            if moved is None:
                relabelled.append(dict(label_set))
                continue
            for was, now in moved:
                keys |= _affected(was, now)
        return keys, relabelled

    def progress(self, vs: VirtualService) -> Progress:
        result = Progress()
        for alikes in self._by_labels.values():
            if not vs.selects(alikes[0].labels):
                continue
            for alike in alikes:
                result.selected += len(alike.nodes)
                if alike.runs(vs.key):
                    result.applied += len(alike.nodes)
                    result.serving.append(alike.nodes)
                if alike.blames(vs.key):
                    result.rejections.append((alike.nodes[0], alike.rejection or ""))
        return result


def _moves(before: list[Alike], after: list[Alike]) -> set[tuple[Alike, Alike]] | None:
    """The (old, new) classes of the proxies of one label set that changed class; None if proxies came or went."""
    old, new = _by_node(before), _by_node(after)
    if old is None or new is None or old.keys() != new.keys():
        return None
    return {(old[node], alike) for node, alike in new.items() if _shape(old[node]) != _shape(alike)}


def _by_node(alikes: list[Alike]) -> dict[str, Alike] | None:
    """None when a node id is on two streams (a reconnecting proxy): then counted as proxies coming and going."""
    by_node = {node: alike for alike in alikes for node in alike.nodes}
    return by_node if len(by_node) == sum(len(alike.nodes) for alike in alikes) else None


def _shape(alike: Alike) -> tuple[Snapshot | None, Snapshot | None, str | None, frozenset[Key]]:
    return (alike.current, alike.applied, alike.rejection, alike.rejected)


def _affected(was: Alike, now: Alike) -> set[Key]:
    """The VirtualServices whose progress can differ for proxies that moved from one class to the other."""
    keys: set[Key] = set()
    if was.current is not None and now.current is not None:
        keys |= changed_between(was.current, now.current)
    keys |= changed_between(was.applied or EMPTY, now.applied or EMPTY)
    return keys | was.blamed() | now.blamed()
