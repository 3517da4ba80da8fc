"""Pure parts of the Kubernetes side: the pod index, status conditions, per-VirtualService progress."""

from __future__ import annotations

import random

from tests.support.status import conditions, pod
from xds_operator.api import parse_virtual_service
from xds_operator.api.model import NAMESPACE_LABEL
from xds_operator.sources.kubernetes.pods import PodIndex, SelectorIndex
from xds_operator.status.conditions import Observed, status_of
from xds_operator.status.progress import Progress, summarize
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import ProxyProgress

# -- pod index -----------------------------------------------------------------------------


def test_selector_resolves_to_ready_non_terminating_pods_with_an_ip_in_the_namespace():
    index = PodIndex()
    index.upsert(pod("w1", {"app": "worker"}, "10.0.0.1"))
    index.upsert(pod("w2", {"app": "worker"}, "10.0.0.2", ready=False))
    index.upsert(pod("w3", {"app": "worker"}, "10.0.0.3", terminating=True))
    index.upsert(pod("w4", {"app": "worker"}, ""))
    index.upsert(pod("w5", {"app": "worker"}, "10.0.0.5", namespace="other"))
    index.upsert(pod("w6", {"app": "worker", "tier": "x"}, "10.0.0.6"))
    index.upsert(pod("db", {"app": "db"}, "10.0.0.7"))
    assert list(index.ready_ips("media", {"app": "worker"})) == ["10.0.0.1", "10.0.0.6"]
    assert list(index.ready_ips("media", {"app": "worker", "tier": "x"})) == ["10.0.0.6"]
    assert list(index.ready_ips("other", {"app": "worker"})) == ["10.0.0.5"]


def test_resolved_selectors_are_recomputed_after_a_pod_change():
    index = PodIndex()
    index.upsert(pod("w1", {"app": "worker"}, "10.0.0.1"))
    assert list(index.ready_ips("media", {"app": "worker"})) == ["10.0.0.1"]
    change = index.upsert(pod("w2", {"app": "worker"}, "10.0.0.2"))
    assert change is not None and change.endpoints_changed
    assert list(index.ready_ips("media", {"app": "worker"})) == ["10.0.0.1", "10.0.0.2"]
    change = index.upsert(pod("w1", {"app": "worker"}, "10.0.0.1", ready=False))
    assert change is not None and change.endpoints_changed and not change.node_ids  # labels did not change
    assert list(index.ready_ips("media", {"app": "worker"})) == ["10.0.0.2"]
    index.delete(pod("w2", {}))
    assert list(index.ready_ips("media", {"app": "worker"})) == []


def test_selector_answers_through_random_pod_churn_equal_a_scan_of_every_pod():
    """The label index against the definition: every serving pod whose labels contain the selector."""
    rng = random.Random(3)
    index = PodIndex()
    pods: dict[str, dict] = {}
    selectors = [{}, {"app": "worker"}, {"app": "worker", "call": "c1"}, {"call": "c2"}, {"app": "other"}]
    for _ in range(400):
        name = f"w-{rng.randint(0, 30)}"
        if name in pods and rng.random() < 0.3:
            index.delete(pods.pop(name))
        else:
            labels = {"app": rng.choice(["worker", "other"]), "call": f"c{rng.randint(0, 3)}"}
            ip = f"10.0.0.{rng.randint(1, 250)}"
            pods[name] = pod(name, labels, ip=ip, ready=rng.random() < 0.8, terminating=rng.random() < 0.1)
            index.upsert(pods[name])
        for selector in selectors:
            expected = sorted(
                {
                    obj["status"]["podIP"]
                    for obj in pods.values()
                    if obj["status"]["conditions"][0]["status"] == "True"
                    and not obj["metadata"].get("deletionTimestamp")
                    and all(obj["metadata"]["labels"].get(k) == v for k, v in selector.items())
                }
            )
            assert list(index.ready_ips("media", selector)) == expected, selector


def test_an_unchanged_pod_is_no_change():
    index = PodIndex()
    index.upsert(pod("w1", {"app": "worker"}))
    assert index.upsert(pod("w1", {"app": "worker"})) is None


def test_proxy_labels_by_uid_or_namespace_and_name():
    index = PodIndex()
    assert index.labels_for("media/envoy-0") is None
    change = index.upsert(pod("envoy-0", {"app": "envoy-ingress"}, uid="1234"))
    assert change is not None and change.node_ids == {"1234", "media/envoy-0"}
    # The pod's labels, and its namespace (a VirtualService selects proxies in its own namespace only).
    assert index.labels_for("media/envoy-0") == {"app": "envoy-ingress", NAMESPACE_LABEL: "media"}
    assert index.labels_for("1234") == {"app": "envoy-ingress", NAMESPACE_LABEL: "media"}
    index.delete(pod("envoy-0", {}))
    assert index.labels_for("1234") is None and index.labels_for("media/envoy-0") is None


def test_relist_removes_pods_no_longer_listed_only_in_its_namespace():
    index = PodIndex()
    index.upsert(pod("a", {"app": "w"}, "10.0.0.1"))
    index.upsert(pod("b", {"app": "w"}, "10.0.0.2"))
    index.upsert(pod("c", {"app": "w"}, "10.0.0.3", namespace="other"))
    changes = index.replace([pod("a", {"app": "w"}, "10.0.0.1")], namespace="media")
    assert [c.node_ids for c in changes] == [frozenset({"uid-b", "media/b"})]
    assert len(index) == 2
    assert list(index.ready_ips("other", {"app": "w"})) == ["10.0.0.3"]
    index.replace([])
    assert len(index) == 0


# -- status conditions ---------------------------------------------------------------------


def test_valid_and_applied_everywhere_is_accepted_and_programmed():
    status = status_of(Observed(3, serving_generation=3, progress=Progress(2, 2)), None, "T1")
    assert status["observedGeneration"] == 3
    c = conditions(status)
    assert (c["Accepted"]["status"], c["Programmed"]["status"], c["Conflicted"]["status"]) == ("True", "True", "False")
    assert c["Programmed"]["message"] == "2 of 2 selected proxies run it"
    assert all(x["observedGeneration"] == 3 and x["lastTransitionTime"] == "T1" for x in c.values())


def test_invalid_spec_is_not_accepted_and_says_why():
    error = "spec.listeners[0].udp.port: must be at most 65535"
    c = conditions(status_of(Observed(1, rejected=error), None, "T1"))
    assert c["Accepted"]["status"] == "False" and c["Accepted"]["message"] == error
    assert c["Programmed"]["status"] == "False" and c["Programmed"]["reason"] == "Invalid"


def test_invalid_new_generation_keeps_serving_the_last_good_one():
    c = conditions(status_of(Observed(2, rejected="bad", serving_generation=1, progress=Progress(1, 1)), None, "T"))
    assert c["Accepted"]["status"] == "False" and "still serving generation 1" in c["Accepted"]["message"]
    assert c["Programmed"]["status"] == "True"


def test_programmed_pending_nacked_no_proxies_and_conflicted():
    pending = conditions(status_of(Observed(1, serving_generation=1, progress=Progress(3, 1)), None, "T"))
    assert (pending["Programmed"]["status"], pending["Programmed"]["reason"]) == ("False", "Pending")
    assert pending["Programmed"]["message"] == "1 of 3 selected proxies run it"
    nacked = conditions(
        status_of(
            Observed(1, serving_generation=1, progress=Progress(2, 1, [("media/envoy-0", "LDS: bind")])), None, ""
        )
    )
    assert nacked["Programmed"]["reason"] == "Rejected"
    assert "media/envoy-0" in nacked["Programmed"]["message"] and "LDS: bind" in nacked["Programmed"]["message"]
    lonely = conditions(status_of(Observed(1, serving_generation=1, progress=Progress()), None, "T"))
    assert lonely["Programmed"]["reason"] == "NoProxies"
    conflicted = conditions(
        status_of(Observed(1, serving_generation=1, conflict="port 2000 is taken", progress=Progress(1, 0)), None, "T")
    )
    assert conflicted["Conflicted"]["status"] == "True" and conflicted["Conflicted"]["message"] == "port 2000 is taken"
    assert conflicted["Programmed"]["reason"] == "Conflicted"


def test_transition_time_is_kept_while_a_condition_holds_and_status_is_stable():
    first = status_of(Observed(1, serving_generation=1, progress=Progress(1, 0)), None, "T1")
    again = status_of(Observed(1, serving_generation=1, progress=Progress(1, 0)), first, "T2")
    assert again == first  # an unchanged status is equal, so it is not written again
    done = status_of(Observed(1, serving_generation=1, progress=Progress(1, 1)), again, "T3")
    c = conditions(done)
    assert c["Programmed"]["lastTransitionTime"] == "T3" and c["Accepted"]["lastTransitionTime"] == "T1"


def test_long_messages_are_cut():
    c = conditions(status_of(Observed(1, rejected="x" * 5000), None, "T"))
    assert len(c["Accepted"]["message"]) <= 1024


# -- progress ------------------------------------------------------------------------------


def vs(name, selector, port, created="2026-01-01T00:00:00Z"):
    return parse_virtual_service(
        {
            "apiVersion": "servicemesh.l7mp.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "media", "creationTimestamp": created},
            "spec": {
                "selector": selector,
                "listeners": [
                    {
                        "name": f"{name}-l",
                        "udp": {
                            "port": port,
                            "cluster": {
                                "name": f"{name}-c",
                                "endpoints": [{"name": "w", "host": {"address": "10.0.0.1"}, "port": 9000}],
                            },
                        },
                    }
                ],
            },
        }
    )


def test_progress_counts_selected_and_applied_proxies_and_blames_nacks_on_what_changed():
    cache = SnapshotCache()
    a, b = vs("a", {"app": "in"}, 2000), vs("b", {"app": "in", "zone": "z1"}, 2001)
    cache.upsert(a)
    cache.commit()
    before = cache.snapshot_for({"app": "in", "zone": "z1"})  # holds a only
    cache.upsert(b)
    cache.commit()
    now_z1 = cache.snapshot_for({"app": "in", "zone": "z1"})
    now_plain = cache.snapshot_for({"app": "in"})
    proxies = [
        ProxyProgress("p1", {"app": "in", "zone": "z1"}, now_z1, now_z1, None),  # runs both
        ProxyProgress("p2", {"app": "in", "zone": "z1"}, now_z1, before, "LDS: cannot bind"),  # rejected b
        ProxyProgress("p3", {"app": "in"}, now_plain, now_plain, None),  # not selected by b
        ProxyProgress("p4", None, None, None, None),  # pod not known yet
        ProxyProgress("p5", {"app": "other"}, None, None, None),
    ]
    result = summarize(proxies, cache.virtual_services())
    assert (result[a.key].selected, result[a.key].applied, result[a.key].rejections) == (3, 3, [])
    assert (result[b.key].selected, result[b.key].applied) == (2, 1)
    assert result[b.key].rejections == [("p2", "LDS: cannot bind")]


def test_progress_counts_alike_proxies_together():
    cache = SnapshotCache()
    a = vs("a", {"app": "in"}, 2000)
    cache.upsert(a)
    cache.commit()
    snap = cache.snapshot_for({"app": "in"})
    proxies = [ProxyProgress(f"p{i}", {"app": "in"}, snap, snap if i % 2 else None, None) for i in range(1000)]
    result = summarize(proxies, cache.virtual_services())
    assert (result[a.key].selected, result[a.key].applied) == (1000, 500)


def test_a_selector_index_finds_exactly_the_selectors_a_pods_labels_match():
    index: SelectorIndex[str] = SelectorIndex()
    for name, selector in {
        "all": {},
        "workers": {"app": "worker"},
        "call-1": {"app": "worker", "session": "1"},
        "call-2": {"app": "worker", "session": "2"},
        "other": {"app": "other"},
    }.items():
        index.add("media", frozenset(selector.items()), name)
    assert index.matching("media", {"app": "worker", "session": "1", "x": "y"}) == {"all", "workers", "call-1"}
    assert index.matching("elsewhere", {"app": "worker"}) == set()
    assert index.discard("media", frozenset({("app", "worker"), ("session", "1")}), "call-1") is True
    assert index.matching("media", {"app": "worker", "session": "1"}) == {"all", "workers"}


def test_a_pod_change_drops_only_the_answers_of_selectors_it_matches():
    index = PodIndex()
    index.upsert(pod("worker-1", {"session": "1"}, "10.1.0.1"))
    index.upsert(pod("worker-2", {"session": "2"}, "10.1.0.2"))
    first, second = index.ready_ips("media", {"session": "1"}), index.ready_ips("media", {"session": "2"})
    change = index.upsert(pod("worker-1", {"session": "1"}, "10.1.0.1", ready=False))
    assert change is not None and change.endpoint_labels == ({"session": "1"},)
    assert index.ready_ips("media", {"session": "1"}) == () and first == ("10.1.0.1",)
    assert index.ready_ips("media", {"session": "2"}) is second  # still the memoized answer
