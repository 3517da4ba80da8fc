"""The snapshot cache: proxy groups, shared snapshots, content-hash versions, conflicts, watches."""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3.address_pb2 import SocketAddress
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xds_operator.api import VirtualService, cluster_of, parse_virtual_service
from xds_operator.xds import lineage
from xds_operator.xds.cache import SnapshotCache, Watch
from xds_operator.xds.snapshot import CLUSTER, EMPTY, ENDPOINT, LISTENER, Resource, Snapshot

INGRESS = {"app": "envoy-ingress"}
UDP, TCP = SocketAddress.UDP, SocketAddress.TCP


def vs_doc(
    name: str,
    *,
    namespace: str = "default",
    selector: Mapping[str, str] = INGRESS,
    port: int = 2000,
    listener: str | None = None,
    cluster: str | None = None,
    discovery: str = "strictdns",
    address: str = "10.0.0.1",
    created: str | None = None,
    pod_selector: Mapping[str, str] | None = None,
    protocol: str = "udp",
) -> dict[str, Any]:
    """A one-listener VirtualService document (`protocol`: udp or tcp); names default to <name>-l / <name>-c."""
    host: dict[str, Any] = {"selector": dict(pod_selector)} if pod_selector else {"address": address}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if created is not None:
        metadata["creationTimestamp"] = created
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": metadata,
        "spec": {
            "selector": dict(selector),
            "listeners": [
                {
                    "name": listener or f"{name}-l",
                    protocol: {
                        "port": port,
                        "cluster": {
                            "name": cluster or f"{name}-c",
                            "service_discovery": discovery,
                            "health_check": {"interval": 1000},
                            "endpoints": [{"name": "w", "host": host, "port": 9000}],
                        },
                    },
                }
            ],
        },
    }


def make_vs(name: str, **kwargs: Any) -> VirtualService:
    return parse_virtual_service(vs_doc(name, **kwargs))


class Counter:
    """A notify callback that counts how often it was called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def names(snapshot: Snapshot, type_url: str) -> set[str]:
    return set(snapshot.resources[type_url])


def loaded(*services: VirtualService, resolver: Any = None) -> SnapshotCache:
    cache = SnapshotCache() if resolver is None else SnapshotCache(resolver)
    for vs in services:
        cache.upsert(vs)
    cache.commit()
    return cache


# -- groups and shared snapshots ------------------------------------------------------------


def test_proxies_with_equal_labels_share_a_group_and_snapshot() -> None:
    cache = loaded(make_vs("calls"))
    first = cache.watch({"app": "envoy-ingress", "zone": "a"}, Counter())
    second = cache.watch({"zone": "a", "app": "envoy-ingress"}, Counter())
    assert cache.group_count() == 1
    assert first.snapshot is second.snapshot
    assert names(first.snapshot, LISTENER) == {"calls-l"}


def test_groups_selecting_the_same_services_share_one_snapshot() -> None:
    cache = loaded(make_vs("calls"))
    zone_a = cache.watch({"app": "envoy-ingress", "zone": "a"}, Counter())
    zone_b = cache.watch({"app": "envoy-ingress", "zone": "b"}, Counter())
    assert cache.group_count() == 2
    assert zone_a.snapshot is zone_b.snapshot
    # Still shared after a change rebuilds both groups.
    cache.upsert(make_vs("calls", port=2001))
    cache.commit()
    assert zone_a.snapshot is zone_b.snapshot
    assert zone_a.snapshot.resources[LISTENER]["calls-l"] is zone_b.snapshot.resources[LISTENER]["calls-l"]


def test_groups_selecting_different_services_get_different_snapshots() -> None:
    cache = loaded(make_vs("calls"), make_vs("extra", selector={"app": "envoy-ingress", "zone": "b"}, port=3000))
    zone_a = cache.watch({"app": "envoy-ingress", "zone": "a"}, Counter())
    zone_b = cache.watch({"app": "envoy-ingress", "zone": "b"}, Counter())
    assert zone_a.snapshot is not zone_b.snapshot
    assert names(zone_a.snapshot, LISTENER) == {"calls-l"}
    assert names(zone_b.snapshot, LISTENER) == {"calls-l", "extra-l"}


def test_non_matching_selector_gives_nothing() -> None:
    cache = loaded(
        make_vs("other-app", selector={"app": "something-else"}),
        make_vs("narrower", selector={"app": "envoy-ingress", "tier": "edge"}, port=3000),
    )
    watch = cache.watch(INGRESS, Counter())
    assert all(not of_type for of_type in watch.snapshot.resources.values())
    assert watch.snapshot.versions == EMPTY.versions
    # A proxy whose labels contain every selector pair gets the narrower one.
    edge = cache.watch({"app": "envoy-ingress", "tier": "edge"}, Counter())
    assert names(edge.snapshot, LISTENER) == {"narrower-l"}


def test_unknown_proxy_identity_has_no_snapshot() -> None:
    cache = loaded(make_vs("calls"))
    watch = cache.watch(None, Counter())
    assert watch.snapshot is None
    assert cache.group_count() == 0
    cache.relabel(watch, INGRESS)
    assert watch.snapshot is not None and names(watch.snapshot, LISTENER) == {"calls-l"}


def test_eds_service_puts_all_three_types_in_the_snapshot() -> None:
    cache = loaded(make_vs("calls", discovery="eds"))
    snapshot = cache.snapshot_for(INGRESS)
    assert (names(snapshot, LISTENER), names(snapshot, CLUSTER), names(snapshot, ENDPOINT)) == (
        {"calls-l"},
        {"calls-c"},
        {"calls-c"},
    )


# -- versions -------------------------------------------------------------------------------


def test_versions_are_content_hashes_across_caches() -> None:
    """Two caches fed the same services (in another order, as separate objects) agree on every version."""
    inputs = [("a", 2000, "strictdns"), ("b", 2001, "eds"), ("c", 2002, "strictdns")]
    first = loaded(*[make_vs(name, port=port, discovery=mode) for name, port, mode in inputs])
    second = loaded(*[make_vs(name, port=port, discovery=mode) for name, port, mode in reversed(inputs)])
    assert first.snapshot_for(INGRESS).versions == second.snapshot_for(INGRESS).versions
    assert set(first.snapshot_for(INGRESS).versions) == {CLUSTER, ENDPOINT, LISTENER}


@pytest.mark.parametrize(
    ("change", "changed_types"),
    [
        ({"address": "10.0.0.2"}, {ENDPOINT}),  # eds endpoint: only EDS
        ({"port": 2100}, {LISTENER}),  # listener port: only LDS
        ({"listener": "renamed-l"}, {LISTENER}),
        ({"cluster": "renamed-c"}, {CLUSTER, ENDPOINT, LISTENER}),  # the listener routes to the new name
    ],
    ids=["eds-address", "port", "listener-name", "cluster-name"],
)
def test_only_changed_types_get_new_versions(change: dict[str, Any], changed_types: set[str]) -> None:
    base = {"discovery": "eds", "port": 2000}
    cache = loaded(make_vs("calls", **base), make_vs("other", port=3000))
    before = cache.snapshot_for(INGRESS).versions
    cache.upsert(make_vs("calls", **{**base, **change}))
    cache.commit()
    after = cache.snapshot_for(INGRESS).versions
    assert {type_url for type_url in before if before[type_url] != after[type_url]} == changed_types


def test_health_check_change_changes_only_cds() -> None:
    cache = loaded(make_vs("calls", discovery="eds"))
    before = cache.snapshot_for(INGRESS).versions
    document = vs_doc("calls", discovery="eds")
    document["spec"]["listeners"][0]["udp"]["cluster"]["health_check"]["interval"] = 2000
    cache.upsert(parse_virtual_service(document))
    cache.commit()
    after = cache.snapshot_for(INGRESS).versions
    assert [t for t in before if before[t] != after[t]] == [CLUSTER]


def test_pod_changes_retranslate_and_change_only_eds() -> None:
    pods: dict[str, list[str]] = {"worker": ["10.1.0.1"]}

    def resolver(namespace: str, selector: Mapping[str, str]) -> Sequence[str]:
        return pods.get(selector.get("app", ""), []) if namespace == "default" else []

    cache = loaded(
        make_vs("calls", discovery="eds", pod_selector={"app": "worker"}), make_vs("x", port=3000), resolver=resolver
    )
    watch = cache.watch(INGRESS, Counter())
    before, translations = watch.snapshot.versions, cache.translations
    cache.refresh_endpoints()
    assert cache.commit() == 0 and cache.translations == translations  # nothing moved: nothing redone
    pods["worker"] = ["10.1.0.1", "10.1.0.2"]
    cache.refresh_endpoints()
    cache.commit()
    after = watch.snapshot.versions
    assert cache.translations == translations + 1
    assert [t for t in before if before[t] != after[t]] == [ENDPOINT]
    assignment = endpoint_pb2.ClusterLoadAssignment.FromString(watch.snapshot.resources[ENDPOINT]["calls-c"].body)
    ips = {lb.endpoint.address.socket_address.address for loc in assignment.endpoints for lb in loc.lb_endpoints}
    assert ips == {"10.1.0.1", "10.1.0.2"}


# -- translation reuse ----------------------------------------------------------------------


def test_edit_retranslates_only_that_service() -> None:
    cache = SnapshotCache()
    for index in range(20):
        cache.upsert(make_vs(f"vs{index}", port=2000 + index))
    cache.commit()
    cache.watch(INGRESS, Counter())
    assert cache.translations == 20
    cache.upsert(make_vs("vs7", port=2000 + 7, address="10.9.9.9"))
    cache.commit()
    assert cache.translations == 21
    # Unchanged content (a freshly parsed, equal object) is not translated again.
    for index in range(20):
        cache.upsert(make_vs(f"vs{index}", port=2000 + index, address="10.9.9.9" if index == 7 else "10.0.0.1"))
    assert cache.commit() == 0
    assert cache.translations == 21


def test_unchanged_resources_are_reused_between_snapshots() -> None:
    cache = loaded(make_vs("a", port=2000), make_vs("b", port=2001))
    before = cache.snapshot_for(INGRESS)
    cache.upsert(make_vs("b", port=2002))
    cache.commit()
    after = cache.snapshot_for(INGRESS)
    assert after is not before
    assert after.resources[LISTENER]["a-l"] is before.resources[LISTENER]["a-l"]


# -- conflicts ------------------------------------------------------------------------------


def test_calls_that_declare_one_cluster_alike_share_it() -> None:
    """A VirtualService per call, each naming its worker's cluster: the proxy gets the cluster once, and
    it stays while any call that declares it is there (Envoy adds no cluster per call)."""
    cache = SnapshotCache()
    watch = cache.watch(INGRESS, Counter())
    for discovery in ("strictdns", "eds"):
        calls = [make_vs(f"call-{i}", port=3000 + i, cluster="worker-7-c", discovery=discovery) for i in range(3)]
        for vs in calls:
            cache.upsert(vs)
            cache.commit()
        assert cache.conflicts == {}
        snapshot = watch.snapshot
        assert names(snapshot, LISTENER) == {"call-0-l", "call-1-l", "call-2-l"}
        assert names(snapshot, CLUSTER) == {"worker-7-c"}
        assert names(snapshot, ENDPOINT) == ({"worker-7-c"} if discovery == "eds" else set())
        cache.delete(calls[0].key)
        cache.commit()
        assert names(watch.snapshot, CLUSTER) == {"worker-7-c"}  # still declared by call-1 and call-2
        cache.delete(calls[1].key)
        cache.upsert(make_vs("call-2", port=3002, cluster="worker-7-c", discovery=discovery, address="10.0.0.9"))
        cache.commit()  # the only one left changes its definition: the cluster follows it
        [cluster] = watch.snapshot.resources[CLUSTER].values()
        assert cluster.digest == cache.snapshot_for(INGRESS).resources[CLUSTER]["worker-7-c"].digest
        assert names(watch.snapshot, LISTENER) == {"call-2-l"}
        cache.delete(calls[2].key)
        cache.commit()
        assert names(watch.snapshot, CLUSTER) == names(watch.snapshot, ENDPOINT) == set()
        # the same result as building from scratch: patching kept the snapshot consistent
        watch.snapshot.check_consistency()


def test_a_shared_cluster_declared_otherwise_conflicts_and_the_oldest_definition_wins() -> None:
    cache = SnapshotCache()
    older = make_vs("a-call", port=3000, cluster="worker-c", created="2024-01-01T00:00:00Z")
    newer = make_vs("b-call", port=3001, cluster="worker-c", address="10.0.0.2", created="2024-02-01T00:00:00Z")
    alike = make_vs("c-call", port=3002, cluster="worker-c", created="2024-03-01T00:00:00Z")
    cache = loaded(older, newer, alike)
    watch = cache.watch(INGRESS, Counter())
    assert set(cache.conflicts) == {newer.key}
    assert names(watch.snapshot, LISTENER) == {"a-call-l", "c-call-l"}
    cache.delete(older.key)
    cache.commit()  # now b-call is the oldest claimant: its definition wins, as for any conflict
    assert set(cache.conflicts) == {alike.key}
    assert names(watch.snapshot, LISTENER) == {"b-call-l"}
    cache.delete(newer.key)
    cache.commit()
    assert cache.conflicts == {}
    assert names(watch.snapshot, LISTENER) == {"c-call-l"}


@pytest.mark.parametrize(
    ("clash", "kind", "value"),
    [
        ({"listener": "shared-l"}, "listener", "shared-l"),
        ({"cluster": "shared-c", "address": "10.0.0.2"}, "cluster", "shared-c"),
        ({"port": 2000}, "UDP port", "2000"),
        ({"port": 2000, "protocol": "tcp", "old_protocol": "tcp"}, "TCP port", "2000"),
    ],
    ids=["listener-name", "cluster-name", "udp-port", "tcp-port"],
)
def test_conflict_older_service_wins(clash: dict[str, Any], kind: str, value: str) -> None:
    clash = dict(clash)
    old_protocol = clash.pop("old_protocol", "udp")
    old = make_vs(
        "zz-old",
        port=2000,
        protocol=old_protocol,
        created="2024-01-01T00:00:00Z",
        **{k: v for k, v in clash.items() if k not in ("port", "protocol", "address")},  # the new one differs
    )
    new = make_vs("aa-new", created="2024-06-01T00:00:00Z", **{"port": 2001, **clash})
    cache = loaded(new, old)
    watch = cache.watch(INGRESS, Counter())
    assert set(cache.conflicts) == {("default", "aa-new")}
    defined = "with another definition " if kind == "cluster" else ""
    assert (
        cache.conflicts[("default", "aa-new")]
        == f"{kind} {value} is already used {defined}by the older VirtualService default/zz-old"
    )
    listeners = watch.snapshot.resources[LISTENER]
    assert len(listeners) == 1
    [listener] = [listener_pb2.Listener.FromString(r.body) for r in listeners.values()]
    assert listener.address.socket_address.port_value == 2000  # the old one's
    clusters = [cluster_pb2.Cluster.FromString(r.body).name for r in watch.snapshot.resources[CLUSTER].values()]
    assert clusters == [cluster_of(old.spec.listeners[0]).name]


def test_a_udp_and_a_tcp_listener_may_share_a_port_number() -> None:
    udp = make_vs("zz-old", port=2000, created="2024-01-01T00:00:00Z")
    tcp = make_vs("aa-new", port=2000, protocol="tcp", created="2024-06-01T00:00:00Z")
    cache = loaded(udp, tcp)
    watch = cache.watch(INGRESS, Counter())
    assert cache.conflicts == {}
    listeners = [listener_pb2.Listener.FromString(r.body) for r in watch.snapshot.resources[LISTENER].values()]
    bound = {
        (lst.name, lst.address.socket_address.protocol, lst.address.socket_address.port_value) for lst in listeners
    }
    assert bound == {("zz-old-l", UDP, 2000), ("aa-new-l", TCP, 2000)}


def test_conflict_same_age_namespace_then_name_order() -> None:
    stamp = "2024-01-01T00:00:00Z"
    cache = loaded(
        make_vs("b", namespace="alpha", listener="shared-l", port=2001, created=stamp),
        make_vs("a", namespace="beta", listener="shared-l", port=2002, created=stamp),
        make_vs("a", namespace="alpha", listener="shared-l", port=2003, created=stamp),
    )
    cache.watch(INGRESS, Counter())
    assert set(cache.conflicts) == {("alpha", "b"), ("beta", "a")}
    assert all(message.endswith("VirtualService alpha/a") for message in cache.conflicts.values())


def test_conflict_age_compares_instants_and_a_missing_timestamp_is_youngest() -> None:
    cache = loaded(
        make_vs("a", listener="shared-l", port=2001),  # no timestamp: after every one that has one
        make_vs("b", listener="shared-l", port=2002, created="2026-01-01T00:30:00Z"),
        make_vs("c", listener="shared-l", port=2003, created="2026-01-01T01:00:00+02:00"),  # the oldest instant
    )
    cache.watch(INGRESS, Counter())
    assert set(cache.conflicts) == {("default", "a"), ("default", "b")}
    assert all(message.endswith("VirtualService default/c") for message in cache.conflicts.values())


def test_conflict_only_among_services_of_one_proxy() -> None:
    """Two services with the same names but disjoint selectors never meet on a proxy."""
    cache = loaded(
        make_vs("a", listener="shared-l", selector={"app": "one"}),
        make_vs("b", listener="shared-l", selector={"app": "two"}),
    )
    cache.watch({"app": "one"}, Counter())
    cache.watch({"app": "two"}, Counter())
    assert cache.conflicts == {}


def test_loser_takes_over_when_winner_is_deleted() -> None:
    cache = loaded(
        make_vs("old", listener="shared-l", created="2024-01-01T00:00:00Z"),
        make_vs("new", listener="shared-l", port=2001, created="2024-02-01T00:00:00Z"),
    )
    watch = cache.watch(INGRESS, Counter())
    assert names(watch.snapshot, CLUSTER) == {"old-c"}
    cache.delete(("default", "old"))
    cache.commit()
    assert cache.conflicts == {}
    assert names(watch.snapshot, CLUSTER) == {"new-c"}


def conflicting_pair() -> SnapshotCache:
    cache = loaded(
        make_vs("old", listener="shared-l", created="2024-01-01T00:00:00Z"),
        make_vs("new", listener="shared-l", port=2001, created="2024-02-01T00:00:00Z"),
    )
    cache.watch(INGRESS, Counter())
    assert set(cache.conflicts) == {("default", "new")}
    return cache


def test_conflict_cleared_when_loser_is_deleted() -> None:
    cache = conflicting_pair()
    cache.delete(("default", "new"))
    cache.commit()
    assert cache.conflicts == {}


def test_conflict_cleared_when_loser_stops_selecting_the_proxy() -> None:
    cache = conflicting_pair()
    cache.upsert(make_vs("new", listener="shared-l", port=2001, created="2024-02-01T00:00:00Z", selector={"app": "x"}))
    cache.commit()
    assert cache.conflicts == {}


def test_conflict_cleared_when_loser_is_renamed() -> None:
    cache = conflicting_pair()
    cache.upsert(make_vs("new", listener="own-l", port=2001, created="2024-02-01T00:00:00Z"))
    cache.commit()
    assert cache.conflicts == {}
    assert names(cache.snapshot_for(INGRESS), LISTENER) == {"shared-l", "own-l"}


# -- snapshot consistency -------------------------------------------------------------------


def eds_cluster(name: str) -> Resource:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    return Resource.of(name, cluster, requires=[(ENDPOINT, name)])


def test_snapshot_build_rejects_eds_cluster_without_load_assignment() -> None:
    with pytest.raises(ValueError, match="'c1' needs EDS resource 'c1'"):
        Snapshot.build({CLUSTER: [eds_cluster("c1")]})


def test_snapshot_build_rejects_listener_without_cluster() -> None:
    listener = Resource.of("l1", listener_pb2.Listener(name="l1"), requires=[(CLUSTER, "c1")])
    with pytest.raises(ValueError, match="'l1' needs CDS resource 'c1'"):
        Snapshot.build({LISTENER: [listener]})


def test_snapshot_build_accepts_complete_references() -> None:
    assignment = Resource.of("c1", endpoint_pb2.ClusterLoadAssignment(cluster_name="c1"))
    listener = Resource.of("l1", listener_pb2.Listener(name="l1"), requires=[(CLUSTER, "c1")])
    snapshot = Snapshot.build({CLUSTER: [eds_cluster("c1")], ENDPOINT: [assignment], LISTENER: [listener]})
    assert snapshot.select(ENDPOINT, frozenset({"c1", "missing"})).resources == (assignment,)
    assert snapshot.select(ENDPOINT, frozenset({"c1"})).version == snapshot.versions[ENDPOINT]


def test_resource_digest_is_content_hash() -> None:
    one = Resource.of("c1", endpoint_pb2.ClusterLoadAssignment(cluster_name="c1"))
    two = Resource.of("c1", endpoint_pb2.ClusterLoadAssignment(cluster_name="c1"))
    other = Resource.of("c1", endpoint_pb2.ClusterLoadAssignment(cluster_name="c2"))
    assert one.digest == two.digest != other.digest
    assert one.type_url == ENDPOINT


# -- watches --------------------------------------------------------------------------------


def test_watch_notified_on_change_not_on_unrelated_change() -> None:
    cache = loaded(make_vs("calls"))
    counter = Counter()
    watch: Watch = cache.watch(INGRESS, counter)
    registered = counter.calls
    first = watch.snapshot

    cache.upsert(make_vs("unrelated", selector={"app": "elsewhere"}))
    cache.commit()
    assert counter.calls == registered and watch.snapshot is first

    cache.upsert(make_vs("calls"))  # same content
    cache.commit()
    assert counter.calls == registered and watch.snapshot is first

    cache.upsert(make_vs("calls", port=2500))
    cache.commit()
    assert counter.calls == registered + 1 and watch.snapshot is not first

    cache.delete(("default", "calls"))
    cache.commit()
    assert counter.calls == registered + 2
    assert names(watch.snapshot, LISTENER) == set()


def test_cancelled_watch_is_not_notified() -> None:
    cache = loaded(make_vs("calls"))
    counter = Counter()
    watch = cache.watch(INGRESS, counter)
    cache.cancel(watch)
    assert cache.group_count() == 0
    calls = counter.calls
    cache.upsert(make_vs("calls", port=2500))
    cache.commit()
    assert counter.calls == calls


def test_proxies_that_come_and_go_leave_no_group_or_snapshot_behind() -> None:
    """Each proxy with labels of its own makes a group; when the last watch of a group goes, so does its
    snapshot, unless another group still shares it (no commit needed to let go of it)."""
    cache = loaded(make_vs("calls"), make_vs("edge", selector={"app": "edge"}, port=3000))
    staying = cache.watch({"app": "edge"}, Counter())
    for index in range(50):
        ingress = cache.watch({**INGRESS, "pod": f"ingress-{index}"}, Counter())
        edge = cache.watch({"app": "edge", "pod": f"edge-{index}"}, Counter())
        assert edge.snapshot is staying.snapshot and names(ingress.snapshot, LISTENER) == {"calls-l"}
        cache.cancel(ingress)
        cache.cancel(edge)
    assert cache.counts() == {"virtual_services": 2, "groups": 1, "watches": 1, "snapshots": 1}
    cache.cancel(staying)
    assert cache.counts() == {"virtual_services": 2, "groups": 0, "watches": 0, "snapshots": 0}


def test_superseded_versions_and_their_encoded_responses_are_not_kept() -> None:
    """Every edit makes a new snapshot; once no group holds the old one, nothing keeps its selections
    (and the encoded responses made for them) alive: memory does not grow with the number of edits."""
    cache = loaded(make_vs("calls"))
    watch = cache.watch(INGRESS, Counter())
    first = watch.snapshot.select(LISTENER)
    assert first.sotw_response  # encoded, as when a stream is sent it
    superseded = [weakref.ref(first)]
    del first
    for port in range(2100, 2110):
        cache.upsert(make_vs("calls", port=port))
        cache.commit()
        selection = watch.snapshot.select(LISTENER)
        assert selection.sotw_response
        superseded.append(weakref.ref(selection))
    del selection
    gc.collect()
    assert [ref() is None for ref in superseded] == [True] * 10 + [False]  # only the current one lives


def test_relabel_moves_the_proxy_to_its_new_group() -> None:
    cache = loaded(make_vs("calls"), make_vs("edge", selector={"app": "edge"}, port=3000))
    counter = Counter()
    watch = cache.watch(INGRESS, counter)
    calls = counter.calls
    cache.relabel(watch, {"app": "edge"})
    assert counter.calls == calls + 1
    assert names(watch.snapshot, LISTENER) == {"edge-l"}
    assert cache.group_count() == 1


def test_deepcopy_of_document_does_not_matter() -> None:
    """Upserting an equal VirtualService parsed from a copied document is a no-op."""
    document = vs_doc("calls")
    cache = loaded(parse_virtual_service(document))
    translations = cache.translations
    cache.upsert(parse_virtual_service(copy.deepcopy(document)))
    assert cache.commit() == 0
    assert cache.translations == translations


# -- lineage: which VirtualServices differ between two snapshots -----------------------------


def test_changed_between_names_what_commits_changed_in_either_direction_and_matches_a_full_compare() -> None:
    cache = SnapshotCache()
    for index in range(20):
        cache.upsert(parse_virtual_service(vs_doc(f"vs-{index}", port=3000 + index)))
    cache.commit()
    watch = cache.watch(INGRESS, lambda: None)
    first = watch.snapshot
    cache.upsert(parse_virtual_service(vs_doc("vs-3", port=4003)))
    cache.commit()
    second = watch.snapshot
    cache.delete(("default", "vs-5"))
    cache.upsert(parse_virtual_service(vs_doc("new", port=4100)))
    cache.commit()
    third = watch.snapshot
    assert first is not None and second is not None and third is not None

    def full_compare(a: Snapshot, b: Snapshot) -> set:
        return {key for key in {*a.contents.keys(), *b.contents.keys()} if a.contents.get(key) != b.contents.get(key)}

    expected = {("default", "vs-3"), ("default", "vs-5"), ("default", "new")}
    assert lineage.changed_between(first, third) == lineage.changed_between(third, first) == expected
    assert lineage.changed_between(second, third) == full_compare(second, third)
    assert lineage.changed_between(EMPTY, first) == full_compare(EMPTY, first)  # no common ancestor: compared


# -- what one proxy can be sent ------------------------------------------------------------------------


def aged(index: int, **kwargs: Any) -> VirtualService:
    """VirtualService vs-<index>, created <index> minutes after midnight: a higher index is newer."""
    return make_vs(f"vs-{index}", port=3000 + index, created=f"2024-01-01T00:{index:02d}:00Z", **kwargs)


def test_the_newest_virtualservices_that_would_make_a_response_too_big_are_left_out_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A response over gRPC's send limit failed on every reconnect: the proxy received nothing at all."""
    sizes = loaded(aged(0)).snapshot_for(INGRESS).sizes
    limit = int(sizes[LISTENER] * 2.5)  # room for two VirtualServices' listeners (clusters are smaller)
    cache = SnapshotCache(max_response_bytes=limit)
    for index in (3, 1, 0, 2):
        cache.upsert(aged(index))
    cache.commit()
    watch = cache.watch(INGRESS, Counter())

    assert watch.snapshot is not None and names(watch.snapshot, LISTENER) == {"vs-0-l", "vs-1-l"}  # oldest win
    assert set(cache.conflicts) == {("default", "vs-2"), ("default", "vs-3")}
    reason = cache.conflicts[("default", "vs-2")]
    assert "LDS response to proxies labelled app=envoy-ingress" in reason and "limit" in reason
    assert all(size <= limit for size in watch.snapshot.sizes.values())
    assert sum("is sent" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 2  # once each

    cache.delete(("default", "vs-0"))  # room again: the oldest left out comes in
    cache.commit()
    assert names(watch.snapshot, LISTENER) == {"vs-1-l", "vs-2-l"}
    assert set(cache.conflicts) == {("default", "vs-3")}


def test_a_patch_that_would_make_a_response_too_big_is_decided_by_age() -> None:
    """An edit making an old VirtualService bigger leaves out the newest, not the edited one."""
    sizes = loaded(aged(0)).snapshot_for(INGRESS).sizes
    cache = SnapshotCache(max_response_bytes=int(sizes[LISTENER] * 2.5))
    cache.upsert(aged(0))
    cache.upsert(aged(1))
    cache.commit()
    watch = cache.watch(INGRESS, Counter())
    bigger = vs_doc("vs-0", port=3000, created="2024-01-01T00:00:00Z")
    bigger["spec"]["listeners"].append(vs_doc("x", port=4000)["spec"]["listeners"][0])
    cache.upsert(parse_virtual_service(bigger))
    cache.commit()
    assert watch.snapshot is not None and names(watch.snapshot, LISTENER) == {"vs-0-l", "x-l"}
    assert set(cache.conflicts) == {("default", "vs-1")}


def test_response_sizes_are_tracked_through_patches_as_a_build_computes_them() -> None:
    cache = SnapshotCache()
    watch = cache.watch(INGRESS, Counter())
    for index in range(5):
        cache.upsert(aged(index, discovery="eds" if index % 2 else "strictdns"))
        cache.commit()
    cache.delete(("default", "vs-2"))
    cache.upsert(aged(3, address="10.0.0.9", discovery="eds"))
    cache.commit()
    assert watch.snapshot is not None and watch.snapshot.number > 0  # patched, not rebuilt
    rebuilt = Snapshot.build({t: list(watch.snapshot.resources[t].values()) for t in (CLUSTER, ENDPOINT, LISTENER)})
    assert watch.snapshot.sizes == rebuilt.sizes
    for type_url, of_type in rebuilt.resources.items():  # exactly a delta response's resources, encoded
        resources = [discovery_pb2.Resource(name=r.name, version=r.digest, resource=r.packed) for r in of_type.values()]
        assert rebuilt.sizes[type_url] == discovery_pb2.DeltaDiscoveryResponse(resources=resources).ByteSize()


def test_groups_whose_member_hashes_collide_do_not_share_a_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signatures are sums of 128-bit hashes, and colliding sets can be constructed: a signature hit is
    confirmed by comparing the members before a snapshot is shared (here every member weighs the same)."""
    from xds_operator.xds.cache import Translated

    monkeypatch.setattr(Translated, "weight", property(lambda self: 1))
    cache = SnapshotCache()
    cache.upsert(make_vs("a", namespace="team-a", selector={"team": "a"}, port=2000))
    cache.upsert(make_vs("b", namespace="team-b", selector={"team": "b"}, port=2001))
    cache.commit()
    team_a = cache.watch({"team": "a"}, lambda: None)
    team_b = cache.watch({"team": "b"}, lambda: None)  # built from scratch: same signature as team a's
    assert team_a.snapshot is not None and team_b.snapshot is not None
    assert dict(team_a.snapshot.contents).keys() == {("team-a", "a")}
    assert dict(team_b.snapshot.contents).keys() == {("team-b", "b")}
    assert set(team_b.snapshot.resources[LISTENER]) == {"b-l"}

    # Patched in place: an edit that lands team b on team a's signature again.
    cache.upsert(make_vs("b", namespace="team-b", selector={"team": "b"}, port=2002))
    cache.commit()
    assert dict(team_b.snapshot.contents).keys() == {("team-b", "b")}
    assert set(team_b.snapshot.resources[LISTENER]) == {"b-l"}
    assert set(team_a.snapshot.resources[LISTENER]) == {"a-l"}
