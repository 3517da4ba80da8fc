"""The fake API server's garbage collector for ownerReferences, driven by the real `kubernetes` client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support.fake_apiserver import FakeApiServer

GROUP, VERSION, PLURAL = "servicemesh.l7mp.io", "v1", "virtualservices"
NS = "default"


@pytest.fixture
def core(server: FakeApiServer) -> Iterator[client.CoreV1Api]:
    with server.api_client() as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def custom(server: FakeApiServer) -> Iterator[client.CustomObjectsApi]:
    with server.api_client() as api:
        yield client.CustomObjectsApi(api)


def make_pod(core: client.CoreV1Api, name: str, finalizers: list[str] | None = None) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "finalizers": finalizers or []}}
    body["spec"] = {"containers": [{"name": "c", "image": "busybox"}]}
    pod = core.create_namespaced_pod(NS, body)
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod.metadata.uid}


def make_vs(custom: client.CustomObjectsApi, name: str, *owners: dict[str, Any], **meta: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name, "ownerReferences": list(owners), **meta},
        "spec": {"selector": {"app": "envoy"}, "listeners": []},
    }
    created: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    return created


def gone(server: FakeApiServer, plural: str, name: str) -> bool:
    return server.wait_for(lambda s: s.get(plural, NS, name) is None, timeout=15)


def test_deleting_the_owner_deletes_its_dependents_in_the_background(server, core, custom) -> None:
    owner = make_pod(core, "worker-1")
    make_vs(custom, "session-a", owner)
    make_vs(custom, "session-b", owner)
    make_vs(custom, "unowned")
    core.delete_namespaced_pod("worker-1", NS)  # the client's default: no policy, i.e. Background
    assert gone(server, PLURAL, "session-a") and gone(server, PLURAL, "session-b")
    assert server.get(PLURAL, NS, "unowned") is not None


def test_a_reference_to_an_owner_that_is_gone_is_collected(server, core, custom) -> None:
    owner = make_pod(core, "worker-1")
    core.delete_namespaced_pod("worker-1", NS)
    make_pod(core, "worker-1")  # the same name again, another uid: not the owner
    make_vs(custom, "session-a", owner)
    assert gone(server, PLURAL, "session-a")
    assert server.get("pods", NS, "worker-1") is not None


def test_a_dependent_with_another_owner_loses_only_the_reference(server, core, custom) -> None:
    first, second = make_pod(core, "worker-1"), make_pod(core, "worker-2")
    make_vs(custom, "shared", first, second)
    core.delete_namespaced_pod("worker-1", NS)
    assert server.wait_for(lambda s: [r["name"] for r in s.get(PLURAL, NS, "shared")["metadata"]["ownerReferences"]]
                           == ["worker-2"])  # fmt: skip
    server.delete("pods", NS, "worker-2")  # direct store access collects too
    assert gone(server, PLURAL, "shared")


def test_orphan_propagation_keeps_the_dependents_without_the_reference(server, core, custom) -> None:
    owner = make_pod(core, "worker-1")
    make_vs(custom, "session-a", owner)
    core.delete_namespaced_pod("worker-1", NS, propagation_policy="Orphan")
    assert gone(server, "pods", "worker-1")
    vs = server.get(PLURAL, NS, "session-a")
    assert vs is not None and "ownerReferences" not in vs["metadata"]


def test_legacy_orphan_dependents_in_the_body(server, core, custom) -> None:
    owner = make_pod(core, "worker-1")
    make_vs(custom, "session-a", owner)
    core.delete_namespaced_pod("worker-1", NS, body=client.V1DeleteOptions(orphan_dependents=True))
    assert gone(server, "pods", "worker-1")
    assert "ownerReferences" not in server.get(PLURAL, NS, "session-a")["metadata"]


def test_foreground_waits_for_blocking_dependents(server, core, custom) -> None:
    owner = make_pod(core, "worker-1")
    make_vs(custom, "blocking", {**owner, "blockOwnerDeletion": True}, finalizers=["example.com/hold"])
    make_vs(custom, "not-blocking", owner)
    core.delete_namespaced_pod("worker-1", NS, propagation_policy="Foreground")
    assert gone(server, PLURAL, "not-blocking")
    # The blocking dependent is terminating (its own finalizer holds it), and the owner waits for it.
    assert server.wait_for(lambda s: bool(s.get(PLURAL, NS, "blocking")["metadata"].get("deletionTimestamp")))
    pod = server.get("pods", NS, "worker-1")
    assert pod is not None and pod["metadata"]["finalizers"] == ["foregroundDeletion"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "blocking", {"metadata": {"finalizers": None}})
    assert gone(server, PLURAL, "blocking") and gone(server, "pods", "worker-1")


def test_foreground_without_dependents_deletes_the_owner(server, core) -> None:
    make_pod(core, "worker-1")
    core.delete_namespaced_pod("worker-1", NS, propagation_policy="Foreground")
    assert gone(server, "pods", "worker-1")


def test_an_unknown_policy_is_refused(core) -> None:
    make_pod(core, "worker-1")
    with pytest.raises(client.ApiException) as refused:
        core.delete_namespaced_pod("worker-1", NS, propagation_policy="Later")
    assert refused.value.status == 422 and "propagationPolicy" in refused.value.body


def test_a_reference_to_a_kind_not_served_counts_as_alive(server, custom) -> None:
    make_vs(custom, "owned-by-a-deployment", {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u1"})
    # The collector works in order: once the dangling one (created after) is gone, the first was looked at.
    core_ref = {"apiVersion": "v1", "kind": "Pod", "name": "absent", "uid": "u2"}
    make_vs(custom, "dangling", core_ref)
    assert gone(server, PLURAL, "dangling")
    assert server.get(PLURAL, NS, "owned-by-a-deployment") is not None
