"""The Kubernetes source end to end, without Envoy: the real `kubernetes` client against the fake API
server (real HTTP: list, chunked watch, bookmarks, 410, status subresource), the real ADS server, and
an ADS client acting like Envoy. Each test asserts what a proxy receives or what the API server holds.
"""

from __future__ import annotations

import asyncio

from tests.support.ads_client import eventually, resource_names
from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import (
    GROUP,
    INGRESS,
    NS,
    PLURAL,
    VERSION,
    WAIT,
    Operator,
    endpoint_ips,
    inline_ips,
    start_operator,
    subscribe,
    vs_body,
)
from xds_operator.status.reconciler import STATUS_INTERVAL_SECONDS
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER

# -- proxy identity ----------------------------------------------------------------------------


async def test_a_proxy_waits_unanswered_until_its_pod_is_known_then_gets_its_pods_labels(operator: Operator):
    operator.create(vs_body("calls"))
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0", claimed_labels=INGRESS)  # claimed labels are ignored here
    await ads.send(CLUSTER)
    await ads.expect_nothing(0.5)
    operator.create_pod("envoy-0", INGRESS)
    response = await ads.expect(CLUSTER, names=["calls-c"])
    await ads.ack(response)
    await ads.send(LISTENER)
    await ads.expect(LISTENER, names=["calls-l"])


async def test_labels_come_from_the_pod_not_from_what_the_proxy_claims(operator: Operator):
    operator.create(vs_body("calls"))
    operator.create_pod("other-0", {"app": "something-else"})
    await operator.settle()
    ads = operator.connect(f"{NS}/other-0", claimed_labels=INGRESS)
    response = await ads.subscribe_and_ack(CLUSTER)
    assert resource_names(response) == []


async def test_node_id_may_be_the_pod_uid_and_a_relabelled_pod_moves_its_proxy(operator: Operator):
    operator.create(vs_body("calls"))
    pod = operator.create_pod("envoy-1", {"app": "not-yet"})
    await operator.settle()
    ads = operator.connect(pod["metadata"]["uid"])
    assert resource_names(await ads.subscribe_and_ack(CLUSTER)) == []
    operator.core.patch_namespaced_pod("envoy-1", NS, {"metadata": {"labels": INGRESS}})
    assert resource_names(await ads.expect(CLUSTER)) == ["calls-c"]


# -- endpoints from pods ---------------------------------------------------------------------


async def test_eds_endpoints_follow_ready_pods_and_cds_lds_stay_unchanged(operator: Operator):
    operator.create(vs_body("calls", eds=True, host={"selector": {"app": "worker"}}))
    operator.create_pod("envoy-0", INGRESS)
    operator.create_pod("worker-1", {"app": "worker"}, "10.1.0.1")
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    clusters, endpoints, listeners = await subscribe(ads)
    assert endpoint_ips(endpoints) == ["10.1.0.1"]

    operator.create_pod("worker-2", {"app": "worker"}, "10.1.0.2")
    operator.create_pod("unready", {"app": "worker"}, "10.1.0.3", ready=False)
    update = await ads.expect(ENDPOINT)
    assert endpoint_ips(update) == ["10.1.0.1", "10.1.0.2"]
    await ads.ack(update, ["calls-c"])

    operator.core.delete_namespaced_pod("worker-1", NS)
    update = await ads.expect(ENDPOINT)
    assert endpoint_ips(update) == ["10.1.0.2"]
    await ads.ack(update, ["calls-c"])
    await ads.expect_nothing()  # no CDS or LDS push: Envoy does not re-warm anything
    versions = operator.cache.snapshot_for(INGRESS).versions
    assert (versions[CLUSTER], versions[LISTENER]) == (clusters.version_info, listeners.version_info)


async def test_strictdns_endpoints_from_pods_go_into_the_cluster(operator: Operator):
    operator.create(vs_body("calls", host={"selector": {"app": "worker"}}))
    operator.create_pod("envoy-0", INGRESS)
    operator.create_pod("worker-1", {"app": "worker"}, "10.1.0.1")
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    clusters, _, _ = await subscribe(ads)
    assert inline_ips(clusters, "calls-c") == ["10.1.0.1"]
    operator.create_pod("worker-2", {"app": "worker"}, "10.1.0.2")
    assert inline_ips(await ads.expect(CLUSTER), "calls-c") == ["10.1.0.1", "10.1.0.2"]


async def test_a_burst_of_changes_becomes_one_push(operator: Operator):
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    for index in range(40):  # written straight into the store: 40 watch events within a few milliseconds
        operator.apiserver.put(vs_body(f"burst-{index}", 3000 + index))
    clusters = await ads.expect(CLUSTER)
    assert len(clusters.resources) == 40
    await ads.ack(clusters)
    listeners = await ads.expect(LISTENER)
    assert len(listeners.resources) == 40
    await ads.ack(listeners)
    await ads.expect_nothing()  # one commit: the first push already held all 40


# -- deletion and watch robustness -----------------------------------------------------------


async def test_deleting_a_virtualservice_removes_its_listener(operator: Operator):
    operator.create(vs_body("calls"))
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    operator.objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "calls")
    assert resource_names(await ads.expect(CLUSTER)) == []


async def test_a_dropped_watch_resumes_from_the_last_version_and_loses_nothing(operator: Operator):
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    lists = [r.lists for r in operator.reflectors]
    assert operator.apiserver.drop_watches() >= 2
    operator.create(vs_body("after-drop"))
    assert resource_names(await ads.expect(CLUSTER)) == ["after-drop-c"]
    assert [r.lists for r in operator.reflectors] == lists  # resumed, not relisted
    watches = [r for r in operator.apiserver.requests if r.query.get("watch") in ("true", "1", "True")]
    assert all(r.query.get("allowWatchBookmarks") in ("true", "True") for r in watches)
    assert any(r.query.get("resourceVersion") not in (None, "", "0") for r in watches[2:])


async def test_410_gone_relists_and_reconciles_nothing_missed_nothing_stale(operator: Operator):
    operator.create(vs_body("old"))
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    # Keep the watches down while things change, then forget the history: resuming gets 410.
    operator.apiserver.fail_next(6, code=503, path_contains="watch=")
    operator.apiserver.drop_watches()
    operator.apiserver.delete(PLURAL, NS, "old")
    operator.apiserver.put(vs_body("new", 2001))
    operator.apiserver.compact()
    response = await ads.recv(timeout=WAIT)  # the watch is retried with backoff, then relists
    assert response.type_url == CLUSTER and resource_names(response) == ["new-c"]
    assert operator.reflectors[0].lists >= 2
    assert set(operator.source.records) == {(NS, "new")}


async def test_only_the_given_namespaces_are_watched(apiserver: FakeApiServer):
    apiserver.put(vs_body("here") | {"metadata": {"name": "here", "namespace": "media"}})
    apiserver.put(vs_body("there") | {"metadata": {"name": "there", "namespace": "elsewhere"}})
    running = await start_operator(apiserver, namespaces=["media"])
    try:
        assert set(running.source.records) == {("media", "here")}
    finally:
        await running.plane.close(reflector_timeout=1.0)
        server, api = running._cleanup  # type: ignore[attr-defined]
        await running.channel.close()
        await server.stop(None)
        api.close()


# -- status ----------------------------------------------------------------------------------


async def test_status_accepted_and_programmed_once_the_proxy_acks(operator: Operator):
    operator.create(vs_body("calls"))
    await operator.wait_condition("calls", "Programmed", "False", "NoProxies")
    assert operator.condition("calls", "Accepted")["status"] == "True"
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    programmed = await operator.wait_condition("calls", "Programmed", "True", "Programmed")
    assert programmed["message"] == "1 of 1 selected proxies run it"
    assert operator.status("calls")["observedGeneration"] == 1
    assert operator.condition("calls", "Conflicted")["status"] == "False"


async def test_a_closed_status_reconciler_computes_no_more_status(operator: Operator):
    """Shutting down: proxies leaving during the drain must not start a status pass (and its DNS threads)."""
    operator.create(vs_body("calls"))
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    await operator.wait_condition("calls", "Programmed", "True", "Programmed")

    operator.plane.reconciler.close()
    before = operator.status_writes()
    await ads.close()  # the proxy leaves: an open reconciler would write Programmed=False (NoProxies)
    await asyncio.sleep(4 * STATUS_INTERVAL_SECONDS)
    assert operator.status_writes() == before
    assert operator.condition("calls", "Programmed")["status"] == "True"


async def test_an_invalid_virtualservice_is_not_accepted_and_gets_an_event(operator: Operator):
    bad = vs_body("bad", eds=True, host={"address": "worker.media.svc"})  # EDS needs IPs: the CRD cannot see it
    operator.create(bad)
    accepted = await operator.wait_condition("bad", "Accepted", "False", "Invalid")
    assert "spec.listeners[0].udp.cluster.endpoints[0].host.address" in accepted["message"]
    await operator.wait_condition("bad", "Programmed", "False", "Invalid")

    def rejected_event() -> list:
        return [
            e
            for e in operator.apiserver.list("events", NS)
            if e["involvedObject"]["name"] == "bad" and e["reason"] == "Rejected" and e["type"] == "Warning"
        ]

    await eventually(rejected_event, "a Warning event about the rejected VirtualService")
    assert "host.address" in rejected_event()[0]["message"]


async def test_an_invalid_update_keeps_serving_the_last_good_generation(operator: Operator):
    operator.create(vs_body("calls"))
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    await operator.wait_condition("calls", "Programmed", "True")
    broken = vs_body("calls", eds=True, host={"address": "worker.media.svc"})["spec"]
    operator.objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "calls", {"spec": broken})
    accepted = await operator.wait_condition("calls", "Accepted", "False")
    assert "still serving generation 1" in accepted["message"]
    assert operator.status("calls")["observedGeneration"] == 2
    await ads.expect_nothing()  # the proxy keeps what it has
    assert operator.condition("calls", "Programmed")["status"] == "True"


async def test_a_conflict_is_reported_on_the_newer_virtualservice(operator: Operator):
    operator.apiserver.put(
        vs_body("first", 2000)
        | {"metadata": {**vs_body("first")["metadata"], "creationTimestamp": "2026-01-01T00:00:00Z"}}
    )
    operator.apiserver.put(
        vs_body("second", 2000)
        | {"metadata": {**vs_body("second")["metadata"], "creationTimestamp": "2026-01-02T00:00:00Z"}}
    )
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    clusters, _, _ = await subscribe(ads)
    assert resource_names(clusters) == ["first-c"]
    conflicted = await operator.wait_condition("second", "Conflicted", "True")
    assert "port 2000" in conflicted["message"] and "media/first" in conflicted["message"]
    assert operator.condition("second", "Programmed")["reason"] == "Conflicted"
    await operator.wait_condition("first", "Programmed", "True")
    assert operator.condition("first", "Conflicted")["status"] == "False"


async def test_a_nack_is_reported_in_programmed_with_envoys_text(operator: Operator):
    operator.create(vs_body("calls"))
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    clusters = await ads.subscribe_and_ack(CLUSTER)
    assert resource_names(clusters) == ["calls-c"]
    await ads.send(LISTENER)
    listeners = await ads.expect(LISTENER)
    await ads.nack(listeners, "cannot bind 0.0.0.0:2000: Address already in use")
    programmed = await operator.wait_condition("calls", "Programmed", "False", "Rejected")
    assert f"{NS}/envoy-0" in programmed["message"] and "Address already in use" in programmed["message"]


async def test_status_writes_are_coalesced_and_an_unchanged_status_is_not_rewritten(operator: Operator):
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    operator.create(vs_body("calls"))
    clusters = await ads.expect(CLUSTER)
    await ads.ack(clusters)
    await ads.ack(await ads.expect(LISTENER))
    await operator.wait_condition("calls", "Programmed", "True")

    await asyncio.sleep(0.6)
    writes = [r for r in operator.apiserver.requests if r.method == "PATCH" and r.path.endswith("/calls/status")]
    assert 1 <= len(writes) <= 3  # created → (pending) → programmed, not one per event or ACK
    settled = operator.status_writes()
    await ads.expect_nothing(0.6)  # several status ticks, nothing changed
    assert operator.status_writes() == settled
