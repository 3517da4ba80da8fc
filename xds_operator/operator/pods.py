"""What the control plane needs to know about Pods, indexed: proxy identity and endpoints.

Pure state, no I/O: the Pod watch feeds it raw Pod objects (dicts as the API server sends
them); it answers "which labels does the proxy with this node id have" and "which IPs do
the Ready pods matching this selector have".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ..api.model import NAMESPACE_LABEL


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
    def from_object(cls, obj: Mapping) -> PodInfo:
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


class PodIndex:
    def __init__(self) -> None:
        self._pods: dict[str, PodInfo] = {}  # by namespace/name
        self._by_uid: dict[str, PodInfo] = {}
        self._by_namespace: dict[str, dict[str, PodInfo]] = {}
        # The serving pods (keys) per (namespace, label key, value), and per (namespace, "", "") all of
        # them: a selector's answer is an intersection of these sets, not a scan of every pod (one
        # worker pod per call means as many pods as VirtualServices).
        self._serving_by_label: dict[tuple[str, str, str], set[str]] = {}
        # Memoized selector answers per namespace, dropped when a pod there changes.
        self._resolved: dict[str, dict[frozenset[tuple[str, str]], tuple[str, ...]]] = {}

    def __len__(self) -> int:
        return len(self._pods)

    # -- input -------------------------------------------------------------------------------

    def upsert(self, obj: Mapping) -> PodChange | None:
        return self._put(PodInfo.from_object(obj))

    def delete(self, obj: Mapping) -> PodChange | None:
        return self._remove(PodInfo.from_object(obj).key)

    def replace(self, objects: Iterable[Mapping], namespace: str | None = None) -> list[PodChange]:
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
        return self._changed(old, None)

    def _put(self, pod: PodInfo) -> PodChange | None:
        old = self._pods.get(pod.key)
        if old == pod:
            return None
        if old is not None and old.uid != pod.uid:
            self._by_uid.pop(old.uid, None)
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
        if endpoints_changed:
            self._resolved.pop(pod.namespace, None)
            self._index_serving(old, present=False)
            self._index_serving(new, present=True)
        if not relabelled and not endpoints_changed:
            return None
        return PodChange(pod.namespace, frozenset(node_ids) if relabelled else frozenset(), endpoints_changed)

    def _index_serving(self, pod: PodInfo | None, present: bool) -> None:
        """Add a serving pod to (or take it out of) the selector index."""
        if pod is None or not pod.serves_traffic:
            return
        keys = [(pod.namespace, "", "")] + [(pod.namespace, k, v) for k, v in pod.labels.items()]
        for index_key in keys:
            members = self._serving_by_label.setdefault(index_key, set())
            if present:
                members.add(pod.key)
            else:
                members.discard(pod.key)
                if not members:
                    del self._serving_by_label[index_key]

    # -- queries -----------------------------------------------------------------------------

    def labels_for(self, node_id: str) -> dict[str, str] | None:
        """A proxy's labels, from its pod (node id = pod UID or <namespace>/<name>), with the pod's namespace
        under NAMESPACE_LABEL (VirtualServices select proxies in their own namespace); None if unknown."""
        pod = self._proxy_pod(node_id)
        return {**pod.labels, NAMESPACE_LABEL: pod.namespace} if pod is not None else None

    def ip_for(self, node_id: str) -> str:
        """The pod IP of the proxy with this node id ("" if its pod is unknown or has no IP yet)."""
        pod = self._proxy_pod(node_id)
        return pod.ip if pod is not None else ""

    def _proxy_pod(self, node_id: str) -> PodInfo | None:
        """The pod a node id names: by UID, or by <namespace>/<name>."""
        return self._by_uid.get(node_id) or self._pods.get(node_id)

    def ready_ips(self, namespace: str, selector: Mapping[str, str]) -> Sequence[str]:
        """The IPs of the serving pods in namespace whose labels contain the selector (a SelectorResolver)."""
        resolved = self._resolved.setdefault(namespace, {})
        key = frozenset(selector.items())
        ips = resolved.get(key)
        if ips is None:
            ips = tuple(sorted({self._pods[pod].ip for pod in self._serving_matching(namespace, selector)}))
            resolved[key] = ips
        return ips

    def _serving_matching(self, namespace: str, selector: Mapping[str, str]) -> set[str]:
        """Keys of the serving pods in namespace whose labels contain the selector: the smallest
        label set, checked against the others (time follows the matching pods, not all pods)."""
        index_keys = [(namespace, k, v) for k, v in selector.items()] or [(namespace, "", "")]
        sets = sorted((self._serving_by_label.get(index_key, set()) for index_key in index_keys), key=len)
        return sets[0].intersection(*sets[1:])


def _as_endpoint(pod: PodInfo | None) -> tuple | None:
    """The part of a pod that endpoint resolution sees."""
    if pod is None or not pod.serves_traffic:
        return None
    return (pod.ip, tuple(sorted(pod.labels.items())))
