"""Churn leaves nothing behind: ADS streams and VirtualServices created and deleted against a real
`xds-operator serve` subprocess (bench/churn.py). Directory mode: 3,000 stream cycles here (the
full 10,000 take ~20 s: `make bench` runs them) and 1,000 VirtualService cycles; Kubernetes mode,
against the fake API server: 1,000 VirtualService cycles.

What must come back to where it was once the server settles, read from its /debug/runtime:
asyncio tasks, open streams, identified connections, cache groups, watches, shared snapshots
and VirtualServices; its RSS (from /proc) within 10 %; and a new proxy gets exactly the
resources of the VirtualServices left on disk.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import grpc
from kubernetes import client

from tests.support.fake_apiserver import FakeApiServer
from tests.support.paths import BENCH
from xds_operator.app.shutdown import EXIT_DEADLINE_SECONDS

sys.path.insert(0, str(BENCH))

import churn  # noqa: E402

STREAM_CYCLES = 3_000
VS_CYCLES = 1_000
WARMUP_STREAMS = 1_000  # most of the RSS growth a warm server has happens here (see bench/churn.py)


def test_stream_and_virtualservice_churn_leaks_nothing_and_ends_exact() -> None:
    m = churn.measure(STREAM_CYCLES, VS_CYCLES, WARMUP_STREAMS, churn.BATCH)

    # measure() waited for the counters to equal `before`; say which ones and what they were.
    assert m["after"] == m["before"] == m["final"]
    assert m["before"]["streams"] == m["before"]["connections"] == 0
    assert m["before"]["groups"] == m["before"]["watches"] == m["before"]["snapshots"] == 0
    assert m["before"]["virtual_services"] == churn.KEPT
    assert m["final_listeners"] == m["expected_listeners"]
    assert m["final_clusters"] == m["expected_clusters"]
    assert m["rss_ratio"] <= churn.RSS_RATIO_LIMIT, (
        f"RSS grew from {m['rss_before'] / 2**20:.1f} MB to {m['rss_after'] / 2**20:.1f} MB "
        f"over {STREAM_CYCLES} stream and {VS_CYCLES} VirtualService cycles"
    )
    print(
        f"\nFIGURE churn stream_cycles={STREAM_CYCLES} vs_cycles={VS_CYCLES} "
        f"rss_before_mb={m['rss_before'] / 2**20:.1f} rss_after_mb={m['rss_after'] / 2**20:.1f} "
        f"ratio={m['rss_ratio']:.3f} counters={m['after']}"
    )


def test_churn_benchmark_reports_its_figures() -> None:
    cycles, edits = churn.run(smoke=True)
    assert cycles["figures"]["leaked_counters"] == 0 and cycles["figures"]["final_state_exact"] == 1
    assert edits["figures"]["pushes"] == 20  # one CDS push per edit: the cluster changed, the listener did not
    for result in (cycles, edits):
        assert set(result["ratios"]) == {"rss_after_vs_before"}


# ---------------------------------------------------------------- Kubernetes mode

K8S_VS_CYCLES = 1_000
NS = "churn"


def test_kubernetes_mode_virtualservice_churn_leaks_nothing_and_ends_exact(tmp_path: Path) -> None:
    """VirtualServices created and deleted through the real client against the fake API server; the
    operator (a subprocess) must forget every one of them: records, cache, groups, tasks, memory."""
    with FakeApiServer() as apiserver:
        api = apiserver.api_client()
        core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
        for pod in ("watcher", "final"):  # the proxies' identities: node.id = <namespace>/<pod>
            core.create_namespaced_pod(NS, pod_body(pod))
        kept = [churn.virtual_service(f"kept-{index}", 10000 + index) for index in range(churn.KEPT)]
        for body in kept:
            objects.create_namespaced_custom_object(*VS_API, NS, "virtualservices", body)
        kubeconfig = apiserver.kubeconfig(tmp_path / "kubeconfig")
        server = churn.Server(None, tmp_path / "xds-operator.log", ["--kubeconfig", str(kubeconfig)])
        try:
            m = asyncio.run(kubernetes_churn(server, objects, {f"{b['metadata']['name']}-l" for b in kept}))
            # Kubernetes mode stops within the bound too (watch threads interrupted, client closed).
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=EXIT_DEADLINE_SECONDS + 10) == 0
            exited = time.monotonic() - signalled
        finally:
            server.stop()
            api.close()

    assert m["after"] == m["before"] and m["before"]["streams"] == m["before"]["groups"] == 0
    assert m["before"]["virtual_services"] == churn.KEPT
    assert sorted(m["records"]) == [f"{NS}/kept-{index}" for index in range(churn.KEPT)]
    assert m["listeners"] == {f"kept-{index}-l" for index in range(churn.KEPT)}
    assert m["clusters"] == {f"kept-{index}-c" for index in range(churn.KEPT)}
    ratio = m["rss_after"] / m["rss_before"]
    assert ratio <= churn.RSS_RATIO_LIMIT, f"RSS {m['rss_before'] / 2**20:.1f} → {m['rss_after'] / 2**20:.1f} MB"
    print(
        f"\nFIGURE churn-kubernetes vs_cycles={K8S_VS_CYCLES} rss_before_mb={m['rss_before'] / 2**20:.1f} "
        f"rss_after_mb={m['rss_after'] / 2**20:.1f} ratio={ratio:.3f} sigterm_exit_s={exited:.2f}"
    )


VS_API = ("servicemesh.l7mp.io", "v1")


def pod_body(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": dict(churn.LABELS)},
        "spec": {"containers": [{"name": "envoy", "image": "envoy"}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


async def kubernetes_churn(server: churn.Server, objects: client.CustomObjectsApi, kept: set[str]) -> dict:
    async def cycles(count: int, first: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel:
            watcher = churn.Watcher(channel, node_id=f"{NS}/watcher")
            await watcher.start()
            try:
                await watcher.until(kept)
                for start in range(first, first + count, churn.BATCH):
                    batch = [f"cycle-{index}" for index in range(start, min(first + count, start + churn.BATCH))]
                    for index, name in enumerate(batch):
                        body = churn.virtual_service(name, 20000 + (start + index) % 40000)
                        objects.create_namespaced_custom_object(*VS_API, NS, "virtualservices", body)
                    await watcher.until(kept | {f"{name}-l" for name in batch})
                    for name in batch:
                        objects.delete_namespaced_custom_object(*VS_API, NS, "virtualservices", name)
                    await watcher.until(kept)
            finally:
                await watcher.close()

    idle = churn.counters(server.runtime() or {})
    await cycles(churn.BATCH, first=1_000_000)  # warm-up
    before = server.settled(idle)
    rss_before = server.rss()
    await cycles(K8S_VS_CYCLES, first=0)
    after = server.settled(before)
    rss_after = server.rss()
    listeners, clusters = await churn.final_proxy(server.xds_port, node_id=f"{NS}/final")
    server.settled(before)
    return {
        "before": before,
        "after": after,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "records": server.get("/debug/virtualservices"),
        "listeners": listeners,
        "clusters": clusters,
    }
