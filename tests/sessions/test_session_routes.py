"""xds_operator.sessions.SessionRoutes against the fake API server through the real `kubernetes` client.

No operator runs here: the test writes each VirtualService's status as the operator would (Ready, the
listener's port and proxy addresses), so the helper's side is proven on its own, including listeners
without a port whose port only the status names.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import client

from tests.support.fake_apiserver import FakeApiServer
from xds_operator.sessions import (
    MANAGER_LABEL,
    SESSION_LABEL,
    RouteDeleted,
    RouteError,
    RouteNotReady,
    SessionRoutes,
    WorkerPodNotFound,
)

PLURAL, NS = "virtualservices", "media"
PROXIES = {"app": "envoy-ingress"}


@pytest.fixture
async def routes(api: client.ApiClient) -> AsyncIterator[SessionRoutes]:
    async with SessionRoutes(api, namespace=NS, proxy_selector=PROXIES, manager="app-0") as session_routes:
        yield session_routes


def worker_pod(server: FakeApiServer, name: str, labels: dict[str, str], **status: Any) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels}}
    return server.put({**body, "status": {"podIP": "10.1.0.9", **status}})


def write_status(
    server: FakeApiServer,
    name: str,
    ready: str = "True",
    reason: str = "Ready",
    message: str = "1 of 1 selected proxies run it",
    port: int | None = 31000,
    addresses: tuple[str, ...] = ("10.0.0.5",),
    accepted: str = "the spec is valid",
) -> None:
    """What the operator writes: the Ready condition and status.listeners, for the current generation."""
    obj = server.get(PLURAL, NS, name)
    assert obj is not None, f"{name} does not exist"
    generation = obj["metadata"]["generation"]
    conditions = [
        {"type": "Accepted", "status": "True" if reason != "Invalid" else "False", "message": accepted},
        {"type": "Ready", "status": ready, "reason": reason, "message": message},
    ]
    listeners = [{"name": name, "protocol": "udp", "port": port, "addresses": list(addresses)}] if port else []
    obj["status"] = {
        "observedGeneration": generation,
        "conditions": [{**c, "observedGeneration": generation} for c in conditions],
        "listeners": listeners,
    }
    server.put(obj)


async def created(server: FakeApiServer, *names: str) -> None:
    assert await server.wait_for_async(lambda s: all(s.get(PLURAL, NS, n) for n in names), timeout=15)


async def deleted(server: FakeApiServer, *names: str) -> bool:
    return await server.wait_for_async(lambda s: not any(s.get(PLURAL, NS, n) for n in names), timeout=15)


async def test_the_route_is_owned_by_the_sessions_worker_pod_and_read_from_the_status(server, routes) -> None:
    pod = worker_pod(server, "worker-7", {"session": "abc"})
    worker_pod(server, "worker-8", {"session": "other"})
    opening = asyncio.ensure_future(routes.open("abc", worker_port=2001, port=3000))
    await created(server, "session-abc")
    # The operator may report another port than the one asked for (it reports what the proxies run).
    write_status(server, "session-abc", port=3000, addresses=("10.0.0.5", "10.0.0.6"))
    route = await opening

    vs = server.get(PLURAL, NS, "session-abc")
    assert vs["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "worker-7",
            "uid": pod["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    assert vs["metadata"]["labels"] == {SESSION_LABEL: "abc", MANAGER_LABEL: "app-0"}
    (listener,) = vs["spec"]["listeners"]
    assert listener["udp"]["port"] == 3000
    assert listener["udp"]["cluster"]["endpoints"][0]["host"] == {"selector": {"session": "abc"}}
    assert (route.name, route.namespace, route.worker, route.uid) == (
        "session-abc",
        NS,
        "worker-7",
        vs["metadata"]["uid"],
    )
    assert route.port == 3000 and route.addresses == ("10.0.0.5", "10.0.0.6")
    assert route.address in ("10.0.0.5:3000", "10.0.0.6:3000")
    assert routes.open_sessions == ["abc"]


async def test_many_sessions_open_at_once_over_one_watch_and_get_the_ports_the_status_names(server, api) -> None:
    count = 200
    for i in range(count):
        worker_pod(server, f"worker-{i}", {"session": f"s{i}"})
    server.clear_requests()
    async with SessionRoutes(api, namespace=NS, proxy_selector=PROXIES, manager="app-0") as routes:
        opening = [asyncio.ensure_future(routes.open(f"s{i}", worker_port=2001, timeout=60)) for i in range(count)]
        names = [f"session-s{i}" for i in range(count)]
        await created(server, *names)
        for i, name in enumerate(names):
            # No port asked for: the listener leaves it out, and the operator's choice is in the status.
            assert "port" not in server.get(PLURAL, NS, name)["spec"]["listeners"][0]["udp"]
            write_status(server, name, port=40000 + i)
        opened = await asyncio.gather(*opening)
        assert [route.port for route in opened] == [40000 + i for i in range(count)]
        assert sorted(routes.open_sessions) == sorted(f"s{i}" for i in range(count))
        watches = [r for r in server.requests if r.path.endswith(f"/{PLURAL}") and r.query.get("watch") == "true"]
        assert len(watches) == 1 and watches[0].query["labelSelector"] == f"{MANAGER_LABEL}=app-0"
    assert server.list(PLURAL, NS) == []  # leaving the context deleted every route


async def test_a_session_not_ready_in_time_is_deleted_and_the_error_names_the_reason(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "late"})
    opening = asyncio.ensure_future(routes.open("late", worker_port=2001, timeout=1.0))
    await created(server, "session-late")
    write_status(server, "session-late", "False", "NoReadyEndpoints", "cluster session-late has no ready endpoint")
    with pytest.raises(RouteNotReady) as not_ready:
        await opening
    assert not_ready.value.reason == "NoReadyEndpoints"
    assert not_ready.value.detail == "cluster session-late has no ready endpoint"
    assert "media/session-late not Ready after 1s: NoReadyEndpoints: cluster session-late" in str(not_ready.value)
    assert not_ready.value.session == "late"
    assert server.get(PLURAL, NS, "session-late") is None  # deleted before the error was raised
    assert routes.open_sessions == []


async def test_without_any_status_the_timeout_says_so(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "quiet"})
    with pytest.raises(RouteNotReady) as not_ready:
        await routes.open("quiet", worker_port=2001, timeout=0.5)
    assert not_ready.value.reason in ("NoStatus", "NotSeen")
    assert server.get(PLURAL, NS, "session-quiet") is None


async def test_an_invalid_route_fails_at_once_with_the_validation_errors(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "bad"})
    opening = asyncio.ensure_future(routes.open("bad", worker_port=2001, timeout=600))
    await created(server, "session-bad")
    problem = "spec.listeners[0].udp.port: required"
    write_status(server, "session-bad", "False", "Invalid", "generation 1 is invalid (see Accepted)", accepted=problem)
    with pytest.raises(RouteNotReady) as invalid:
        await asyncio.wait_for(opening, 30)  # not the 600 s of its timeout
    assert invalid.value.reason == "Invalid" and invalid.value.detail == problem
    assert "session-bad is invalid: Invalid: spec.listeners[0].udp.port: required" in str(invalid.value)
    assert server.get(PLURAL, NS, "session-bad") is None


async def test_close_deletes_the_route_and_the_session_can_open_again(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "again"})
    for attempt in range(2):
        opening = asyncio.ensure_future(routes.open("again", worker_port=2001))
        await created(server, "session-again")
        write_status(server, "session-again", port=31000 + attempt)
        route = await opening
        assert route.port == 31000 + attempt
        await route.close()
        assert server.get(PLURAL, NS, "session-again") is None
        await route.close()  # closing twice is harmless
        await route.wait_deleted()
    assert routes.open_sessions == []


async def test_leaving_the_context_deletes_open_routes_and_gives_up_opens_in_flight(server, api) -> None:
    worker_pod(server, "worker-1", {"session": "open"})
    worker_pod(server, "worker-2", {"session": "pending"})
    async with SessionRoutes(api, namespace=NS, proxy_selector=PROXIES, manager="app-0") as routes:
        opening = asyncio.ensure_future(routes.open("open", worker_port=2001))
        await created(server, "session-open")
        write_status(server, "session-open")
        await opening
        pending = asyncio.ensure_future(routes.open("pending", worker_port=2001, timeout=600))
        await created(server, "session-pending")
    with pytest.raises(RouteError, match="closed before it was Ready"):
        await pending
    assert server.list(PLURAL, NS) == []


async def test_without_a_worker_pod_nothing_is_created(server, routes) -> None:
    worker_pod(server, "finished", {"session": "gone"}, phase="Succeeded")
    with pytest.raises(WorkerPodNotFound, match="no running pod labelled session=gone in namespace media"):
        await routes.open("gone", worker_port=2001)
    assert not any(r.method == "POST" for r in server.requests)
    worker_pod(server, "a", {"session": "two"})
    worker_pod(server, "b", {"session": "two"})
    with pytest.raises(RouteError, match=r"more than one pod labelled session=two .*\(a, b\): label exactly one"):
        await routes.open("two", worker_port=2001)
    assert server.list(PLURAL, NS) == []


async def test_deleting_the_worker_pod_deletes_the_route(server, api, routes) -> None:
    worker_pod(server, "worker-1", {"session": "doomed"})
    opening = asyncio.ensure_future(routes.open("doomed", worker_port=2001))
    await created(server, "session-doomed")
    write_status(server, "session-doomed")
    route = await opening
    client.CoreV1Api(api).delete_namespaced_pod("worker-1", NS)  # the pod dies: the garbage collector acts
    await asyncio.wait_for(route.wait_deleted(), 15)
    assert server.get(PLURAL, NS, "session-doomed") is None
    assert routes.open_sessions == []


async def test_deleting_the_worker_pod_while_waiting_fails_the_open(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "short"})
    opening = asyncio.ensure_future(routes.open("short", worker_port=2001, timeout=600))
    await created(server, "session-short")
    server.delete("pods", NS, "worker-1")
    with pytest.raises(RouteDeleted, match="was its worker pod worker-1 deleted"):
        await asyncio.wait_for(opening, 30)


async def test_a_cancelled_open_deletes_what_it_created(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "cancelled"})
    opening = asyncio.ensure_future(routes.open("cancelled", worker_port=2001, timeout=600))
    await created(server, "session-cancelled")
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert server.get(PLURAL, NS, "session-cancelled") is None


async def test_sweep_deletes_what_an_earlier_run_of_the_manager_left(server, routes) -> None:
    for name, manager in (("session-left", "app-0"), ("session-other", "app-1")):
        server.put({"apiVersion": "servicemesh.l7mp.io/v1", "kind": "VirtualService",
                    "metadata": {"name": name, "namespace": NS, "labels": {MANAGER_LABEL: manager}}})  # fmt: skip
    worker_pod(server, "worker-1", {"session": "live"})
    opening = asyncio.ensure_future(routes.open("live", worker_port=2001))
    await created(server, "session-live")
    write_status(server, "session-live")
    await opening
    assert await routes.sweep() == ["session-left"]
    assert sorted(o["metadata"]["name"] for o in server.list(PLURAL, NS)) == ["session-live", "session-other"]


async def test_one_session_id_opens_once(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "dup"})
    opening = asyncio.ensure_future(routes.open("dup", worker_port=2001))
    await created(server, "session-dup")
    with pytest.raises(RouteError, match="already open"):
        await routes.open("dup", worker_port=2001)
    with pytest.raises(ValueError, match="lowercase"):
        await routes.open("Bad_Id", worker_port=2001)
    write_status(server, "session-dup")
    await opening


async def test_a_tcp_route_and_closing_a_session_while_it_opens(server, routes) -> None:
    worker_pod(server, "worker-1", {"session": "tcp"})
    opening = asyncio.ensure_future(routes.open("tcp", worker_port=5060, port=5060, protocol="tcp", timeout=600))
    await created(server, "session-tcp")
    (listener,) = server.get(PLURAL, NS, "session-tcp")["spec"]["listeners"]
    assert set(listener) == {"name", "tcp"} and listener["tcp"]["port"] == 5060
    await routes.close("tcp")  # given up while it waits for Ready: open() fails, nothing is left
    with pytest.raises(RouteError, match="closed before it was Ready"):
        await opening
    assert server.get(PLURAL, NS, "session-tcp") is None and routes.open_sessions == []


async def test_a_failing_watch_is_named_when_the_open_times_out(server, api) -> None:
    worker_pod(server, "worker-1", {"session": "blind"})
    server.fail_next(1000, 403, path_contains=f"/{PLURAL}?", method="GET")  # the watch's list, not the create
    async with SessionRoutes(api, namespace=NS, proxy_selector=PROXIES) as routes:
        with pytest.raises(RouteNotReady) as blind:
            await routes.open("blind", worker_port=2001, timeout=1.0)
    assert blind.value.reason == "NotWatched" and "HTTP 403" in blind.value.detail
    assert server.get(PLURAL, NS, "session-blind") is None


def test_importing_the_helper_starts_nothing_of_the_operator() -> None:
    code = (
        "import sys, threading, xds_operator.sessions\n"
        "operator = ('grpc', 'google.protobuf', 'xds_operator.xds', 'xds_operator.api')\n"
        "loaded = [m for m in operator if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert threading.active_count() == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
