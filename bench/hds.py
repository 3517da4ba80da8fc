"""Benchmark: what endpoint health reports (HDS) cost the control plane, at N health-checked endpoints.

    .venv/bin/python bench/hds.py [N [CYCLES]]

In process, without gRPC (the service's stream events are driven directly, as its RPC handler drives them):
N per-call VirtualServices in Kubernetes mode, each with a health-checked cluster of its own whose one endpoint
is its worker pod (N endpoints in all), PROXIES proxies, each with an ADS watch and an HDS stream. Timed in CPU
milliseconds, medians over CYCLES:

- the specifier: built for a proxy's new stream (cold: nothing encoded yet; warm: a second proxy of the same
  group), and after one call is created and one ended (only what changed is looked at); its size;
- a report as Envoy sends one every second (both its per-cluster and its legacy flat list): unchanged (the
  steady state: compared, not decoded), and with one endpoint's health changed (decoded and read);
- the status side: a status pass after a call is created and one ended, with and without the HDS streams
  (the same passes, the same run), and the pass after one endpoint's check fails on every proxy;
- the memory one more proxy's stream holds (traced allocations).

Floors, measured in the same run: encoding the whole specifier from protobuf messages (what a server without
per-cluster encodings would do on each change), and decoding a report (what gRPC would do for every report
before the server sees it).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import status_pass as sp
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.service.health.v3 import hds_pb2

from xds_operator.api.model import NAMESPACE_LABEL
from xds_operator.sources.kubernetes.pods import PodIndex
from xds_operator.sources.kubernetes.reflector import Changed, Synced
from xds_operator.sources.kubernetes.source import KubernetesSource
from xds_operator.status.reconciler import StatusReconciler
from xds_operator.xds import health as health_module
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.hds import HealthDiscoveryService
from xds_operator.xds.health import FAILING_REPORTS

PROXIES = 4
EXTRA = 8  # more streams, to measure what one holds
CYCLES = 20
HEALTH_PORT = 1233


def call_vs(index: int) -> dict[str, Any]:
    document = sp.call_vs(index)
    cluster = document["spec"]["listeners"][0]["udp"]["cluster"]
    cluster["health_check"] = {"interval": 500}
    cluster["endpoints"][0]["health_check_port"] = HEALTH_PORT
    return document


def _ms(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) * 1000


def envoy_report(specifier: bytes, failing: str | None = None) -> bytes:
    """The report Envoy sends for a specifier: every endpoint healthy but `failing` (an "ip:port")."""
    message = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
    response = message.endpoint_health_response
    for cluster in hds_pb2.HealthCheckSpecifier.FromString(specifier).cluster_health_checks:
        cluster_health = response.cluster_endpoints_health.add(cluster_name=cluster.cluster_name)
        locality = cluster_health.locality_endpoints_health.add()
        for endpoint in cluster.locality_endpoints[0].endpoints:
            address = endpoint.address.socket_address
            bad = failing == f"{address.address}:{address.port_value}"
            reported = locality.endpoints_health.add(
                health_status=health_check_pb2.UNHEALTHY if bad else health_check_pb2.HEALTHY
            )
            reported.endpoint.address.CopyFrom(endpoint.address)
            response.endpoints_health.add().CopyFrom(reported)
    return message.SerializeToString()


def floor_specifier(specifier: bytes) -> float:
    """Build the same specifier from messages and encode it, all of it."""
    parsed = hds_pb2.HealthCheckSpecifier.FromString(specifier)
    entries = list(parsed.cluster_health_checks)

    def build() -> bytes:
        message = hds_pb2.HealthCheckSpecifier()
        for entry in entries:
            rebuilt = message.cluster_health_checks.add(cluster_name=entry.cluster_name)
            rebuilt.health_checks.extend(entry.health_checks)
            rebuilt.locality_endpoints.add().endpoints.extend(entry.locality_endpoints[0].endpoints)
        message.interval.seconds = 1
        return message.SerializeToString(deterministic=True)

    return _ms(build)


async def measure(count: int, cycles: int = CYCLES) -> dict[str, Any]:
    pods = PodIndex()
    cache = SnapshotCache(pods.ready_ips)
    writer = sp.CountingWriter()
    labels = {**sp.PROXY_LABELS, NAMESPACE_LABEL: sp.NAMESPACE}
    service = sp.FakeService(cache, lambda node: labels, PROXIES)
    health_changed: set[str] = set()
    health = HealthDiscoveryService(cache, lambda node: labels, on_health=health_changed.update)
    # Two reconcilers over the same source: one reads the HDS streams, one does not (the floor).
    with_health = StatusReconciler(
        cache, pods, writer, service.progress, asyncio.Event(), health=health, health_changed=health_changed
    )  # type: ignore[arg-type]
    without = StatusReconciler(cache, pods, sp.CountingWriter(), service.progress, asyncio.Event())  # type: ignore[arg-type]
    source = KubernetesSource(cache, pods, _Both(with_health, without), service.reidentify)  # type: ignore[arg-type]
    source.on_pods(
        Synced(
            [
                *(sp.worker(i) for i in range(count + cycles)),
                *(sp.pod(f"envoy-{i}", sp.PROXY_LABELS, f"10.255.0.{i + 1}") for i in range(PROXIES)),
            ]
        ),
        watch="pods",
    )
    source.on_virtual_services(Synced([call_vs(i) for i in range(count)]), watch="vs")
    sp._flush(source)
    service.ack()

    # The specifier, for each proxy's new stream.
    health_module._MEMO.clear()
    specifiers: list[bytes] = []
    first_ms: list[float] = []
    for index in range(PROXIES):
        health.open(index, base_pb2.Node(id=f"{sp.NAMESPACE}/envoy-{index}"), lambda: None)
        first_ms.append(_ms(lambda index=index: specifiers.append(health.snapshot_changed(index) or b"")))
    specifier = specifiers[0]
    reports = [envoy_report(s) for s in specifiers]
    for index, report in enumerate(reports):
        for _ in range(FAILING_REPORTS):
            health.reported(index, report)
    with_health.reconcile()
    without.reconcile()

    change_ms: list[float] = []
    same_report_ms: list[float] = []
    changed_report_ms: list[float] = []
    status_health_ms: list[float] = []
    status_floor_ms: list[float] = []
    flip_ms: list[float] = []
    first_report_ms: list[float] = []
    unhealthy_seen: list[bool] = []
    floor_parse_ms: list[float] = []
    floor_build_ms: list[float] = []
    for cycle in range(cycles):
        source.on_virtual_services(Changed("ADDED", call_vs(count + cycle)))
        source.on_virtual_services(Changed("DELETED", call_vs(cycle)))
        sp._flush(source)
        sent: list[bytes | None] = []
        change_ms.append(
            _ms(lambda sent=sent: sent.extend(health.snapshot_changed(i) for i in range(PROXIES))) / PROXIES
        )
        reports = [envoy_report(s) if s is not None else r for s, r in zip(sent, reports, strict=True)]
        service.ack()  # the proxies ACK within milliseconds; their next health report comes within a second
        # The same pass with and without the HDS streams, in alternating order (the first warms what both read).
        if cycle % 2:
            status_floor_ms.append(_ms(without.reconcile))
            status_health_ms.append(_ms(with_health.reconcile))
        else:
            status_health_ms.append(_ms(with_health.reconcile))
            status_floor_ms.append(_ms(without.reconcile))
        for index, report in enumerate(reports):
            health.reported(index, report)  # the new endpoint reported (healthy)
        first_report_ms.append(_ms(with_health.reconcile))

        same_report_ms.append(_ms(lambda report=reports[0]: health.reported(0, report)))
        floor_parse_ms.append(
            _ms(lambda report=reports[0]: hds_pb2.HealthCheckRequestOrEndpointHealthResponse.FromString(report))
        )
        floor_build_ms.append(floor_specifier(sent[0] or specifier))

        # One worker's check fails on every proxy: FAILING_REPORTS reports each, then a status pass.
        victim = sp.worker(count // 2 + cycle)["status"]["podIP"] + ":2001"
        failing = [envoy_report(s, failing=victim) for s in (sent[0] or specifier,) * PROXIES]
        changed_report_ms.append(_ms(lambda report=failing[0]: health.reported(0, report)))
        for index in range(PROXIES):
            for _ in range(FAILING_REPORTS):
                health.reported(index, failing[index])
        flip_ms.append(_ms(with_health.reconcile))
        victim_key = (sp.NAMESPACE, f"call-{count // 2 + cycle}")
        ready = {c["type"]: c for c in writer.written(victim_key)["conditions"]}["Ready"]
        unhealthy_seen.append(ready["reason"] == "Unhealthy")
        for index in range(PROXIES):  # and passes again
            health.reported(index, reports[index])
        with_health.reconcile()
    # What one more proxy's stream holds: its targets and health states, its last report and that report's layout
    # (and its share of the index of who checks which cluster): EXTRA more streams, the memory divided by EXTRA.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for extra in range(PROXIES, PROXIES + EXTRA):
        health.open(extra, base_pb2.Node(id=f"{sp.NAMESPACE}/envoy-extra-{extra}"), lambda: None)
        health.snapshot_changed(extra)
        for _ in range(FAILING_REPORTS):
            health.reported(extra, bytes(bytearray(reports[0])))  # a report of its own, as received
    gc.collect()  # what is held, not garbage waiting for the collector
    held_kb = (tracemalloc.get_traced_memory()[0] - before) / 1024 / EXTRA
    tracemalloc.stop()
    source.close()
    with_health.close()
    without.close()
    view = health.view(f"{sp.NAMESPACE}/envoy-0") or {}
    return {
        "scenario": "health reports (HDS)",
        "name": f"{count:,} health-checked endpoints (a cluster per call), {PROXIES} proxies",
        "parameters": {"endpoints": count, "proxies": PROXIES, "cycles": cycles},
        "figures": {
            "specifier_bytes": len(specifier),
            "report_bytes": len(reports[0]),
            "specifier_new_stream_cold_ms": first_ms[0],
            "specifier_new_stream_warm_ms": statistics.median(first_ms[1:]) if len(first_ms) > 1 else first_ms[0],
            "specifier_after_one_call_ms": statistics.median(change_ms),
            "report_unchanged_ms": statistics.median(same_report_ms),
            "report_one_endpoint_changed_ms": statistics.median(changed_report_ms),
            "status_pass_with_hds_ms": statistics.median(status_health_ms),
            "status_pass_without_hds_ms": statistics.median(status_floor_ms),
            "status_pass_one_endpoint_fails_ms": statistics.median(flip_ms),
            "floor_encode_whole_specifier_ms": statistics.median(floor_build_ms),
            "floor_decode_report_ms": statistics.median(floor_parse_ms),
            "endpoints_checked_per_proxy": view.get("endpoints", 0),
            "ready_unhealthy_after_flip": sum(unhealthy_seen) / len(unhealthy_seen),
            "memory_per_proxy_kb": held_kb,
            "status_pass_new_call_first_report_ms": statistics.median(first_report_ms),
            "status_writes_per_new_call": statistics.mean(
                writer.wanted.get((sp.NAMESPACE, f"call-{count + cycle}"), 0) for cycle in range(cycles)
            ),
        },
        "ratios": {
            "one_call_vs_encode_floor": statistics.median(change_ms) / max(statistics.median(floor_build_ms), 1e-9),
            "changed_report_vs_decode_floor": statistics.median(changed_report_ms)
            / max(statistics.median(floor_parse_ms), 1e-9),
        },
    }


class _Both:
    """Hands the source's events to two reconcilers (the benchmark compares their passes)."""

    def __init__(self, *reconcilers: StatusReconciler) -> None:
        self._reconcilers = reconcilers

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            results = [getattr(r, name)(*args, **kwargs) for r in self._reconcilers]
            return results[0]

        return call


def run(smoke: bool = False) -> list[dict[str, Any]]:
    return [asyncio.run(measure(50, cycles=3))] if smoke else [asyncio.run(measure(2_000))]


def main(argv: list[str]) -> int:
    numbers = [int(a) for a in argv if not a.startswith("-")]
    count = numbers[0] if numbers else 2_000
    cycles = numbers[1] if len(numbers) > 1 else CYCLES
    result = asyncio.run(measure(count, cycles))
    print(result["name"])
    for key, value in {**result["figures"], **result["ratios"]}.items():
        print(f"  {key}: {value:,.3f}" if isinstance(value, float) else f"  {key}: {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
