"""The Ready condition and status.listeners, pure: from a VirtualService, the pod index, proxy progress
and DNS answers to the status the operator writes. Plus the DNS cache behind address endpoints.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.support.status import conditions, pod
from xds_operator.api import parse_virtual_service
from xds_operator.sources.kubernetes.dns import DnsCache
from xds_operator.sources.kubernetes.pods import PodIndex
from xds_operator.status.conditions import Observed, status_of
from xds_operator.status.progress import Progress, summarize
from xds_operator.status.readiness import Resolution, listener_states
from xds_operator.translate import resolve_virtual_service
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import ProxyProgress


def session_vs(hosts: list[dict[str, Any]], name: str = "session-7") -> Any:
    """One listener per host: `<name>-l<i>` on port 3000+i, cluster `<name>-c<i>` with that one endpoint."""
    return parse_virtual_service(
        {
            "apiVersion": "servicemesh.l7mp.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "media"},
            "spec": {
                "selector": {"app": "envoy-ingress"},
                "listeners": [
                    {
                        "name": f"{name}-l{i}",
                        "udp": {
                            "port": 3000 + i,
                            "cluster": {
                                "name": f"{name}-c{i}",
                                "service_discovery": "strictdns" if "address" in host else "eds",
                                "endpoints": [{"name": "worker", "host": host, "port": 2001}],
                            },
                        },
                    }
                    for i, host in enumerate(hosts)
                ],
            },
        }
    )


SESSION_POD = {"selector": {"session": "7"}}


def observe(
    vs, pods: PodIndex, progress: Progress, *, dns=lambda host: Resolution.RESOLVES, addresses=(), **more
) -> dict:
    """The status the operator would write for vs, given what it knows."""
    resolved = resolve_virtual_service(vs, pods.ready_ips)
    listeners = listener_states(vs, resolved, dns)
    observed = Observed(1, serving_generation=1, progress=progress, listeners=listeners, addresses=addresses, **more)
    return status_of(observed, None, "T1")


def worker_pods(ready: bool = True) -> PodIndex:
    index = PodIndex()
    index.upsert(pod("worker-7", {"session": "7"}, "10.1.0.7", ready=ready))
    index.upsert(pod("worker-8", {"session": "8"}, "10.1.0.8"))
    return index


# -- the Ready condition ---------------------------------------------------------------------


def test_ready_when_every_selected_proxy_acked_and_every_cluster_has_a_ready_endpoint():
    status = observe(session_vs([SESSION_POD]), worker_pods(), Progress(2, 2), addresses=("10.0.0.1", "10.0.0.2"))
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Ready")
    assert ready["message"] == "2 of 2 selected proxies run it; every cluster has a ready endpoint"
    assert status["listeners"] == [
        {
            "name": "session-7-l0",
            "protocol": "UDP",
            "port": 3000,
            "addresses": ["10.0.0.1", "10.0.0.2"],
            "cluster": {"name": "session-7-c0", "readyEndpoints": 1},
        }
    ]


def test_not_ready_without_proxies():
    ready = conditions(observe(session_vs([SESSION_POD]), worker_pods(), Progress()))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NoProxies")
    assert "no connected proxy in its namespace matches spec.selector" in ready["message"]


def test_not_ready_while_a_proxy_has_not_acked():
    status = observe(session_vs([SESSION_POD]), worker_pods(), Progress(2, 1), addresses=("10.0.0.1",))
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "Pending",
        "1 of 2 selected proxies run it",
    )
    assert status["listeners"][0]["addresses"] == ["10.0.0.1"]  # the one that runs it


def test_not_ready_while_the_sessions_pod_is_not_ready_and_the_message_names_the_cluster():
    status = observe(session_vs([SESSION_POD]), worker_pods(ready=False), Progress(1, 1), addresses=("10.0.0.1",))
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NoReadyEndpoints")
    assert ready["message"] == (
        "cluster session-7-c0 has no ready endpoint: endpoint worker: no Ready pod with an IP matches session=7"
    )
    assert conditions(status)["Programmed"]["status"] == "True"  # the proxies run it; the worker is not there
    assert status["listeners"][0]["cluster"]["readyEndpoints"] == 0


def test_terminating_pods_and_pods_without_an_ip_are_no_ready_endpoints():
    for terminating, ip in ((True, "10.1.0.7"), (False, "")):
        index = PodIndex()
        index.upsert(pod("worker-7", {"session": "7"}, ip, terminating=terminating))
        ready = conditions(observe(session_vs([SESSION_POD]), index, Progress(1, 1)))["Ready"]
        assert ready["reason"] == "NoReadyEndpoints"


def test_every_cluster_needs_a_ready_endpoint_and_the_count_is_per_cluster():
    index = worker_pods()
    index.upsert(pod("worker-7b", {"session": "7"}, "10.1.0.9"))
    vs = session_vs([SESSION_POD, {"selector": {"session": "gone"}}, {"selector": {"session": "also-gone"}}])
    status = observe(vs, index, Progress(1, 1))
    assert [listener["cluster"]["readyEndpoints"] for listener in status["listeners"]] == [2, 0, 0]
    ready = conditions(status)["Ready"]
    assert ready["reason"] == "NoReadyEndpoints"
    assert ready["message"].startswith("cluster session-7-c1 has no ready endpoint (and 1 more clusters): ")


def test_address_endpoints_are_ready_when_an_ip_or_a_name_that_resolves():
    vs = session_vs([{"address": "10.2.0.1"}, {"address": "worker.media.svc"}])
    answers = {"worker.media.svc": Resolution.RESOLVES}

    def dns(host: str) -> Resolution:
        return answers.get(host, Resolution.RESOLVES if host == "10.2.0.1" else Resolution.DOES_NOT_RESOLVE)

    status = observe(vs, PodIndex(), Progress(1, 1), dns=dns)
    assert conditions(status)["Ready"]["status"] == "True"
    assert [listener["cluster"]["readyEndpoints"] for listener in status["listeners"]] == [1, 1]
    for answer, says in (
        (Resolution.PENDING, "worker.media.svc is being resolved"),
        (Resolution.DOES_NOT_RESOLVE, "worker.media.svc does not resolve"),
    ):
        answers["worker.media.svc"] = answer
        ready = conditions(observe(vs, PodIndex(), Progress(1, 1), dns=dns))["Ready"]
        assert ready["reason"] == "NoReadyEndpoints" and ready["message"].endswith(says)


def test_a_nack_makes_it_not_ready_with_envoys_text():
    progress = Progress(2, 1, [("media/envoy-0", "LDS: cannot bind 0.0.0.0:3000: Address already in use")])
    ready = conditions(observe(session_vs([SESSION_POD]), worker_pods(), progress))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Rejected")
    assert "media/envoy-0" in ready["message"] and "Address already in use" in ready["message"]


def test_invalid_or_conflicted_is_not_ready():
    vs = session_vs([SESSION_POD])
    invalid = observe(vs, worker_pods(), Progress(1, 1), rejected="spec.listeners[0].udp.port: must be at least 1")
    assert conditions(invalid)["Ready"]["reason"] == "Invalid"  # the older generation still runs, but not this one
    conflicted = observe(vs, worker_pods(), Progress(1, 0), conflict="port 3000 is already used")
    assert conditions(conflicted)["Ready"]["reason"] == "Conflicted"
    nothing = status_of(Observed(1, rejected="bad"), None, "T1")
    assert conditions(nothing)["Ready"]["reason"] == "Invalid" and nothing["listeners"] == []


def test_ready_keeps_its_transition_time_and_an_unchanged_status_is_equal():
    vs, pods = session_vs([SESSION_POD]), worker_pods()
    resolved = resolve_virtual_service(vs, pods.ready_ips)
    observed = Observed(
        1,
        serving_generation=1,
        progress=Progress(1, 1),
        listeners=listener_states(vs, resolved, lambda host: Resolution.RESOLVES),
    )
    first = status_of(observed, None, "T1")
    assert status_of(observed, first, "T2") == first


# -- which proxies serve it ------------------------------------------------------------------


def test_progress_names_the_proxies_that_run_the_current_resources():
    cache = SnapshotCache()
    vs = session_vs([{"address": "10.2.0.1"}])
    cache.upsert(vs)
    cache.commit()
    snapshot = cache.snapshot_for({"app": "envoy-ingress"})
    proxies = [
        ProxyProgress("media/envoy-0", {"app": "envoy-ingress"}, snapshot, snapshot, None),
        ProxyProgress("media/envoy-1", {"app": "envoy-ingress"}, snapshot, snapshot, None),
        ProxyProgress("media/envoy-2", {"app": "envoy-ingress"}, snapshot, None, None),  # not ACKed yet
    ]
    progress = summarize(proxies, cache.virtual_services())[vs.key]
    assert (progress.selected, progress.applied) == (3, 2)
    assert sorted(node for nodes in progress.serving for node in nodes) == ["media/envoy-0", "media/envoy-1"]


def test_a_proxys_address_is_its_pods_ip():
    index = PodIndex()
    index.upsert(pod("envoy-0", {"app": "envoy-ingress"}, "10.0.0.5", uid="u-0"))
    assert [index.ip_for(node) for node in ("media/envoy-0", "u-0", "media/unknown")] == ["10.0.0.5", "10.0.0.5", ""]


# -- DNS answers for address endpoints -------------------------------------------------------


async def test_dns_answers_come_from_a_cache_filled_off_the_event_loop():
    changed = asyncio.Event()
    table = {"worker.media.svc": False}
    dns = DnsCache(lambda host: changed.set(), retry=0.05, resolve=lambda host: table[host])
    try:
        assert dns.resolves("10.0.0.1") is Resolution.RESOLVES  # IPs need no lookup
        assert dns.resolves("fd00::1") is Resolution.RESOLVES
        assert dns.resolves("worker.media.svc") is Resolution.PENDING  # not known yet: looked up in the background
        await asyncio.wait_for(changed.wait(), 15)
        assert dns.resolves("worker.media.svc") is Resolution.DOES_NOT_RESOLVE
        changed.clear()
        table["worker.media.svc"] = True  # the name appears: noticed on the next retry, without other events
        await asyncio.wait_for(changed.wait(), 15)
        assert dns.resolves("worker.media.svc") is Resolution.RESOLVES
        dns.forget("worker.media.svc")  # no VirtualService uses it any more: looked up anew when asked again
        assert dns.resolves("worker.media.svc") is Resolution.PENDING
    finally:
        dns.close()


async def test_a_hanging_resolver_never_blocks_the_event_loop():
    release = threading.Event()
    dns = DnsCache(lambda host: None, resolve=lambda host: release.wait(10))
    try:
        assert dns.resolves("slow.example") is Resolution.PENDING
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.05)  # the loop keeps running while the lookup hangs
        assert dns.resolves("slow.example") is Resolution.PENDING and loop.time() - started < 5
    finally:
        release.set()
        dns.close()


async def test_the_system_resolver_finds_localhost():
    dns = DnsCache(lambda host: None)
    try:
        dns.resolves("localhost")

        async def answered() -> None:
            while dns.resolves("localhost") is Resolution.PENDING:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(answered(), 10)
        assert dns.resolves("localhost") is Resolution.RESOLVES
    finally:
        dns.close()
