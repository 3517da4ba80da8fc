"""Bad VirtualServices in Kubernetes mode: each is rejected in its status and a Warning event that name
the field, while the proxy keeps what it has and the operator keeps applying good changes.

The fake API server stores whatever it is sent (no schema validation), as a cluster without the
CRD's schema would: the operator is the last line of defence. (Directory mode: tests/test_bad_input.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2

from tests.support.ads_client import eventually, resource_names
from tests.support.bad_files import many_listeners
from tests.support.operator import GROUP, INGRESS, NS, PLURAL, VERSION, Operator, subscribe, vs_body
from xds_operator.status.conditions import MAX_MESSAGE
from xds_operator.xds.snapshot import LISTENER

SLOW = 30.0


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def broken(name: str, change) -> dict[str, Any]:
    body = vs_body(name, 3000)
    change(body, body["spec"]["listeners"][0])
    return body


def second_listener_on_the_same_port(body: dict, first: dict) -> None:
    second = {**first, "name": "other-l", "udp": {**first["udp"], "cluster": {**first["udp"]["cluster"], "name": "o"}}}
    body["spec"]["listeners"].append(second)


# (name, how the spec is broken, a part of the error it must get)
CASES = [
    ("not-a-mapping", lambda body, first: body.update(spec=["listeners"]), "spec: expected an object, got a list"),
    (
        "ten-thousand-listeners",
        lambda body, first: body["spec"].update(listeners=many_listeners(10_000)),
        "spec.listeners: must have at most 64 items, got 10000",
    ),
    (
        "envoy-unsafe-name",
        lambda body, first: first.update(name="xdstp://authority/l"),
        "spec.listeners[0].name: 'xdstp://authority/l' must match",
    ),
    (
        "same-port-twice",
        second_listener_on_the_same_port,
        "spec.listeners[1].udp.port: duplicate port 3000 (also in spec.listeners[0])",
    ),
    (
        "lone-surrogate",
        lambda body, first: body["spec"].update(selector={"app": "\ud800"}),
        "spec.selector.app: not valid Unicode text",
    ),
    ("deep-nesting", lambda body, first: body["spec"].update(selector=deep(100)), "spec.selector: expected an object"),
    (
        "wrong-types",
        lambda body, first: first["udp"].update(port="2000", cluster=[]),
        "spec.listeners[0].udp.port: expected an integer, got a string",
    ),
]


@pytest.mark.parametrize(("name", "change", "error"), CASES, ids=[case[0] for case in CASES])
async def test_a_bad_virtualservice_is_rejected_by_field_and_the_rest_keeps_serving(
    operator: Operator, name: str, change, error: str
):
    operator.create(vs_body("calls"))
    operator.create_pod("envoy-0", INGRESS)
    await operator.settle()
    ads = operator.connect(f"{NS}/envoy-0")
    clusters, _, listeners = await subscribe(ads)
    assert resource_names(clusters) == ["calls-c"] and resource_names(listeners) == ["calls-l"]

    operator.create(broken(name, change))
    # Generous: the client and the fake API server take seconds over a 1.4 MB object under load.
    accepted = await operator.wait_condition(name, "Accepted", "False", "Invalid", timeout=SLOW)
    assert error in accepted["message"]
    assert len(accepted["message"]) <= MAX_MESSAGE

    def warning() -> list[dict]:
        return [
            event
            for event in operator.apiserver.list("events", NS)
            if event["involvedObject"]["name"] == name and event["reason"] == "Rejected"
        ]

    await eventually(warning, f"a Warning event on {NS}/{name}", SLOW)
    assert error in warning()[0]["message"]
    await ads.expect_nothing()  # the proxy keeps what it has

    # The operator still applies good changes: the port moves.
    operator.objects.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "calls", {"spec": vs_body("calls", 2001)["spec"]}
    )
    [packed] = (await ads.expect(LISTENER, names=["calls-l"])).resources
    moved = listener_pb2.Listener()
    packed.Unpack(moved)
    assert moved.address.socket_address.port_value == 2001
    assert operator.condition(name, "Accepted")["status"] == "False"
