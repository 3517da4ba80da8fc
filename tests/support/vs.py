"""VirtualService builders for in-process tests: spec items, documents, parsed VirtualServices, and
what an independent cache would compute for them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from xds_operator.api import VirtualService, parse_virtual_service
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService

INGRESS = {"app": "ingress"}


# -- VirtualService factory ----------------------------------------------------------------------


def listener_spec(
    name: str,
    port: int,
    cluster: str,
    *,
    eds: bool = False,
    addresses: Sequence[str] = ("10.0.0.1",),
    hash_key: str | None = None,
) -> dict[str, Any]:
    """One `spec.listeners[]` item: a UDP listener to a cluster of address endpoints."""
    cluster_spec: dict[str, Any] = {
        "name": cluster,
        "service_discovery": "eds" if eds else "strictdns",
        "endpoints": [
            {"name": f"worker-{index}", "host": {"address": address}, "port": 2001}
            for index, address in enumerate(addresses)
        ],
    }
    if hash_key is not None:
        cluster_spec["hash_key"] = hash_key
    return {"name": name, "udp": {"port": port, "cluster": cluster_spec}}


def vs_document(
    name: str,
    listeners: Iterable[dict[str, Any]],
    *,
    selector: Mapping[str, str] = INGRESS,
    namespace: str = "media",
    created: str = "2024-01-01T00:00:00Z",
) -> dict[str, Any]:
    """A VirtualService document as it comes from YAML or the Kubernetes API."""
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {"selector": dict(selector), "listeners": list(listeners)},
    }


def make_vs(name: str, listeners: Iterable[dict[str, Any]], **kwargs: Any) -> VirtualService:
    return parse_virtual_service(vs_document(name, listeners, **kwargs))


def two_eds_clusters(
    *, addresses_a: Sequence[str] = ("10.0.0.1",), hash_key: str | None = None, port_a: int = 3000
) -> VirtualService:
    """One VirtualService with two EDS clusters: eds-a (listener la) and eds-b (listener lb)."""
    return make_vs(
        "eds",
        [
            listener_spec("la", port_a, "eds-a", eds=True, addresses=addresses_a, hash_key=hash_key),
            listener_spec("lb", 3001, "eds-b", eds=True, addresses=("10.0.1.1",)),
        ],
    )


def commit(cache: SnapshotCache, *services: VirtualService) -> None:
    for vs in services:
        cache.upsert(vs)
    cache.commit()


def expected_version(
    type_url: str,
    services: Iterable[VirtualService],
    labels: Mapping[str, str] = INGRESS,
    names: Iterable[str] | None = None,
) -> str:
    """The content-hash version an independent cache (another replica, or after a restart) computes."""
    other = SnapshotCache()
    commit(other, *services)
    return other.snapshot_for(labels).select(type_url, None if names is None else frozenset(names)).version


def proxy_types(service: AggregatedDiscoveryService, node_id: str) -> dict[str, dict[str, str | None]]:
    (entry,) = [proxy for proxy in service.proxies() if proxy["node_id"] == node_id]
    return entry["types"]
