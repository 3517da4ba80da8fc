"""Assigned listener ports in Kubernetes mode (serve --listener-ports), against the fake API server and an ADS
client acting like Envoy: the port is written to status.listeners[].port, proxies get a listener on it, and a
restart of the control plane keeps it, even where recomputing it from scratch would give another."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from envoy.config.listener.v3 import listener_pb2

from tests.support.ads_client import eventually
from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import INGRESS, NS, PLURAL, Operator, running_operator, subscribe, vs_body
from xds_operator.api import VirtualService, parse_virtual_service
from xds_operator.ports.assigner import PortRange, _Pool, _preferred

RANGE = PortRange(21000, 21001)


def portless(name: str, *, tcp: bool = False) -> dict[str, Any]:
    body = vs_body(name)
    block = body["spec"]["listeners"][0].pop("udp")
    del block["port"]
    body["spec"]["listeners"][0]["tcp" if tcp else "udp"] = block
    return body


def colliding_names() -> tuple[str, str]:
    """Two names in name order whose listeners start their search at the same port of RANGE: the second
    must move on, so a fresh computation without the first would give it the first's port."""
    pool = _Pool(RANGE)

    def start(name: str) -> int:
        vs: VirtualService = parse_virtual_service(portless(name))
        return _preferred(vs, (f"{name}-l", "UDP"), pool)

    for first, second in itertools.combinations(sorted(f"call-{i}" for i in range(10)), 2):
        if start(first) == start(second):
            return first, second
    raise AssertionError("no two names collide")


def status_port(operator: Operator, name: str) -> int | None:
    listeners = operator.status(name).get("listeners") or [{}]
    port: int | None = listeners[0].get("port")
    return port


def listener_ports(response: Any) -> dict[str, int]:
    found = {}
    for packed in response.resources:
        listener = listener_pb2.Listener()
        packed.Unpack(listener)
        found[listener.name] = listener.address.socket_address.port_value
    return found


async def test_an_assigned_port_is_written_to_status_served_and_kept_across_a_restart(apiserver: FakeApiServer):
    older, younger = colliding_names()
    async with running_operator(apiserver, listener_ports=RANGE) as operator:  # type: ignore[arg-type]
        operator.create_pod("envoy-0", INGRESS, "10.0.0.5")
        operator.create(portless(older))
        operator.create(portless(younger))
        await operator.settle()
        _, _, listeners = await subscribe(operator.connect(f"{NS}/envoy-0"))
        await operator.wait_condition(older, "Ready", "True")
        await operator.wait_condition(younger, "Ready", "True")
        first, second = status_port(operator, older), status_port(operator, younger)
        assert {first, second} == {21000, 21001}
        assert listener_ports(listeners) == {f"{older}-l": first, f"{younger}-l": second}

    apiserver.delete(PLURAL, NS, older)  # while no control plane runs: a fresh start would give `younger` its port
    async with running_operator(apiserver, listener_ports=RANGE) as operator:  # type: ignore[arg-type]
        _, _, listeners = await subscribe(operator.connect(f"{NS}/envoy-0"))
        assert listener_ports(listeners) == {f"{younger}-l": second}
        await operator.wait_condition(younger, "Ready", "True")
        assert status_port(operator, younger) == second
        # A new one takes the port that was freed.
        operator.create(portless("call-new"))
        await operator.wait_condition("call-new", "Ready", "False")
        await eventually(lambda: status_port(operator, "call-new") == first, "call-new's port in its status")
        assert status_port(operator, younger) == second


async def test_a_full_range_says_so_in_status_and_the_listener_is_served_once_a_port_is_freed(
    apiserver: FakeApiServer,
):
    async with running_operator(apiserver, listener_ports=PortRange(21000, 21000)) as operator:  # type: ignore[arg-type]
        operator.create_pod("envoy-0", INGRESS, "10.0.0.5")
        operator.create(portless("first"))
        await operator.settle()
        ads = operator.connect(f"{NS}/envoy-0")
        await subscribe(ads)
        await operator.wait_condition("first", "Ready", "True")
        operator.create(portless("second"))
        ready = await operator.wait_condition("second", "Ready", "False", "NoFreePort")
        assert "21000-21000" in ready["message"] and "--listener-ports" in ready["message"]
        assert "second-l (UDP)" in ready["message"]
        assert operator.condition("second", "Accepted")["status"] == "True"
        assert operator.status("second")["listeners"] == []
        # A TCP listener has a pool of its own: the same number is free there.
        operator.create(portless("third", tcp=True))
        await eventually(lambda: status_port(operator, "third") == 21000, "third's TCP port in its status")

        operator.objects.delete_namespaced_custom_object("servicemesh.l7mp.io", "v1", NS, PLURAL, "first")
        await eventually(lambda: status_port(operator, "second") == 21000, "second to get the freed port")


async def test_without_listener_ports_a_listener_without_port_is_invalid_naming_field_and_flag(
    apiserver: FakeApiServer,
):
    async with running_operator(apiserver) as operator:
        operator.create(portless("calls"))
        accepted = await operator.wait_condition("calls", "Accepted", "False", "Invalid")
        assert "spec.listeners[0].udp.port" in accepted["message"] and "--listener-ports" in accepted["message"]
        body = copy.deepcopy(vs_body("named", 3000))  # ports named: served as before
        operator.create(body)
        await operator.wait_condition("named", "Accepted", "True")


def served(operator: Operator) -> dict[str, int | str]:
    """name → the port this replica serves it on, or why it waits for one."""
    found: dict[str, int | str] = {}
    for (_, name), record in operator.source.records.items():
        if record.waiting is not None:
            found[name] = "waiting"
        elif record.vs is not None:
            found[name] = record.vs.spec.listeners[0].udp.port
    return found


async def test_replicas_that_saw_events_in_another_order_serve_the_same_ports_before_any_status(
    apiserver: FakeApiServer,
):
    # No replica leads, so no status is written: each computes the ports from the objects alone. The first
    # sees the VirtualServices one by one, youngest first (creation timestamps are to the second, so name
    # order decides who is older); the second lists them all at once. Six listeners, four ports.
    names = [f"call-{i}" for i in range(6)]
    small = PortRange(21000, 21003)
    options: Any = {"listener_ports": small, "leading": lambda: False}
    async with running_operator(apiserver, **options) as first:
        for name in reversed(names):
            first.create(portless(name))
        await first.settle()
        async with running_operator(apiserver, **options) as second:
            await second.settle()
            assert served(first) == served(second)
            assert sorted(p for p in served(first).values() if p != "waiting") == [21000, 21001, 21002, 21003]
            assert list(served(first).values()).count("waiting") == 2
    assert apiserver.list(PLURAL, NS)[0].get("status") is None  # nothing was written: no replica led
