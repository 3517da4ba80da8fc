"""Per VirtualService: how many selected proxies run its current resources, which ones, and who rejected them.

Pure: it reads what the server knows of each proxy (its current and its last fully ACKed
snapshot, and any NACK text) and what the cache holds. Proxies that are alike (same labels,
same snapshots, same error) are counted together, so the cost follows groups, not proxies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..api import Key, VirtualService
from .server import ProxyProgress
from .snapshot import Snapshot


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
    result = {key: Progress() for key in services}
    alike: dict[tuple, list[str]] = {}
    for proxy in proxies:
        if proxy.labels is None:
            continue  # not identified yet: not selected by anything
        shape = (frozenset(proxy.labels.items()), proxy.current, proxy.applied, proxy.rejection)
        alike.setdefault(shape, []).append(proxy.node_id)
    selected_by_labels: dict[frozenset, list[Key]] = {}
    for shape, node_list in alike.items():
        label_set, current, applied, rejection = shape
        count, nodes = len(node_list), tuple(node_list)
        selected = selected_by_labels.get(label_set)
        if selected is None:
            labels = dict(label_set)
            selected = selected_by_labels[label_set] = [k for k, vs in services.items() if vs.selects(labels)]
        running = applied.contents if applied is not None else {}
        tokens = current.contents if current is not None else {}
        for key in selected:
            result[key].selected += count
            token = tokens.get(key)
            if token is not None and running.get(key) == token:
                result[key].applied += count
                result[key].serving.append(nodes)
        if rejection is not None:
            for key in _blamed(current, running):
                if key in result:
                    result[key].rejections.append((nodes[0], rejection))
    return result


def _blamed(current: Snapshot | None, running: Mapping) -> list[Key]:
    """The VirtualServices a NACK is about: those new or changed since the last snapshot the proxy took.

    If none are (the proxy rejected something it never ran), every one it should run is named.
    """
    if current is None:
        return []
    changed = [key for key, token in current.contents.items() if running.get(key) != token]
    return changed or list(current.contents)
