"""Benchmark: what one call's VirtualService or one worker Pod event costs the Kubernetes source, status included.

    .venv/bin/python bench/status_pass.py [N [CYCLES]] [--profile] [--no-pods]

In process, without an API server: a KubernetesSource and its StatusReconciler with N live per-call VirtualServices
(one UDP listener each, its worker pod by the selector `session=<call>`), N worker pods and
PROXIES proxies that ACK whatever they are given. Then, repeatedly, a call starts (its
VirtualService is created), its proxies ACK, and another call ends (its VirtualService is
deleted), and a worker pod turns unready and ready again. Timed in CPU milliseconds: the
event with its flush (cache commit) and the status passes that follow it (one before the
proxies ACK, one after). Reported too: how many statuses the passes wanted written per
call (a create → Ready → delete cycle) — the writer is a stub counting them.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from xds_operator.api.model import NAMESPACE_LABEL
from xds_operator.sources.kubernetes.pods import PodIndex
from xds_operator.sources.kubernetes.reflector import Changed, Synced
from xds_operator.sources.kubernetes.source import KubernetesSource
from xds_operator.status.reconciler import StatusReconciler
from xds_operator.xds.cache import SnapshotCache, Watch
from xds_operator.xds.server import ProxyProgress

NAMESPACE = "media"
PROXY_LABELS = {"app": "envoy-ingress"}
PROXIES = 4
CYCLES = 40


def call_vs(index: int) -> dict[str, Any]:
    name = f"call-{index}"
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1, "uid": f"uid-{name}"},
        "spec": {
            "selector": dict(PROXY_LABELS),
            "listeners": [
                {
                    "name": name,
                    "udp": {
                        "port": 10_000 + index % 50_000,
                        "cluster": {
                            "name": name,
                            "hash_key": "callid",
                            "endpoints": [{"name": "worker", "host": {"selector": {"session": name}}, "port": 2001}],
                        },
                    },
                }
            ],
        },
    }


def pod(name: str, labels: Mapping[str, str], ip: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "labels": dict(labels)},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def worker(index: int, ready: bool = True) -> dict[str, Any]:
    return pod(
        f"worker-{index}",
        {"session": f"call-{index}"},
        f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}",
        ready,
    )


class CountingWriter:
    """The StatusWriter's interface, counting the statuses a pass wants written per VirtualService."""

    def __init__(self) -> None:
        self.wanted: dict[tuple[str, str], int] = {}
        self._latest: dict[tuple[str, str], dict] = {}

    def observed(self, key: Any, status: Any) -> None:
        pass

    def written(self, key: Any) -> dict | None:
        return self._latest.get(key)

    def want(self, key: Any, status: dict) -> None:
        if self._latest.get(key) != status:
            self._latest[key] = status
            self.wanted[key] = self.wanted.get(key, 0) + 1

    def warn(self, warning: Any) -> None:
        pass

    def forget(self, key: Any) -> None:
        self._latest.pop(key, None)


class Proxy:
    def __init__(self, node_id: str, watch: Watch) -> None:
        self.node_id, self.watch = node_id, watch
        self.applied = None


class FakeService:
    """The ADS server as the source sees it: proxies with a watch each, ACKing when told to."""

    def __init__(self, cache: SnapshotCache, labels: Callable[[str], dict[str, str] | None], count: int) -> None:
        self.proxies = [
            Proxy(f"{NAMESPACE}/envoy-{i}", cache.watch(labels(f"{NAMESPACE}/envoy-{i}"), lambda: None))
            for i in range(count)
        ]

    def progress(self) -> list[ProxyProgress]:
        return [ProxyProgress(p.node_id, p.watch.labels, p.watch.snapshot, p.applied, None) for p in self.proxies]

    def ack(self) -> None:
        for proxy in self.proxies:
            proxy.applied = proxy.watch.snapshot

    def reidentify(self, node_ids: Any) -> None:
        pass


def _flush(source: KubernetesSource) -> None:
    """Run the flush the source's timer would run, now (the benchmark drives it step by step)."""
    if source._flush_due is not None:
        source._flush_due.cancel()
        source._flush_due = None
    source.flush()


async def measure(
    count: int, cycles: int = CYCLES, profile: cProfile.Profile | None = None, pod_events: bool = True
) -> dict[str, Any]:
    pods = PodIndex()
    cache = SnapshotCache(pods.ready_ips)
    writer = CountingWriter()
    service = FakeService(cache, lambda node: {**PROXY_LABELS, NAMESPACE_LABEL: NAMESPACE}, PROXIES)
    # Passes run when this benchmark calls reconcile(), not when `due` is set.
    reconciler = StatusReconciler(cache, pods, writer, service.progress, asyncio.Event())  # type: ignore[arg-type]
    source = KubernetesSource(cache, pods, reconciler, service.reidentify)
    source.on_pods(
        Synced(
            [
                *(worker(i) for i in range(count + cycles)),
                *(pod(f"envoy-{i}", PROXY_LABELS, f"10.255.0.{i + 1}") for i in range(PROXIES)),
            ]
        ),
        watch="pods",
    )
    source.on_virtual_services(Synced([call_vs(i) for i in range(count)]), watch="vs")
    _flush(source)
    service.ack()
    reconciler.reconcile()
    writer.wanted.clear()

    event_ms: list[float] = []
    status_ms: list[float] = []
    pod_ms: list[float] = []
    if profile is not None:
        profile.enable()
    for cycle in range(cycles):
        started = time.process_time()
        source.on_virtual_services(Changed("ADDED", call_vs(count + cycle)))
        source.on_virtual_services(Changed("DELETED", call_vs(cycle)))
        _flush(source)
        flushed = time.process_time()
        reconciler.reconcile()  # the proxies have not ACKed yet
        service.ack()
        reconciler.reconcile()
        done = time.process_time()
        event_ms.append((flushed - started) * 1000)
        status_ms.append((done - flushed) * 1000)

        if not pod_events:
            continue
        started = time.process_time()
        source.on_pods(Changed("MODIFIED", worker(count // 2 + cycle, ready=False)))  # a live call's worker
        _flush(source)
        service.ack()
        reconciler.reconcile()
        source.on_pods(Changed("MODIFIED", worker(count // 2 + cycle)))
        _flush(source)
        service.ack()
        reconciler.reconcile()
        pod_ms.append((time.process_time() - started) * 1000 / 2)
    if profile is not None:
        profile.disable()
    source.close()
    reconciler.close()
    calls = [(NAMESPACE, f"call-{count + cycle}") for cycle in range(cycles)]
    writes = [writer.wanted.get(key, 0) for key in calls]
    return {
        "scenario": "status pass",
        "name": f"1 call created + 1 ended among {count:,} live, {PROXIES} proxies",
        "parameters": {"virtual_services": count, "pods": count + cycles, "proxies": PROXIES, "cycles": cycles},
        "figures": {
            "event_cpu_ms": statistics.median(event_ms),
            "status_cpu_ms": statistics.median(status_ms),
            "pod_event_cpu_ms": statistics.median(pod_ms) if pod_ms else float("nan"),
            "status_writes_per_call": statistics.mean(writes),
        },
    }


def run(smoke: bool = False) -> list[dict[str, Any]]:
    return [asyncio.run(measure(200, cycles=5))] if smoke else [asyncio.run(measure(10_000))]


def main(argv: list[str]) -> int:
    numbers = [int(a) for a in argv if not a.startswith("-")]
    count = numbers[0] if numbers else 10_000
    cycles = numbers[1] if len(numbers) > 1 else CYCLES
    profile = cProfile.Profile() if "--profile" in argv else None
    result = asyncio.run(measure(count, cycles, profile=profile, pod_events="--no-pods" not in argv))
    print(result["name"], {k: round(v, 3) for k, v in result["figures"].items()})
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
