"""The Ready condition and status.listeners through the whole Kubernetes path, without Envoy: the real
`kubernetes` client against the fake API server, the real ADS server, and ADS clients acting like
Envoy. Each test asserts what the API server holds as the VirtualService's status.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.ads_client import eventually
from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import INGRESS, NS, Operator, pod_body, subscribe, vs_body
from xds_operator.status.reconciler import STATUS_INTERVAL_SECONDS
from xds_operator.xds.snapshot import ENDPOINT, LISTENER

SESSION = {"session": "s1"}


def listener_status(operator: Operator, name: str) -> dict[str, Any]:
    (listener,) = operator.status(name).get("listeners") or [{}]
    return listener


def set_pod(apiserver: FakeApiServer, name: str, labels: dict, ip: str, ready: bool) -> None:
    """What the kubelet does when a container's readiness changes."""
    apiserver.put(pod_body(name, labels, ip, ready))


async def no_flip(operator: Operator, name: str, status: str) -> None:
    """The Ready condition keeps `status` over a few status ticks."""
    for _ in range(4):
        await asyncio.sleep(STATUS_INTERVAL_SECONDS)
        assert operator.condition(name, "Ready").get("status") == status


async def test_ready_flips_with_the_session_pods_readiness_and_the_proxys_acks(operator: Operator):
    operator.create_pod("envoy-0", INGRESS, "10.0.0.5")
    operator.create(vs_body("session-s1", 3000, eds=True, host={"selector": SESSION}))
    await operator.wait_condition("session-s1", "Ready", "False", "NoProxies")

    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)
    ready = await operator.wait_condition("session-s1", "Ready", "False", "NoReadyEndpoints")
    assert ready["message"] == (
        "cluster session-s1-c has no ready endpoint: endpoint worker: no Ready pod with an IP matches session=s1"
    )
    assert operator.condition("session-s1", "Programmed")["status"] == "True"
    assert listener_status(operator, "session-s1") == {
        "name": "session-s1-l",
        "protocol": "UDP",
        "port": 3000,
        "addresses": ["10.0.0.5"],
        "cluster": {"name": "session-s1-c", "readyEndpoints": 0},
    }

    operator.create_pod("worker-1", SESSION, "10.1.0.1", ready=False)  # scheduled, not Ready yet
    await operator.settle()
    await no_flip(operator, "session-s1", "False")

    set_pod(operator.apiserver, "worker-1", SESSION, "10.1.0.1", ready=True)
    update = await ads.expect(ENDPOINT)  # the proxy gets the endpoint but has not ACKed it: not Ready yet
    await no_flip(operator, "session-s1", "False")
    await ads.ack(update, ["session-s1-c"])
    ready = await operator.wait_condition("session-s1", "Ready", "True", "Ready")
    assert ready["message"] == "1 of 1 selected proxies run it; every cluster has a ready endpoint"
    assert listener_status(operator, "session-s1")["cluster"]["readyEndpoints"] == 1

    set_pod(operator.apiserver, "worker-1", SESSION, "10.1.0.1", ready=False)  # the worker fails its probe
    await ads.ack(await ads.expect(ENDPOINT), ["session-s1-c"])
    await operator.wait_condition("session-s1", "Ready", "False", "NoReadyEndpoints")
    assert listener_status(operator, "session-s1")["cluster"]["readyEndpoints"] == 0


async def test_addresses_are_the_pod_ips_of_the_proxies_that_acked_sorted(operator: Operator):
    operator.create(vs_body("calls", 3000))  # an IP endpoint: always ready
    operator.create_pod("envoy-0", INGRESS, "10.0.0.10")
    operator.create_pod("envoy-1", INGRESS, "10.0.0.9")
    await operator.settle()
    first = operator.connect(f"{NS}/envoy-0")
    await subscribe(first)
    await operator.wait_condition("calls", "Ready", "True")
    assert listener_status(operator, "calls")["addresses"] == ["10.0.0.10"]

    second = operator.connect(f"{NS}/envoy-1")
    await second.subscribe_and_ack("type.googleapis.com/envoy.config.cluster.v3.Cluster")
    await second.send(LISTENER)
    listeners = await second.expect(LISTENER)  # received, not ACKed yet: it does not serve the listener
    ready = await operator.wait_condition("calls", "Ready", "False", "Pending")
    assert ready["message"] == "1 of 2 selected proxies run it"
    assert listener_status(operator, "calls")["addresses"] == ["10.0.0.10"]

    await second.ack(listeners)
    await operator.wait_condition("calls", "Ready", "True")
    assert listener_status(operator, "calls")["addresses"] == ["10.0.0.9", "10.0.0.10"]

    await second.close()  # a proxy that leaves no longer serves it
    await eventually(lambda: listener_status(operator, "calls")["addresses"] == ["10.0.0.10"], "envoy-1 to go")


async def test_a_nack_makes_it_not_ready_with_envoys_text(operator: Operator):
    operator.create(vs_body("calls", 3000))
    operator.create_pod("envoy-0", INGRESS, "10.0.0.5")
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    await ads.subscribe_and_ack("type.googleapis.com/envoy.config.cluster.v3.Cluster")
    await ads.send(LISTENER)
    await ads.nack(await ads.expect(LISTENER), "cannot bind 0.0.0.0:3000: Address already in use")
    ready = await operator.wait_condition("calls", "Ready", "False", "Rejected")
    assert f"{NS}/envoy-0" in ready["message"] and "Address already in use" in ready["message"]
    assert listener_status(operator, "calls")["addresses"] == []


async def test_a_dns_name_endpoint_is_ready_once_it_resolves(operator: Operator):
    operator.create(vs_body("named", 3000, host={"address": "localhost"}))
    operator.create_pod("envoy-0", INGRESS, "10.0.0.5")
    await operator.settle()
    await subscribe(operator.connect(f"{NS}/envoy-0"))
    await operator.wait_condition("named", "Ready", "True", timeout=10)
    assert listener_status(operator, "named")["cluster"]["readyEndpoints"] == 1
