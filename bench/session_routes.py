"""Benchmark: N sessions' routes opened at once with xds_operator.sessions.SessionRoutes, against one watch each.

    .venv/bin/python bench/session_routes.py [N ...]

The fake API server runs in a process of its own, and so does a stand-in for the operator (it watches
the VirtualServices and writes each new one's status Ready with a port, four writes in flight, as the
operator's status writer does). In the measured process: N worker pods exist; N opens start together;
timed are each open (create → Ready, returned) and the whole batch, then closing them all. The
floor ("one watch each") is what examples/session_manager.py did before the helper, run as N threads
in one process (cheaper than its N processes): create, then a watch of its own (field-selected) until
Ready, then delete. Counted at the fake: watches opened and requests per session.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from kubernetes import client, watch  # noqa: E402

from tests.support.fake_apiserver_process import FakeApiServerProcess  # noqa: E402
from xds_operator.sessions import SessionRoutes  # noqa: E402
from xds_operator.sessions.manifest import GROUP, PLURAL, VERSION, condition  # noqa: E402
from xds_operator.sources.kubernetes.reflector import Changed, Event, Reflector, Synced  # noqa: E402

SCENARIO = "session routes"
NS = "media"
PROXIES = {"app": "envoy-ingress"}
FIRST_PORT = 20_000


def pods(count: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"worker-{i}", "namespace": NS, "labels": {"session": f"s{i}"}},
            "status": {"podIP": f"10.1.{i // 250}.{i % 250 + 1}", "phase": "Running"},
        }
        for i in range(count)
    ]


# ---------------------------------------------------------------- the operator's stand-in (a process of its own)


def stand_in(url: str, token: str) -> None:
    """Write Ready (with a port from a counter) on every VirtualService the watch shows without it."""
    from tests.support.fake_apiserver import api_client

    objects = client.CustomObjectsApi(api_client(url, token))
    writes = ThreadPoolExecutor(4)
    ports = iter(range(FIRST_PORT, 65_536))
    written: set[str] = set()
    lock = threading.Lock()

    def ready(obj: Any) -> None:
        meta = obj["metadata"]
        if obj.get("status") or meta["uid"] in written:
            return
        with lock:
            written.add(meta["uid"])
            port = next(ports)
        generation = meta.get("generation", 1)
        listener = obj["spec"]["listeners"][0]["name"]
        status = {
            "observedGeneration": generation,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "stand-in",
                    "observedGeneration": generation,
                }
            ],  # fmt: skip
            "listeners": [{"name": listener, "protocol": "udp", "port": port, "addresses": ["10.0.0.1"]}],
        }
        writes.submit(objects.patch_namespaced_custom_object_status, GROUP, VERSION, NS, PLURAL, meta["name"],
                      {"status": status})  # fmt: skip

    def sink(event: Event) -> None:
        if isinstance(event, Synced):
            for obj in event.objects:
                ready(obj)
        elif isinstance(event, Changed) and event.type == "ADDED":
            ready(event.object)

    def listing(**params: Any) -> Any:
        return objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, **params)

    Reflector("stand-in", listing, sink).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes it


# ---------------------------------------------------------------- the two ways to open N routes


async def with_helper(api: client.ApiClient, count: int) -> tuple[list[float], float, float, float]:
    """(open latencies, batch seconds, close seconds, CPU seconds of this process) with one shared watch."""
    async with SessionRoutes(api, namespace=NS, proxy_selector=PROXIES, manager="bench", max_requests=8) as routes:
        cpu, started = time.process_time(), time.monotonic()

        async def open_one(i: int) -> float:
            begun = time.monotonic()
            await routes.open(f"s{i}", worker_port=2001, timeout=120)
            return time.monotonic() - begun

        latencies = await asyncio.gather(*(open_one(i) for i in range(count)))
        batch = time.monotonic() - started
        closing = time.monotonic()
        await asyncio.gather(*(routes.close(f"s{i}") for i in range(count)))
        closed = time.monotonic() - closing
        return list(latencies), batch, closed, time.process_time() - cpu


def one_watch_each(api: client.ApiClient, count: int) -> tuple[list[float], float, float, float]:
    """The same with the pre-helper example's way, per session in a thread: create, watch it alone, delete."""
    objects = client.CustomObjectsApi(api)
    opened = threading.Barrier(count + 1)
    release = threading.Event()

    def session(i: int) -> float:
        name = f"session-s{i}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": PROXIES, "listeners": [{"name": name, "udp": {"cluster": {
                "name": name, "service_discovery": "eds",
                "endpoints": [{"name": "w", "host": {"selector": {"session": f"s{i}"}}, "port": 2001}]}}}]},
        }  # fmt: skip
        begun = time.monotonic()
        objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
        for event in watch.Watch().stream(objects.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                                          field_selector=f"metadata.name={name}", timeout_seconds=120):  # fmt: skip
            if condition(event["object"], "Ready").get("status") == "True":
                break
        latency = time.monotonic() - begun
        opened.wait()
        release.wait()
        objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        return latency

    cpu, started = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(session, i) for i in range(count)]
        opened.wait()
        batch = time.monotonic() - started
        closing = time.monotonic()
        release.set()
        latencies = [future.result() for future in futures]
    return latencies, batch, time.monotonic() - closing, time.process_time() - cpu


def measure(count: int, variant: str) -> dict[str, Any]:
    with FakeApiServerProcess(history_limit=max(10_000, 8 * count)) as fake:
        fake.put(pods(count))
        helper = subprocess.Popen([sys.executable, __file__, "--stand-in", fake.url, fake.token or ""],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert helper.stdout is not None and helper.stdout.readline().strip() == "ready"
            configuration = fake.api_client().configuration
            configuration.connection_pool_maxsize = count + 8 if variant == "one watch each" else 16
            with client.ApiClient(configuration) as api:
                first = len(fake.requests())
                if variant == "shared watch":
                    latencies, batch, closed, cpu = asyncio.run(with_helper(api, count))
                else:
                    latencies, batch, closed, cpu = one_watch_each(api, count)
                mine = [r for r in fake.requests(first) if "labelSelector" in r.query or "fieldSelector" in r.query
                        or r.method != "GET" or "/pods" in r.path]  # fmt: skip
                watches = sum(1 for r in mine if r.query.get("watch") == "true")
                # Per session: the worker pod's LIST, the create, the delete (the watches' own LISTs apart).
                requests = sum(1 for r in mine if "/pods" in r.path or r.method in ("POST", "DELETE"))
        finally:
            assert helper.stdin is not None
            helper.stdin.close()
            helper.wait(10)
        latencies.sort()
        return {
            "scenario": SCENARIO,
            "name": f"{count} sessions, {variant}",
            "parameters": {"sessions": count, "variant": variant},
            "figures": {
                "open_p50_ms": round(1000 * statistics.median(latencies), 1),
                "open_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
                "all_ready_s": round(batch, 2),
                "close_all_s": round(closed, 2),
                "cpu_s": round(cpu, 2),
                "watches": watches,
                "requests_per_session": round(requests / count, 2),
            },
        }


def run(smoke: bool = False, sizes: tuple[int, ...] = (200, 1000)) -> list[dict[str, Any]]:
    results = []
    for count in (20,) if smoke else sizes:
        shared, floor = measure(count, "shared watch"), measure(count, "one watch each")
        mine, theirs = shared["figures"], floor["figures"]
        shared["ratios"] = {
            "all_ready_vs_one_watch_each": round(mine["all_ready_s"] / max(theirs["all_ready_s"], 1e-3), 2),
            "cpu_vs_one_watch_each": round(mine["cpu_s"] / max(theirs["cpu_s"], 1e-3), 2),
        }
        shared["targets"] = {"watches": 1}  # however many sessions
        results += [shared, floor]
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stand-in"]:
        stand_in(sys.argv[2], sys.argv[3])
    else:
        sizes = tuple(int(a) for a in sys.argv[1:]) or (200, 1000)
        for result in run(sizes=sizes):
            print(json.dumps({"name": result["name"], **result["figures"]}))
