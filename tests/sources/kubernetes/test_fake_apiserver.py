"""The fake API server, driven by the real `kubernetes` client (and raw HTTP where the client hides details)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

from tests.support.fake_apiserver import FakeApiServer

GROUP, VERSION, PLURAL = "servicemesh.l7mp.io", "v1", "virtualservices"
NS = "default"


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def pod(name: str, labels: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    if status:
        body["status"] = status
    return body


def vs(name: str, port: int = 2000, **extra: Any) -> dict[str, Any]:
    spec = {"selector": {"app": "envoy"}, "listeners": [{"name": "l", "udp": {"port": port}}]}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": spec,
        **extra,
    }


def raw(server: FakeApiServer, method: str, path: str, body: Any = None, **headers: str) -> urllib3.BaseHTTPResponse:
    """A plain HTTP request, for what the client's typed methods hide."""
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json", **headers}
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return urllib3.request(method, server.url + path, body=data, headers=headers, timeout=5, retries=False)


class WatchThread:
    """Runs `Watch().stream(...)` in a thread, collecting (type, name) until `count` events arrive."""

    def __init__(self, func: Callable[..., Any], *args: Any, count: int, **kwargs: Any) -> None:
        self.watch = watch.Watch()
        self.events: list[tuple[str, str]] = []
        self.raw: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._count = count
        self._received = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
        try:
            for event in self.watch.stream(func, *args, **kwargs):
                obj = event["raw_object"]
                with self._received:
                    self.events.append((event["type"], obj.get("metadata", {}).get("name", "")))
                    self.raw.append(obj)
                    self._received.notify_all()
                if len(self.events) >= self._count:
                    self.watch.stop()
        except BaseException as error:  # noqa: BLE001 -- recorded for the test to assert on
            self.error = error

    def wait_events(self, n: int, timeout: float = 15.0) -> None:
        with self._received:
            assert self._received.wait_for(lambda: len(self.events) >= n, timeout)

    def join(self, timeout: float = 15.0) -> WatchThread:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "watch stream did not end"
        return self


def wait_watches(server: FakeApiServer, n: int = 1) -> None:
    assert server.wait_for(lambda s: s.open_watches() == n, timeout=15)


# ---------------------------------------------------------------------------------------------
# CRUD and metadata
# ---------------------------------------------------------------------------------------------


def test_pod_crud_through_core_api(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod(NS, pod("a", {"app": "w"}))
    assert core.read_namespaced_pod("a", NS).metadata.uid == created.metadata.uid
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["a"]
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces().items] == ["a"]

    patched = core.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"x": "1"}}})  # strategic merge
    assert patched.metadata.labels == {"app": "w", "x": "1"}
    patched = core.patch_namespaced_pod("a", NS, [{"op": "remove", "path": "/metadata/labels/x"}])  # JSON patch
    assert patched.metadata.labels == {"app": "w"}

    patched.metadata.labels["y"] = "2"
    replaced = core.replace_namespaced_pod("a", NS, patched)
    assert replaced.metadata.labels == {"app": "w", "y": "2"}

    status = core.patch_namespaced_pod_status("a", NS, {"status": {"podIP": "10.0.0.7", "phase": "Running"}})
    assert status.status.pod_ip == "10.0.0.7"

    deleted = core.delete_namespaced_pod("a", NS)
    assert deleted.metadata.name == "a"
    assert core.list_namespaced_pod(NS).items == []


def test_server_owned_metadata(core: client.CoreV1Api, server: FakeApiServer) -> None:
    first = core.create_namespaced_pod("media", pod("a"))
    second = core.create_namespaced_pod("media", pod("b"))
    raw_a = server.get("pods", "media", "a")
    assert raw_a is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw_a["metadata"]["creationTimestamp"])
    assert raw_a["metadata"]["namespace"] == "media"
    assert len(first.metadata.uid) == 36 and first.metadata.uid != second.metadata.uid
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert server.resource_version == second.metadata.resource_version
    listed = core.list_namespaced_pod("media")
    assert listed.metadata.resource_version == second.metadata.resource_version

    generated = core.create_namespaced_pod("media", {"metadata": {"generateName": "w-"}, "spec": pod("x")["spec"]})
    assert re.fullmatch(r"w-[a-z0-9]{5}", generated.metadata.name)


def test_errors_are_status_objects(core: client.CoreV1Api, server: FakeApiServer) -> None:
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod("nope", NS)
    assert missing.value.status == 404
    body = json.loads(missing.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert (body["reason"], body["code"], body["message"]) == ("NotFound", 404, 'pods "nope" not found')

    core.create_namespaced_pod(NS, pod("a"))
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_pod(NS, pod("a"))
    assert (exists.value.status, json.loads(exists.value.body)["reason"]) == (409, "AlreadyExists")

    with pytest.raises(ApiException) as wrong_ns:
        core.create_namespaced_pod(NS, {**pod("b"), "metadata": {"name": "b", "namespace": "other"}})
    assert wrong_ns.value.status == 400

    unknown = raw(server, "GET", "/apis/nope.io/v1/namespaces/default/things")
    assert unknown.status == 404 and unknown.json()["reason"] == "NotFound"
    not_object = raw(server, "POST", "/api/v1/namespaces/default/pods", [1, 2])
    assert not_object.status == 422 and not_object.json()["reason"] == "Invalid"
    assert raw(server, "POST", "/api/v1/namespaces/default/pods", b"{not json").status == 400
    unsupported = raw(server, "PATCH", "/api/v1/namespaces/default/pods/a", {}, **{"Content-Type": "text/plain"})
    assert unsupported.status == 415


def test_token_is_checked(server: FakeApiServer) -> None:
    response = raw(server, "GET", "/api/v1/pods", Authorization="Bearer wrong")
    assert response.status == 401 and response.json()["reason"] == "Unauthorized"


def test_kubeconfig_works_with_the_client_loader(server: FakeApiServer, tmp_path: Any) -> None:
    path = server.kubeconfig(tmp_path / "kubeconfig")
    with config.new_client_from_config(config_file=str(path)) as api_client:
        core = client.CoreV1Api(api_client)
        core.create_namespaced_pod(NS, pod("a"))
        assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["a"]
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == server.url


def test_events_core_and_events_k8s_io(api: client.ApiClient, server: FakeApiServer) -> None:
    involved = client.V1ObjectReference(kind="VirtualService", name="vs", namespace=NS)
    event = client.CoreV1Event(metadata=client.V1ObjectMeta(name="vs.1"), involved_object=involved, reason="Accepted")
    client.CoreV1Api(api).create_namespaced_event(NS, event)
    assert [e.reason for e in client.CoreV1Api(api).list_namespaced_event(NS).items] == ["Accepted"]

    new_event = client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="vs.2"), event_time=datetime.now(UTC), reason="Programmed"
    )
    client.EventsV1Api(api).create_namespaced_event(NS, new_event)
    assert [e["reason"] for e in server.list("events.events.k8s.io")] == ["Programmed"]


def test_finalizers_delay_deletion(custom: client.CustomObjectsApi, server: FakeApiServer) -> None:
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, vs("a", metadata={"name": "a", "finalizers": ["x"]})
    )
    terminating = custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    assert terminating["metadata"]["deletionTimestamp"]
    assert server.get(PLURAL, NS, "a") is not None
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"metadata": {"finalizers": None}})
    assert server.get(PLURAL, NS, "a") is None


def test_terminating_pod_stays_until_deleted(core: client.CoreV1Api, server: FakeApiServer) -> None:
    created = core.create_namespaced_pod(NS, pod("a"))
    server.put({**server.get("pods", NS, "a"), "metadata": {"name": "a", "deletionTimestamp": "2030-01-01T00:00:00Z"}})
    patched = core.patch_namespaced_pod_status("a", NS, {"status": {"phase": "Running"}})
    assert patched.metadata.deletion_timestamp is not None and patched.metadata.uid == created.metadata.uid


def test_delete_collection_and_dry_run(core: client.CoreV1Api, server: FakeApiServer) -> None:
    dry = core.create_namespaced_pod(NS, pod("dry"), dry_run="All")
    assert dry.metadata.uid and server.get("pods", NS, "dry") is None
    for name, app in [("a", "w"), ("b", "w"), ("c", "x")]:
        core.create_namespaced_pod(NS, pod(name, {"app": app}))
    core.delete_collection_namespaced_pod(NS, label_selector="app=w")
    assert [p["metadata"]["name"] for p in server.list("pods")] == ["c"]


def test_discovery_serves_the_dynamic_client(api: client.ApiClient) -> None:
    resources = dynamic.DynamicClient(api).resources
    virtualservices = resources.get(api_version=f"{GROUP}/{VERSION}", kind="VirtualService")
    virtualservices.create(body=vs("a"), namespace=NS)
    assert [o.metadata.name for o in virtualservices.get(namespace=NS).items] == ["a"]
    assert resources.get(api_version="v1", kind="Pod").get().kind == "PodList"


# ---------------------------------------------------------------------------------------------
# VirtualServices: generation and the status subresource
# ---------------------------------------------------------------------------------------------


def test_virtualservice_crud(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "media", PLURAL, vs("calls"))
    assert created["metadata"]["generation"] == 1 and created["kind"] == "VirtualService"
    got = custom.get_namespaced_custom_object(GROUP, VERSION, "media", PLURAL, "calls")
    assert got == created
    custom.create_namespaced_custom_object(GROUP, VERSION, "other", PLURAL, vs("calls"))
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in everywhere["items"]] == [
        ("media", "calls"),
        ("other", "calls"),
    ]
    assert everywhere["kind"] == "VirtualServiceList"
    assert len(custom.list_namespaced_custom_object(GROUP, VERSION, "media", PLURAL)["items"]) == 1
    custom.delete_namespaced_custom_object(GROUP, VERSION, "media", PLURAL, "calls")
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(GROUP, VERSION, "media", PLURAL, "calls")
    assert gone.value.status == 404
    assert json.loads(gone.value.body)["message"] == 'virtualservices.servicemesh.l7mp.io "calls" not found'


def test_generation_bumps_only_on_spec_change(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs("a"))
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", {"metadata": {"labels": {"x": "1"}}}
    )
    assert labelled["metadata"]["generation"] == 1
    changed = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"spec": {"selector": {"a": "b"}}})
    assert changed["metadata"]["generation"] == 2
    same = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"spec": {"selector": {"a": "b"}}})
    assert same["metadata"]["generation"] == 2
    assert same["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]  # a no-op is not a write


def test_status_subresource(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs("a", status={"ignored": True}))
    assert "status" not in created

    status = {"conditions": [{"type": "Accepted", "status": "True", "observedGeneration": 1}]}
    written = custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", {"status": status})
    assert written["status"] == status and written["metadata"]["generation"] == 1
    assert int(written["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    # Spec changes through /status are ignored; status changes through the main resource too.
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", {"spec": {"selector": {"x": "y"}}})
    main = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"status": {"conditions": []}})
    assert main["status"] == status and main["spec"] == created["spec"]

    main["status"] = {"conditions": []}
    replaced = custom.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", main)
    assert replaced["status"] == {"conditions": []} and replaced["metadata"]["generation"] == 1


def test_replace_needs_a_current_resource_version(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs("a"))
    newer = custom.replace_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", vs("a", port=3000, metadata=created["metadata"])
    )
    assert newer["spec"]["listeners"][0]["udp"]["port"] == 3000 and newer["metadata"]["generation"] == 2

    with pytest.raises(ApiException) as stale:
        custom.replace_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "a", vs("a", port=4000, metadata=created["metadata"])
        )
    assert stale.value.status == 409 and json.loads(stale.value.body)["reason"] == "Conflict"

    with pytest.raises(ApiException) as unconditional:  # like a CRD: updates must carry metadata.resourceVersion
        custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", vs("a", port=4000))
    assert unconditional.value.status == 422


# ---------------------------------------------------------------------------------------------
# List: selectors and pagination
# ---------------------------------------------------------------------------------------------


def test_list_selectors(core: client.CoreV1Api) -> None:
    for name, labels in [("a", {"app": "w", "tier": "1"}), ("b", {"app": "w"}), ("c", {"app": "x"})]:
        core.create_namespaced_pod(NS, pod(name, labels))

    def names(**kwargs: Any) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod(NS, **kwargs).items]

    assert names(label_selector="app=w") == ["a", "b"]
    assert names(label_selector="app=w,tier=1") == ["a"]
    assert names(label_selector="app!=w") == ["c"]
    assert names(label_selector="app in (x, y)") == ["c"]
    assert names(label_selector="!tier") == ["b", "c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.namespace!=default") == []
    with pytest.raises(ApiException) as bad:
        names(label_selector="app=(")
    assert bad.value.status == 400


def test_pagination_is_a_consistent_snapshot(core: client.CoreV1Api, server: FakeApiServer) -> None:
    for i in range(5):
        core.create_namespaced_pod(NS, pod(f"p{i}"))
    first = core.list_namespaced_pod(NS, limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue

    core.delete_namespaced_pod("p3", NS)  # not visible: later pages show the state of the first one
    core.create_namespaced_pod(NS, pod("p9"))
    second = core.list_namespaced_pod(NS, limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_pod(NS, limit=2, _continue=second.metadata._continue)
    assert [p.metadata.name for p in second.items + third.items] == ["p2", "p3", "p4"]
    assert third.metadata._continue is None
    assert second.metadata.resource_version == first.metadata.resource_version

    server.compact()
    with pytest.raises(ApiException) as expired:
        core.list_namespaced_pod(NS, limit=2, _continue=first.metadata._continue)
    assert expired.value.status == 410 and json.loads(expired.value.body)["reason"] == "Expired"


# ---------------------------------------------------------------------------------------------
# Watch
# ---------------------------------------------------------------------------------------------


def test_watch_from_list_rv_sees_changes_in_order(core: client.CoreV1Api, server: FakeApiServer) -> None:
    core.create_namespaced_pod(NS, pod("old"))
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    watcher = WatchThread(core.list_namespaced_pod, NS, count=3, resource_version=rv, timeout_seconds=10)
    wait_watches(server)

    core.create_namespaced_pod(NS, pod("a"))
    core.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("a", NS)

    assert watcher.join().error is None
    assert watcher.events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    rvs = [int(o["metadata"]["resourceVersion"]) for o in watcher.raw]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert server.wait_for(lambda s: s.open_watches() == 0)  # the client's stop() is noticed


def test_watch_replays_history_and_starts_with_current_state(custom: client.CustomObjectsApi) -> None:
    rv = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs("a"))
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs("b"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")

    replay = WatchThread(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, count=3, resource_version=rv)
    assert replay.join().events == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    current = WatchThread(custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, count=1)
    assert current.join().events == [("ADDED", "b")]


def test_watch_label_selector_follows_transitions(core: client.CoreV1Api, server: FakeApiServer) -> None:
    watcher = WatchThread(core.list_namespaced_pod, NS, count=3, label_selector="app=w", timeout_seconds=10)
    wait_watches(server)
    core.create_namespaced_pod(NS, pod("other", {"app": "x"}))
    core.create_namespaced_pod(NS, pod("a", {"app": "w"}))
    core.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"app": "x"}}})  # leaves the selector
    core.patch_namespaced_pod("other", NS, {"metadata": {"labels": {"app": "w"}}})  # enters it
    assert watcher.join().events == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "other")]


def test_bookmarks(core: client.CoreV1Api) -> None:
    with FakeApiServer(bookmark_interval=0.05) as server, server.api_client() as api_client:
        periodic = WatchThread(
            client.CoreV1Api(api_client).list_namespaced_pod,
            NS,
            count=2,
            allow_watch_bookmarks=True,
            timeout_seconds=10,
        )
        assert periodic.join().events == [("BOOKMARK", ""), ("BOOKMARK", "")]
        assert periodic.raw[0] == {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}}


def test_send_bookmarks(core: client.CoreV1Api, server: FakeApiServer) -> None:
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    watcher = WatchThread(
        core.list_namespaced_pod, NS, count=2, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=10
    )
    wait_watches(server)
    core.create_namespaced_pod(NS, pod("a"))
    server.send_bookmarks()
    assert watcher.join().events == [("ADDED", "a"), ("BOOKMARK", "")]
    assert watcher.raw[1]["metadata"]["resourceVersion"] == server.resource_version
    assert watcher.watch.resource_version == server.resource_version  # the client resumes from bookmarks


def test_watch_from_compacted_rv_is_410(core: client.CoreV1Api, server: FakeApiServer) -> None:
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    core.create_namespaced_pod(NS, pod("a"))
    server.compact()
    watcher = WatchThread(core.list_namespaced_pod, NS, count=1, resource_version=rv, timeout_seconds=10).join()
    assert isinstance(watcher.error, ApiException) and watcher.error.status == 410
    assert "too old resource version" in str(watcher.error.reason)
    # A watch from the current RV is fine after compaction.
    fresh = WatchThread(
        core.list_namespaced_pod, NS, count=1, resource_version=server.resource_version, timeout_seconds=10
    )
    wait_watches(server)
    core.create_namespaced_pod(NS, pod("b"))
    assert fresh.join().error is None and fresh.events == [("ADDED", "b")]


def test_history_limit_expires_old_resource_versions(core: client.CoreV1Api) -> None:
    with FakeApiServer(history_limit=2) as server, server.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        rv = core.list_namespaced_pod(NS).metadata.resource_version
        for name in "abc":
            core.create_namespaced_pod(NS, pod(name))
        watcher = WatchThread(core.list_namespaced_pod, NS, count=1, resource_version=rv, timeout_seconds=10).join()
        assert isinstance(watcher.error, ApiException) and watcher.error.status == 410


def test_expire_watches(core: client.CoreV1Api, server: FakeApiServer) -> None:
    watcher = WatchThread(core.list_namespaced_pod, NS, count=1, timeout_seconds=10)
    wait_watches(server)
    assert server.expire_watches() == 1
    assert server.open_watches() == 0
    error = watcher.join().error
    assert isinstance(error, ApiException) and error.status == 410


def test_drop_watches_ends_the_clients_stream(core: client.CoreV1Api, server: FakeApiServer) -> None:
    core.create_namespaced_pod(NS, pod("a"))
    watcher = WatchThread(core.list_namespaced_pod, NS, count=99, timeout_seconds=10)
    watcher.wait_events(1)
    assert server.drop_watches() == 1
    assert server.open_watches() == 0
    watcher.join()
    assert watcher.events == [("ADDED", "a")]
    assert isinstance(watcher.error, urllib3.exceptions.ProtocolError)  # truncated chunked response


def test_watch_timeout_ends_the_stream_cleanly(server: FakeApiServer) -> None:
    server.put(pod("a"))
    response = raw(server, "GET", "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=0.2")
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Content-Type"] == "application/json"
    lines = response.data.decode().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["ADDED"]


def test_stop_closes_open_watches(core: client.CoreV1Api) -> None:
    server = FakeApiServer().start()
    with server.api_client() as api_client:
        watcher = WatchThread(client.CoreV1Api(api_client).list_namespaced_pod, NS, count=99, timeout_seconds=30)
        wait_watches(server)
        server.stop()
        watcher.join()
    assert isinstance(watcher.error, urllib3.exceptions.ProtocolError)  # like a network drop
    assert server.open_watches() == 0


# ---------------------------------------------------------------------------------------------
# Test controls
# ---------------------------------------------------------------------------------------------


def test_fail_next_and_request_log(core: client.CoreV1Api, server: FakeApiServer) -> None:
    server.fail_next(1, code=503, path_contains="/pods")
    with pytest.raises(ApiException) as failed:
        core.list_namespaced_pod(NS, label_selector="app=w")
    assert failed.value.status == 503 and json.loads(failed.value.body)["reason"] == "ServiceUnavailable"
    core.list_namespaced_pod(NS, label_selector="app=w")  # only one failure was asked for

    server.fail_next(2, code=500, method="POST")
    core.list_namespaced_pod(NS)  # GETs do not match
    for _ in range(2):
        with pytest.raises(ApiException):
            core.create_namespaced_pod(NS, pod("a"))
    core.create_namespaced_pod(NS, pod("a"))

    first = server.requests[0]
    assert (first.method, first.path, first.query) == (
        "GET",
        "/api/v1/namespaces/default/pods",
        {"labelSelector": "app=w"},
    )
    assert [r.method for r in server.requests].count("POST") == 3


def test_direct_store_access_feeds_watches(core: client.CoreV1Api, server: FakeApiServer) -> None:
    created = core.create_namespaced_pod(NS, pod("a"))
    watcher = WatchThread(
        core.list_namespaced_pod, NS, count=2, resource_version=created.metadata.resource_version, timeout_seconds=10
    )
    wait_watches(server)
    terminating = server.get("pods", NS, "a")
    assert terminating is not None
    terminating["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    terminating["status"] = {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    stored = server.put(terminating)
    assert stored["metadata"]["uid"] == created.metadata.uid
    server.delete("pods", NS, "a")
    assert watcher.join().events == [("MODIFIED", "a"), ("DELETED", "a")]
    assert watcher.raw[0]["metadata"]["deletionTimestamp"] == "2030-01-01T00:00:00Z"
    assert server.list("pods") == [] and server.get("pods", NS, "a") is None


async def test_usable_from_asyncio(server: FakeApiServer) -> None:
    with server.api_client() as api_client:
        custom = client.CustomObjectsApi(api_client)
        created = await asyncio.to_thread(custom.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, vs("a"))
        server.put({**created, "status": {"observed": True}})  # e.g. from a test running in the loop
        assert await server.wait_for_async(lambda s: (s.get(PLURAL, NS, "a") or {}).get("status") == {"observed": True})
        got = await asyncio.to_thread(custom.get_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "a")
        assert got["status"] == {"observed": True}


def test_fail_next_by_user_agent_fails_one_client_of_several(server: FakeApiServer) -> None:
    with server.api_client() as first, server.api_client() as second:
        first.user_agent, second.user_agent = "replica-a", "replica-b"
        server.fail_next(10**6, code=503, user_agent="replica-a")  # a network partition for one client
        with pytest.raises(ApiException) as failed:
            client.CoreV1Api(first).list_namespaced_pod(NS)
        assert failed.value.status == 503
        client.CoreV1Api(second).list_namespaced_pod(NS)
        server.clear_failures()
        client.CoreV1Api(first).list_namespaced_pod(NS)
    assert [r.user_agent for r in server.requests] == ["replica-a", "replica-b", "replica-a"]


# ---------------------------------------------------------------------------------------------
# Leases (leader election)
# ---------------------------------------------------------------------------------------------


def lease(name: str, holder: str) -> client.V1Lease:
    now = datetime.now(UTC)
    spec = client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15, acquire_time=now, renew_time=now)
    return client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=spec)


def test_leases_are_served_with_optimistic_concurrency(api: client.ApiClient, server: FakeApiServer) -> None:
    leases = client.CoordinationV1Api(api)
    created = leases.create_namespaced_lease(NS, lease("leader", "a"))
    assert created.spec.holder_identity == "a" and created.spec.renew_time is not None
    with pytest.raises(ApiException) as exists:
        leases.create_namespaced_lease(NS, lease("leader", "b"))  # two candidates creating it: one wins
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"

    stale = leases.read_namespaced_lease("leader", NS)
    fresh = leases.read_namespaced_lease("leader", NS)
    fresh.spec.holder_identity = "a"
    fresh.spec.lease_transitions = 1
    renewed = leases.replace_namespaced_lease("leader", NS, fresh)
    assert renewed.metadata.resource_version != stale.metadata.resource_version
    stale.spec.holder_identity = "b"  # written from an old read: refused, the caller must read again
    with pytest.raises(ApiException) as conflict:
        leases.replace_namespaced_lease("leader", NS, stale)
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "Conflict"
    assert server.get("leases", NS, "leader")["spec"]["holderIdentity"] == "a"
    assert server.get("leases", NS, "leader")["spec"]["leaseTransitions"] == 1
