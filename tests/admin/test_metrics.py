"""Metrics of a running control plane, without Envoy: what /metrics reports after what a proxy received,
ACKed and NACKed (an ADS client acting like Envoy), and after what the fake API server did to the watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ads_client import AdsClient, DeltaAdsClient, eventually
from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import INGRESS, NS, pod_body, subscribe, vs_body
from tests.support.vs import INGRESS as ADS_INGRESS
from tests.support.vs import listener_spec, vs_document
from xds_operator.admin.metrics import Metrics
from xds_operator.app.wiring import build_directory_plane, build_kubernetes_plane
from xds_operator.xds.server import start_server
from xds_operator.xds.snapshot import CLUSTER, LISTENER

LABELS = ADS_INGRESS  # what tests.support.vs's VirtualServices select


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the exposition, parsed back: (name, labels) → value."""
    text = metrics.exposition().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


class Plane:
    """A directory-mode control plane, built as `serve --dir` builds it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        plane = build_directory_plane(directory)
        self.metrics, self.source, self.service = plane.metrics, plane.source, plane.service

    def write(self, name: str, *documents: dict) -> None:
        (self.directory / name).write_text(yaml.safe_dump_all(documents))
        self.source.rescan()


@pytest.fixture
async def planes(tmp_path: Path) -> AsyncIterator[list[tuple[Plane, grpc.aio.Channel]]]:
    """Two control planes in one process, each with its own registry."""
    made = []
    for number in range(2):
        (tmp_path / str(number)).mkdir()
        plane = Plane(tmp_path / str(number))
        server, port = await start_server(plane.service, "127.0.0.1:0")
        made.append((plane, server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")))
    yield [(plane, channel) for plane, _, channel in made]
    for _, server, channel in made:
        await channel.close()
        await server.stop(None)


@pytest.mark.parametrize("client_class", [AdsClient, DeltaAdsClient], ids=["sotw", "delta"])
async def test_pushes_bytes_acks_and_nacks_are_counted_per_type_in_each_planes_own_registry(planes, client_class):
    (plane, channel), (other, _) = planes
    plane.write("calls.yaml", vs_document("calls", [listener_spec("calls-l", 2000, "calls-c")]))
    ads = client_class(channel, "edge-1", LABELS)
    received = {CLUSTER: 0, LISTENER: 0}
    clusters = await ads.subscribe_and_ack(CLUSTER)
    listeners = await ads.subscribe_and_ack(LISTENER)
    received[CLUSTER] += clusters.ByteSize()
    received[LISTENER] += listeners.ByteSize()
    variant = "delta" if client_class is DeltaAdsClient else "sotw"

    await eventually(lambda: value(plane.metrics, "xds_operator_xds_ack_latency_seconds_count", type="LDS") == 1)
    assert value(plane.metrics, "xds_operator_connected_proxies", variant=variant) == 1
    assert value(plane.metrics, "xds_operator_proxy_groups") == 1
    assert value(plane.metrics, "xds_operator_xds_pushes_total", type="CDS") == 1
    assert value(plane.metrics, "xds_operator_xds_pushes_total", type="LDS") == 1
    # The bytes counted are the bytes the proxy received.
    assert value(plane.metrics, "xds_operator_xds_pushed_bytes_total", type="CDS") == received[CLUSTER]
    assert value(plane.metrics, "xds_operator_xds_pushed_bytes_total", type="LDS") == received[LISTENER]
    assert value(plane.metrics, "xds_operator_xds_ack_latency_seconds_count", type="CDS") == 1
    assert value(plane.metrics, "xds_operator_snapshot_build_seconds_count") >= 1
    assert value(plane.metrics, "xds_operator_virtual_services", condition="Accepted", status="True") == 1

    # A change: the listener's new port is rejected.
    plane.write("calls.yaml", vs_document("calls", [listener_spec("calls-l", 20001, "calls-c")]))
    rejected = await ads.expect(LISTENER)
    await ads.nack(rejected, "cannot bind '0.0.0.0:20001': Address already in use")
    await eventually(lambda: value(plane.metrics, "xds_operator_xds_nacks_total", type="LDS") == 1)
    assert value(plane.metrics, "xds_operator_xds_pushes_total", type="LDS") == 2
    assert value(plane.metrics, "xds_operator_xds_pushed_bytes_total", type="LDS") == (
        received[LISTENER] + rejected.ByteSize()
    )
    assert value(plane.metrics, "xds_operator_xds_ack_latency_seconds_count", type="LDS") == 1  # a NACK is no ACK
    assert value(plane.metrics, "xds_operator_xds_nacks_total", type="CDS") == 0

    # The other control plane in this process saw none of it.
    assert value(other.metrics, "xds_operator_xds_pushes_total", type="CDS") == 0
    assert value(other.metrics, "xds_operator_xds_nacks_total", type="LDS") == 0
    await ads.close()
    await eventually(lambda: value(plane.metrics, "xds_operator_connected_proxies", variant=variant) == 0)


# -- Kubernetes mode ---------------------------------------------------------------------------


@pytest.fixture
def apiserver() -> AsyncIterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield server


async def test_kubernetes_metrics_follow_conditions_source_errors_and_watch_restarts(apiserver: FakeApiServer):
    api = apiserver.api_client()
    plane = build_kubernetes_plane(api, [], status_retry_delay=0.1)
    metrics = plane.metrics
    apiserver.put(vs_body("calls"))
    apiserver.put(vs_body("bad", 2002, eds=True, host={"address": "worker.media.svc"}))  # EDS needs IPs
    apiserver.put(pod_body("envoy-0", INGRESS))
    plane.start_watches()
    tasks = [asyncio.create_task(work) for work in plane.background()]
    server, port = await start_server(plane.service, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(plane.source.synced(), 5)
        ads = AdsClient(channel, f"{NS}/envoy-0", {})
        await subscribe(ads)

        def counts() -> dict[tuple[str, str], float]:
            return {
                (dict(labels)["condition"], dict(labels)["status"]): v
                for (name, labels), v in samples(metrics).items()
                if name == "xds_operator_virtual_services"
            }

        def conditions_written() -> bool:
            found = counts()
            return (
                found[("Accepted", "True")] == 1
                and found[("Accepted", "False")] == 1
                and found[("Programmed", "True")] == 1
                and found[("Conflicted", "False")] == 2
            )

        await eventually(conditions_written, "conditions counted from the written status")
        assert counts()[("Programmed", "False")] == 1  # the invalid one is not served
        assert value(metrics, "xds_operator_source_errors_total", kind="invalid_virtualservice") == 1
        assert value(metrics, "xds_operator_connected_proxies", variant="sotw") == 1

        def status_patches() -> int:  # what the API server received
            return sum(r.method == "PATCH" and r.path.endswith("/status") for r in apiserver.requests)

        await eventually(
            lambda: value(metrics, "xds_operator_status_writes_total") == status_patches() >= 2,
            "every status write counted (one per VirtualService at least)",
        )

        def restarts() -> float:
            return sum(
                v for (name, _), v in samples(metrics).items() if name == "xds_operator_kubernetes_watch_restarts_total"
            )

        def relists() -> float:
            return sum(
                v for (name, _), v in samples(metrics).items() if name == "xds_operator_kubernetes_relists_total"
            )

        assert restarts() == 0 and relists() == 0
        # Each ended watch is started again once; one ended with 410 Gone also lists again.
        dropped = await end_both_watches(apiserver.drop_watches)
        await eventually(lambda: restarts() == dropped, f"{dropped} watch restarts counted")
        assert relists() == 0
        expired = await end_both_watches(apiserver.expire_watches)
        await eventually(lambda: relists() == expired, f"{expired} relists counted")

        # A status write the API server refuses is counted (and retried).
        apiserver.fail_next(1, code=500, path_contains="/status", method="PATCH")
        apiserver.put(vs_body("calls", 2003))
        await eventually(
            lambda: value(metrics, "xds_operator_source_errors_total", kind="status_write") == 1,
            "a failed status write counted",
        )
        await ads.close()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await plane.close(reflector_timeout=1.0)
        await channel.close()
        await server.stop(None)
        api.close()


async def end_both_watches(end) -> int:
    """End the VirtualService and the Pod watch (either may be between two watches): how many were ended."""
    ended = 0

    def both_ended() -> bool:
        nonlocal ended
        ended += end()
        return ended >= 2

    await eventually(both_ended, "the VirtualService and the Pod watch to be ended")  # bounded: a failure, not a hang
    return ended


def test_virtualservice_conditions_without_a_status_count_as_unknown() -> None:
    from xds_operator.admin.metrics import condition_counts

    counts = condition_counts(
        [
            None,
            {"conditions": [{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "False"}]},
        ]
    )
    assert counts[("Accepted", "True")] == 1 and counts[("Accepted", "Unknown")] == 1
    assert counts[("Programmed", "False")] == 1 and counts[("Programmed", "Unknown")] == 1
    assert counts[("Conflicted", "Unknown")] == 2
    assert sum(v for (condition, _), v in counts.items() if condition == "Accepted") == 2


def test_histogram_buckets_count_a_value_at_a_bound_in_that_bucket_and_are_cumulative() -> None:
    from xds_operator.admin.metrics import Buckets

    buckets = Buckets((0.01, 0.1, 1.0))
    for observed in (0.005, 0.01, 0.05, 2.0):
        buckets.observe(observed)
    assert buckets.cumulative() == [("0.01", 2), ("0.1", 3), ("1.0", 3), ("+Inf", 4)]
    assert buckets.sum == pytest.approx(2.065)
