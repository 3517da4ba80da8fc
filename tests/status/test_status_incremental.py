"""Status work follows the change, not what exists: after one event only that VirtualService's status is
written, a call's VirtualService is written once over its life, and a cold start writes each status once.
Measured by what the fake API server receives (status PATCHes per VirtualService), never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from tests.support.ads_client import AdsClient, eventually
from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import (
    GROUP,
    INGRESS,
    NS,
    PLURAL,
    VERSION,
    Operator,
    pod_body,
    running_operator,
    vs_body,
)
from xds_operator.xds.snapshot import CLUSTER, LISTENER

LONG_HOLD = 30.0  # first statuses wait for Ready this long: the outcome does not depend on how fast the ACKs are


def call(index: int) -> dict:
    """A call's VirtualService: its own port, its worker pod by the selector session=call-<index>."""
    return vs_body(f"call-{index}", 3000 + index, host={"selector": {"session": f"call-{index}"}})


def worker(index: int, ready: bool = True) -> dict:
    return pod_body(f"worker-{index}", {"session": f"call-{index}"}, f"10.1.0.{index + 1}", ready)


def status_writes(apiserver: FakeApiServer) -> Counter[str]:
    """Status PATCHes received, per VirtualService name."""
    return Counter(
        request.path.rsplit("/", 2)[-2]
        for request in apiserver.requests
        if request.method == "PATCH" and request.path.endswith("/status")
    )


@contextlib.asynccontextmanager
async def acking_proxy(operator: Operator) -> AsyncIterator[AdsClient]:
    """An Envoy that ACKs every response as it arrives (the VirtualServices here have no EDS clusters).

    Responses are taken in whatever order they come: while the operator is still applying the pods and
    VirtualServices it listed, a second CDS push can arrive before the first LDS response, so nothing
    here waits for one type by reading the next response.
    """
    ads = operator.connect(f"{NS}/envoy-0")
    received: set[str] = set()

    async def ack_everything() -> None:
        while True:
            response = await ads.responses.get()
            received.add(response.type_url)
            await ads.ack(response)

    # Both requests before the ACKing task starts: a gRPC stream takes one write at a time.
    await ads.send(CLUSTER)
    await ads.send(LISTENER)
    acking = asyncio.create_task(ack_everything())
    try:
        await eventually(lambda: {CLUSTER, LISTENER} <= received, "the proxy's first CDS and LDS responses")
        yield ads
    finally:
        acking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acking


async def status_pass(operator: Operator) -> None:
    """Ask the reconciler for a pass and wait until one has run (passes are not otherwise observable)."""
    reconciler = operator.plane.reconciler
    ran = asyncio.Event()
    original = reconciler.reconcile

    def reconcile() -> None:
        original()
        ran.set()

    reconciler.reconcile = reconcile  # type: ignore[method-assign]
    try:
        reconciler.request_pass()
        await asyncio.wait_for(ran.wait(), 15.0)
    finally:
        reconciler.reconcile = original  # type: ignore[method-assign]


async def all_ready(operator: Operator, names: list[str]) -> None:
    await eventually(
        lambda: all(operator.condition(name, "Ready").get("status") == "True" for name in names),
        f"{len(names)} VirtualServices Ready",
    )


async def test_one_pod_or_virtualservice_event_among_many_writes_only_that_status(apiserver: FakeApiServer):
    apiserver.put(pod_body("envoy-0", INGRESS, "10.0.0.1"))
    for index in range(30):
        apiserver.put(worker(index))
        apiserver.put(call(index))
    async with running_operator(apiserver, first_status_hold=LONG_HOLD) as operator, acking_proxy(operator):
        await all_ready(operator, [f"call-{index}" for index in range(30)])
        before = status_writes(apiserver)

        apiserver.put(worker(7, ready=False))  # the kubelet: call-7's worker is no longer Ready
        await operator.wait_condition("call-7", "Ready", "False", "NoReadyEndpoints")
        apiserver.put(worker(30))
        operator.create(call(30))
        await operator.wait_condition("call-30", "Ready", "True")

        assert status_writes(apiserver) - before == Counter({"call-7": 1, "call-30": 1})


async def test_a_calls_virtualservice_is_written_once_from_create_to_delete(apiserver: FakeApiServer):
    apiserver.put(pod_body("envoy-0", INGRESS, "10.0.0.1"))
    async with running_operator(apiserver, first_status_hold=LONG_HOLD) as operator, acking_proxy(operator):
        for index in range(5):
            apiserver.put(worker(index))
            operator.create(call(index))
            await operator.wait_condition(f"call-{index}", "Ready", "True")  # no Pending on the way
            operator.objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, f"call-{index}")
        await operator.settle()
        assert status_writes(apiserver) == Counter({f"call-{index}": 1 for index in range(5)})


async def test_a_cold_start_writes_each_status_once_when_the_proxies_come_within_the_startup_hold(
    apiserver: FakeApiServer,
):
    apiserver.put(pod_body("envoy-0", INGRESS, "10.0.0.1"))
    names = [f"call-{index}" for index in range(20)]
    for index in range(20):
        apiserver.put(worker(index))
        apiserver.put(call(index))
    async with running_operator(apiserver, startup_status_hold=LONG_HOLD) as operator:
        await status_pass(operator)  # a status pass without proxies: NoProxies is held back, not written
        assert status_writes(apiserver) == Counter()
        async with acking_proxy(operator):
            await all_ready(operator, names)
        assert status_writes(apiserver) == Counter(dict.fromkeys(names, 1))
