"""Status work follows the change, not what exists: after one event only that VirtualService's status is
written, a call's VirtualService is written once over its life, and a cold start writes each status once.
Measured by what the fake API server receives (status PATCHes per VirtualService), never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import test_operator
from ads_client import AdsClient, eventually
from fake_apiserver import FakeApiServer
from test_operator import GROUP, INGRESS, NS, PLURAL, VERSION, Operator, pod_body, running_operator, subscribe, vs_body

apiserver = test_operator.apiserver  # the fake API server fixture

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
    """An Envoy that ACKs every response at once (the VirtualServices here have no EDS clusters)."""
    ads = operator.connect(f"{NS}/envoy-0")
    await subscribe(ads)

    async def ack_everything() -> None:
        while True:
            await ads.ack(await ads.responses.get())

    acking = asyncio.create_task(ack_everything())
    try:
        yield ads
    finally:
        acking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acking


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
        await asyncio.sleep(1.0)  # several status passes without proxies: NoProxies is held back, not written
        async with acking_proxy(operator):
            await all_ready(operator, names)
        assert status_writes(apiserver) == Counter(dict.fromkeys(names, 1))
