"""What the control plane needs to know about Pods, indexed: proxy identity and endpoints.

Pure state, no I/O: the Pod watch feeds it raw Pod objects (dicts as the API server sends
them); it answers "which labels does the proxy with this node id have" and "which IPs do
the Ready pods matching this selector have".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from xds_operator.api.model import NAMESPACE_LABEL

if TYPE_CHECKING:
    from envoy.config.core.v3 import base_pb2


@dataclass(frozen=True)
class PodInfo:
    """The few fields of a Pod the control plane uses."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    ready: bool = False
    terminating: bool = False

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PodInfo:
        metadata = obj.get("metadata") or {}
        status = obj.get("status") or {}
        ready = any(
            condition.get("type") == "Ready" and condition.get("status") == "True"
            for condition in status.get("conditions") or ()
        )
        return cls(
            namespace=metadata.get("namespace", ""),
            name=metadata.get("name", ""),
            uid=metadata.get("uid", ""),
            labels=MappingProxyType(dict(metadata.get("labels") or {})),
            ip=status.get("podIP") or "",
            ready=ready,
            terminating=metadata.get("deletionTimestamp") is not None,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def serves_traffic(self) -> bool:
        """An endpoint: Ready, not terminating, and with an IP."""
        return self.ready and not self.terminating and bool(self.ip)

    def node_ids(self) -> tuple[str, ...]:
        """The node ids an Envoy in this pod may use: its UID or <namespace>/<name>."""
        return (self.uid, self.key) if self.uid else (self.key,)


@dataclass(frozen=True)
class PodChange:
    """What one Pod event changed, so the source refreshes only what depends on it."""

    namespace: str
    node_ids: frozenset[str]  # proxies whose labels may have changed
    endpoints_changed: bool  # whether the set of serving pods (or their labels/IPs) changed
    # The labels it served traffic with before and after (if it did): selectors matching either see a change.
    endpoint_labels: tuple[Mapping[str, str], ...] = ()


Selector = frozenset[tuple[str, str]]
T = TypeVar("T")


class SelectorIndex(Generic[T]):
    """Values filed under label selectors (per namespace), found by the labels of a pod the selectors match.

    Each selector is filed under one of its pairs, the one filed under least so far (so per-call
    selectors such as {app: worker, session: abc} spread out over their `session` pairs); finding
    what matches a pod's labels looks into the buckets of those labels' pairs only: the cost follows
    the pod's labels and what matches them, not how many selectors there are.
    """

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, ...], dict[Selector, set[T]]] = {}
        self._bucket_of: dict[tuple[str, Selector], tuple[str, ...]] = {}

    def add(self, namespace: str, selector: Selector, value: T) -> None:
        bucket = self._bucket_of.get((namespace, selector))
        if bucket is None:
            choices: list[tuple[str, ...]] = [(namespace, key, label) for key, label in selector] or [(namespace,)]
            bucket = min(choices, key=lambda choice: len(self._buckets.get(choice, ())))
            self._bucket_of[(namespace, selector)] = bucket
        self._buckets.setdefault(bucket, {}).setdefault(selector, set()).add(value)

    def discard(self, namespace: str, selector: Selector, value: T) -> bool:
        """Remove one value; True if the selector has none left (it is no longer filed)."""
        bucket = self._bucket_of.get((namespace, selector))
        if bucket is None:
            return False
        values = self._buckets[bucket][selector]
        values.discard(value)
        if values:
            return False
        del self._buckets[bucket][selector], self._bucket_of[(namespace, selector)]
        if not self._buckets[bucket]:
            del self._buckets[bucket]
        return True

    def matching(self, namespace: str, labels: Mapping[str, str]) -> set[T]:
        """The values of every selector whose pairs are all among these labels (the empty selector included)."""
        found: set[T] = set()
        for bucket in [(namespace,), *((namespace, key, label) for key, label in labels.items())]:
            for selector, values in self._buckets.get(bucket, {}).items():
                if all(labels.get(key) == label for key, label in selector):
                    found |= values
        return found


class PodIndex:
    def __init__(self) -> None:
        self._pods: dict[str, PodInfo] = {}  # by namespace/name
        self._by_uid: dict[str, PodInfo] = {}
        self._by_namespace: dict[str, dict[str, PodInfo]] = {}
        self._by_label: dict[tuple[str, str, str], set[str]] = {}  # (namespace, key, value) → pod names
        # Memoized selector answers, each dropped when a pod it matches (or matched) changes.
        self._resolved: dict[tuple[str, Selector], tuple[str, ...]] = {}
        self._memo: SelectorIndex[Selector] = SelectorIndex()

    def __len__(self) -> int:
        return len(self._pods)

    # -- input -------------------------------------------------------------------------------

    def upsert(self, obj: Mapping[str, Any]) -> PodChange | None:
        return self._put(PodInfo.from_object(obj))

    def delete(self, obj: Mapping[str, Any]) -> PodChange | None:
        return self._remove(PodInfo.from_object(obj).key)

    def replace(self, objects: Iterable[Mapping[str, Any]], namespace: str | None = None) -> list[PodChange]:
        """A full relist (of one namespace, or of all): the pods not in it are gone."""
        listed = {pod.key: pod for pod in map(PodInfo.from_object, objects)}
        known = self._pods.values() if namespace is None else self._by_namespace.get(namespace, {}).values()
        gone = [pod.key for pod in known if pod.key not in listed]
        changes = [self._remove(key) for key in gone]
        changes.extend(self._put(pod) for pod in listed.values())
        return [change for change in changes if change is not None]

    def _remove(self, key: str) -> PodChange | None:
        old = self._pods.pop(key, None)
        if old is None:
            return None
        self._by_uid.pop(old.uid, None)
        self._by_namespace[old.namespace].pop(old.name, None)
        if not self._by_namespace[old.namespace]:
            del self._by_namespace[old.namespace]
        self._file(old, add=False)
        return self._changed(old, None)

    def _put(self, pod: PodInfo) -> PodChange | None:
        old = self._pods.get(pod.key)
        if old == pod:
            return None
        if old is not None and old.uid != pod.uid:
            self._by_uid.pop(old.uid, None)
        if old is not None:
            self._file(old, add=False)
        self._file(pod, add=True)
        self._pods[pod.key] = pod
        if pod.uid:
            self._by_uid[pod.uid] = pod
        self._by_namespace.setdefault(pod.namespace, {})[pod.name] = pod
        return self._changed(old, pod)

    def _changed(self, old: PodInfo | None, new: PodInfo | None) -> PodChange | None:
        pod = new or old
        assert pod is not None
        node_ids = set(pod.node_ids()) | (set(old.node_ids()) if old else set())
        relabelled = old is None or new is None or old.labels != new.labels
        endpoints_changed = _as_endpoint(old) != _as_endpoint(new)
        served = tuple(p.labels for p in (old, new) if p is not None and p.serves_traffic) if endpoints_changed else ()
        for labels in served:
            for selector in self._memo.matching(pod.namespace, labels):
                self._memo.discard(pod.namespace, selector, selector)
                del self._resolved[(pod.namespace, selector)]
        if not relabelled and not endpoints_changed:
            return None
        return PodChange(pod.namespace, frozenset(node_ids) if relabelled else frozenset(), endpoints_changed, served)

    def _file(self, pod: PodInfo, add: bool) -> None:
        """Keep the pod under each of its labels (selectors look only at pods with one of their pairs)."""
        for key, value in pod.labels.items():
            names = self._by_label.setdefault((pod.namespace, key, value), set())
            if add:
                names.add(pod.name)
            else:
                names.discard(pod.name)
                if not names:
                    del self._by_label[(pod.namespace, key, value)]

    # -- queries -----------------------------------------------------------------------------

    def labels_for(self, node_id: str) -> dict[str, str] | None:
        """A proxy's labels, from its pod (node id = pod UID or <namespace>/<name>), with the pod's namespace
        under NAMESPACE_LABEL (VirtualServices select proxies in their own namespace); None if unknown."""
        pod = self._proxy_pod(node_id)
        return {**pod.labels, NAMESPACE_LABEL: pod.namespace} if pod is not None else None

    def identify(self, node: base_pb2.Node) -> dict[str, str] | None:
        """The ADS server's `identify`: a proxy's labels are its pod's, whatever its node metadata claims."""
        return self.labels_for(node.id)

    def ip_for(self, node_id: str) -> str:
        """The pod IP of the proxy with this node id ("" if its pod is unknown or has no IP yet)."""
        pod = self._proxy_pod(node_id)
        return pod.ip if pod is not None else ""

    def _proxy_pod(self, node_id: str) -> PodInfo | None:
        """The pod a node id names: by UID, or by <namespace>/<name>."""
        return self._by_uid.get(node_id) or self._pods.get(node_id)

    def ready_ips(self, namespace: str, selector: Mapping[str, str]) -> Sequence[str]:
        """The IPs of the serving pods in namespace whose labels contain the selector (a SelectorResolver)."""
        key = frozenset(selector.items())
        ips = self._resolved.get((namespace, key))
        if ips is None:
            ips = self._resolved[(namespace, key)] = tuple(
                sorted(
                    {
                        pod.ip
                        for pod in self._candidates(namespace, key)
                        if pod.serves_traffic and all(pod.labels.get(k) == v for k, v in key)
                    }
                )
            )
            self._memo.add(namespace, key, key)
        return ips

    def forget_selector(self, namespace: str, selector: Selector) -> None:
        """Nothing resolves this selector any more: drop its memoized answer."""
        if self._resolved.pop((namespace, selector), None) is not None:
            self._memo.discard(namespace, selector, selector)

    def _candidates(self, namespace: str, selector: Selector) -> Iterable[PodInfo]:
        """The pods that carry the selector's rarest pair (every pod of the namespace for the empty selector)."""
        pods = self._by_namespace.get(namespace, {})
        if not selector:
            return pods.values()
        names = min((self._by_label.get((namespace, k, v), set()) for k, v in selector), key=len)
        return [pods[name] for name in names]


def _as_endpoint(pod: PodInfo | None) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The part of a pod that endpoint resolution sees."""
    if pod is None or not pod.serves_traffic:
        return None
    return (pod.ip, tuple(sorted(pod.labels.items())))
