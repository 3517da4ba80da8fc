"""Endpoint health reports (HDS): what each proxy is asked to check, how its reports are read, and the bounds
on what a client may send. The state machine (xds/health.py) is driven with snapshots from the real cache;
the service (xds/hds.py) over a real gRPC channel."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc

from tests.support.ads_client import eventually
from xds_operator.api import VirtualService, parse_virtual_service
from xds_operator.status.conditions import Observed, status_of
from xds_operator.status.progress import Progress
from xds_operator.status.readiness import ClusterHealth, ClusterState, ListenerState
from xds_operator.xds import health as health_module
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.hds import HealthDiscoveryService
from xds_operator.xds.health import (
    FAILING_REPORTS,
    LIMIT_BAD_REPORT,
    LIMIT_CHECKED_ENDPOINTS,
    LIMIT_REPORT_SIZE,
    LIMIT_UNKNOWN_ENDPOINT,
    HealthStream,
    summarize,
)
from xds_operator.xds.server import AggregatedDiscoveryService, start_server

INGRESS = {"app": "ingress"}
HEALTHY, UNHEALTHY, TIMEOUT = health_check_pb2.HEALTHY, health_check_pb2.UNHEALTHY, health_check_pb2.TIMEOUT


def make_vs(
    name: str,
    cluster: str,
    addresses: Sequence[str] = ("10.0.0.1",),
    *,
    port: int = 3000,
    health: bool = True,
    eds: bool = False,
    selector: Mapping[str, str] = INGRESS,
    check_port: int | None = 1233,
) -> VirtualService:
    endpoints = []
    for index, address in enumerate(addresses):
        endpoint: dict[str, Any] = {"name": f"w{index}", "host": {"address": address}, "port": 2001}
        if check_port is not None:
            endpoint["health_check_port"] = check_port
        endpoints.append(endpoint)
    spec: dict[str, Any] = {
        "name": cluster,
        "service_discovery": "eds" if eds else "strictdns",
        "endpoints": endpoints,
    }
    if health:
        spec["health_check"] = {"interval": 500}
    return parse_virtual_service(
        {
            "apiVersion": "servicemesh.l7mp.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "media", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {
                "selector": dict(selector),
                "listeners": [{"name": f"{name}-l", "udp": {"port": port, "cluster": spec}}],
            },
        }
    )


class Limits:
    def __init__(self) -> None:
        self.hits: list[str] = []

    def __call__(self, limit: str) -> None:
        self.hits.append(limit)


def decode(specifier: bytes | None) -> dict[str, dict[str, Any]]:
    """cluster → {checks, endpoints: {ip:port: check port}} of an encoded specifier."""
    assert specifier is not None, "expected a specifier to be sent"
    message = hds_pb2.HealthCheckSpecifier.FromString(specifier)
    assert message.interval.seconds == health_module.REPORT_INTERVAL_SECONDS
    return {
        entry.cluster_name.removeprefix(health_module.HDS_NAME_PREFIX): {
            "checks": list(entry.health_checks),
            "endpoints": {
                f"{e.address.socket_address.address}:{e.address.socket_address.port_value}": (
                    e.health_check_config.port_value
                )
                for locality in entry.locality_endpoints
                for e in locality.endpoints
            },
        }
        for entry in message.cluster_health_checks
    }


def report(entries: Mapping[str, Mapping[str, int]]) -> bytes:
    """An EndpointHealthResponse as Envoy sends it: cluster → ip:port → health status."""
    message = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
    response = message.endpoint_health_response
    for cluster, endpoints in entries.items():
        cluster_health = response.cluster_endpoints_health.add(cluster_name=health_module.HDS_NAME_PREFIX + cluster)
        locality = cluster_health.locality_endpoints_health.add()
        for address, status in endpoints.items():
            host, port = address.rsplit(":", 1)
            endpoint = locality.endpoints_health.add(health_status=status)
            endpoint.endpoint.address.socket_address.address = host
            endpoint.endpoint.address.socket_address.port_value = int(port)
            response.endpoints_health.add().CopyFrom(endpoint)  # the legacy flat list Envoy also fills
    return message.SerializeToString()


def consistent(stream: HealthStream) -> HealthStream:
    """What the stream keeps counted as it goes agrees with a count from scratch."""
    states = [state & 3 for endpoints in stream.health.values() for state in endpoints]
    view = stream.view()
    assert view["healthy"] == states.count(health_module.PASSES)
    assert view["unhealthy_count"] == states.count(health_module.FAILS)
    assert view["endpoints"] == sum(len(target.endpoints) for target in stream.targets.values())
    return stream


@pytest.fixture
def cache() -> SnapshotCache:
    return SnapshotCache()


def stream_on(cache: SnapshotCache, labels: Mapping[str, str] = INGRESS) -> tuple[HealthStream, Any, Limits]:
    limits = Limits()
    watch = cache.watch(labels, lambda: None)
    return HealthStream("edge-1", limits), watch, limits


# -- what each proxy is asked to check ---------------------------------------------------------------


def test_specifier_holds_the_health_checked_clusters_of_the_proxys_own_snapshot(cache: SnapshotCache):
    cache.upsert(make_vs("a", "worker-a", ["10.0.0.1", "10.0.0.2"]))
    cache.upsert(make_vs("b", "worker-b", ["10.0.0.3"], port=3001, eds=True, check_port=None))
    cache.upsert(make_vs("plain", "plain-c", ["10.0.0.4"], port=3002, health=False))  # no check: not asked
    cache.upsert(make_vs("dns", "dns-c", ["worker.example"], port=3003))  # a DNS name: HDS hosts are static
    cache.upsert(make_vs("other", "other-c", ["10.0.0.9"], selector={"app": "other"}))  # another proxy's
    cache.commit()
    stream, watch, _ = stream_on(cache)

    specifier, changed = stream.on_snapshot(watch.snapshot)
    clusters = decode(specifier)
    assert clusters.keys() == {"worker-a", "worker-b"} == changed
    assert clusters["worker-a"]["endpoints"] == {"10.0.0.1:2001": 1233, "10.0.0.2:2001": 1233}
    assert clusters["worker-b"]["endpoints"] == {"10.0.0.3:2001": 0}  # EDS: from its ClusterLoadAssignment
    (check,) = clusters["worker-a"]["checks"]
    assert check.HasField("tcp_health_check") and check.interval.ToMilliseconds() == 500

    other, other_watch, _ = stream_on(cache, {"app": "other"})
    assert decode(other.on_snapshot(other_watch.snapshot)[0]).keys() == {"other-c"}


def test_nothing_to_check_sends_nothing_until_there_is(cache: SnapshotCache):
    cache.upsert(make_vs("plain", "plain-c", health=False))
    cache.commit()
    stream, watch, _ = stream_on(cache)
    assert stream.on_snapshot(watch.snapshot) == (None, set())

    cache.upsert(make_vs("a", "worker-a", port=3001))
    cache.commit()
    assert decode(stream.on_snapshot(watch.snapshot)[0]).keys() == {"worker-a"}


def test_specifier_is_sent_again_only_when_the_health_checked_clusters_change(cache: SnapshotCache):
    cache.upsert(make_vs("call-1", "worker-a"))
    cache.commit()
    stream, watch, _ = stream_on(cache)
    first = stream.on_snapshot(watch.snapshot)[0]
    assert first is not None

    # Another call to the same worker (the cluster declared alike, shared), and a call without a check.
    cache.upsert(make_vs("call-2", "worker-a", port=3001))
    cache.upsert(make_vs("call-3", "plain-c", port=3002, health=False))
    cache.commit()
    assert stream.on_snapshot(watch.snapshot) == (None, set())

    # The worker's endpoints change: a new specifier, for that cluster.
    for key in ("call-1", "call-2"):
        cache.upsert(make_vs(key, "worker-a", ["10.0.0.1", "10.0.0.7"], port=3000 if key == "call-1" else 3001))
    cache.commit()
    specifier, changed = stream.on_snapshot(watch.snapshot)
    assert changed == {"worker-a"}
    assert decode(specifier)["worker-a"]["endpoints"].keys() == {"10.0.0.1:2001", "10.0.0.7:2001"}

    # The last call to it ends: the proxy stops checking it (an empty specifier says so).
    cache.delete(("media", "call-1"))
    cache.delete(("media", "call-2"))
    cache.commit()
    specifier, changed = stream.on_snapshot(watch.snapshot)
    assert changed == {"worker-a"} and decode(specifier) == {}
    assert stream.view()["endpoints"] == 0


# -- what it reports ---------------------------------------------------------------------------------


def test_reports_count_passing_endpoints_and_failing_ones_after_consecutive_reports(cache: SnapshotCache):
    cache.upsert(make_vs("a", "worker-a", ["10.0.0.1", "10.0.0.2"]))
    cache.commit()
    stream, watch, limits = stream_on(cache)
    stream.on_snapshot(watch.snapshot)
    assert stream.counts("worker-a") is None  # nothing reported yet

    assert stream.on_report(report({"worker-a": {"10.0.0.1:2001": HEALTHY, "10.0.0.2:2001": HEALTHY}})) == {"worker-a"}
    assert stream.counts("worker-a") == (2, 2)

    # One failing report is not enough (a new endpoint is reported unhealthy until its first check ends)...
    failing = report({"worker-a": {"10.0.0.1:2001": HEALTHY, "10.0.0.2:2001": TIMEOUT}})
    assert stream.on_report(failing) == set()
    assert stream.counts("worker-a") == (2, 2)
    assert stream.failing() == []
    # ...the same bytes again are: an identical report is still read while an endpoint is settling.
    for _ in range(FAILING_REPORTS - 1):
        stream.on_report(failing)
    assert stream.failing() == [{"cluster": "worker-a", "endpoint": "10.0.0.2:2001", "health_check_port": 1233}]
    assert stream.counts("worker-a") == (1, 2)
    assert stream.view()["unhealthy_count"] == 1

    # Identical reports while nothing settles are not read again.
    read = stream.reports
    stream.on_report(failing)
    assert stream.reports == read

    consistent(stream)

    # One passing report brings it back.
    assert stream.on_report(report({"worker-a": {"10.0.0.1:2001": HEALTHY, "10.0.0.2:2001": HEALTHY}})) == {"worker-a"}
    assert stream.failing() == [] and stream.counts("worker-a") == (2, 2)
    assert limits.hits == []
    consistent(stream)


def test_a_report_laid_out_otherwise_is_read_whole(cache: SnapshotCache):
    # Same length, entries in another order: what differs is in the entries' names, so the whole report is
    # read (not just the entries whose bytes differ).
    cache.upsert(make_vs("a", "worker-a", ["10.0.0.1"]))
    cache.upsert(make_vs("b", "worker-b", ["10.0.0.2"], port=3001))
    cache.commit()
    stream, watch, _ = stream_on(cache)
    stream.on_snapshot(watch.snapshot)
    stream.on_report(report({"worker-a": {"10.0.0.1:2001": HEALTHY}, "worker-b": {"10.0.0.2:2001": HEALTHY}}))
    swapped = report({"worker-b": {"10.0.0.2:2001": UNHEALTHY}, "worker-a": {"10.0.0.1:2001": HEALTHY}})
    for _ in range(FAILING_REPORTS):
        stream.on_report(swapped)
    assert stream.counts("worker-a") == (1, 1)
    assert stream.counts("worker-b") == (0, 1)
    assert [e["endpoint"] for e in stream.failing()] == ["10.0.0.2:2001"]


def test_many_flips_in_one_report_are_all_read(cache: SnapshotCache):
    addresses = [f"10.0.1.{i}" for i in range(1, 33)]
    cache.upsert(make_vs("a", "worker-a", addresses))
    cache.commit()
    stream, watch, _ = stream_on(cache)
    stream.on_snapshot(watch.snapshot)
    stream.on_report(report({"worker-a": {f"{a}:2001": HEALTHY for a in addresses}}))
    down = report({"worker-a": {f"{a}:2001": UNHEALTHY for a in addresses}})
    for _ in range(FAILING_REPORTS):
        stream.on_report(down)
    assert stream.counts("worker-a") == (0, 32)
    stream.on_report(report({"worker-a": {f"{a}:2001": HEALTHY if a.endswith(".7") else UNHEALTHY for a in addresses}}))
    assert stream.counts("worker-a") == (1, 32)
    consistent(stream)


def test_health_survives_a_specifier_change_of_other_clusters(cache: SnapshotCache):
    cache.upsert(make_vs("a", "worker-a"))
    cache.commit()
    stream, watch, _ = stream_on(cache)
    stream.on_snapshot(watch.snapshot)
    stream.on_report(report({"worker-a": {"10.0.0.1:2001": HEALTHY}}))
    cache.upsert(make_vs("b", "worker-b", ["10.0.0.2"], port=3001))
    cache.commit()
    stream.on_snapshot(watch.snapshot)
    assert stream.counts("worker-a") == (1, 1)
    assert stream.counts("worker-b") is None
    consistent(stream)
    # An endpoint removed while failing, and one added: the counts follow.
    stream.on_report(report({"worker-a": {"10.0.0.1:2001": UNHEALTHY}, "worker-b": {"10.0.0.2:2001": HEALTHY}}))
    stream.on_report(report({"worker-a": {"10.0.0.1:2001": UNHEALTHY}, "worker-b": {"10.0.0.2:2001": HEALTHY}}))
    assert consistent(stream).view()["unhealthy_count"] == 1
    cache.upsert(make_vs("a", "worker-a", ["10.0.0.3"]))
    cache.commit()
    stream.on_snapshot(watch.snapshot)
    assert consistent(stream).view()["unhealthy_count"] == 0 and stream.view()["healthy"] == 1


# -- bounds on what a client sends ---------------------------------------------------------------------


def test_unknown_clusters_and_endpoints_are_ignored_and_counted(cache: SnapshotCache):
    cache.upsert(make_vs("a", "worker-a"))
    cache.commit()
    stream, watch, limits = stream_on(cache)
    stream.on_snapshot(watch.snapshot)
    stream.on_report(
        report(
            {
                "worker-a": {"10.0.0.1:2001": HEALTHY, "10.9.9.9:2001": UNHEALTHY},
                "not-sent": {"10.0.0.5:2001": UNHEALTHY},
            }
        )
    )
    assert stream.counts("worker-a") == (1, 1)
    assert stream.counts("not-sent") is None
    assert limits.hits == [LIMIT_UNKNOWN_ENDPOINT]


def test_a_report_listing_endpoints_over_and_over_is_read_only_up_to_what_was_asked(cache: SnapshotCache):
    cache.upsert(make_vs("a", "worker-a"))
    cache.commit()
    stream, watch, limits = stream_on(cache)
    stream.on_snapshot(watch.snapshot)
    flood = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
    locality = flood.endpoint_health_response.cluster_endpoints_health.add(cluster_name="@hds@worker-a")
    entries = locality.locality_endpoints_health.add()
    for index in range(10_000):
        endpoint = entries.endpoints_health.add(health_status=UNHEALTHY)
        endpoint.endpoint.address.socket_address.address = f"10.1.{index // 256}.{index % 256}"
        endpoint.endpoint.address.socket_address.port_value = 2001
    stream.on_report(flood.SerializeToString())
    assert LIMIT_UNKNOWN_ENDPOINT in limits.hits
    assert stream.counts("worker-a") is None


def test_oversized_and_undecodable_reports_are_ignored_and_counted(cache: SnapshotCache, monkeypatch):
    cache.upsert(make_vs("a", "worker-a"))
    cache.commit()
    stream, watch, limits = stream_on(cache)
    stream.on_snapshot(watch.snapshot)
    good = report({"worker-a": {"10.0.0.1:2001": HEALTHY}})
    monkeypatch.setattr(health_module, "MAX_REPORT_BYTES", len(good) - 1)
    assert stream.on_report(good) == set()
    monkeypatch.undo()
    assert stream.on_report(b"\xff\xff\xff") == set()
    assert limits.hits == [LIMIT_REPORT_SIZE, LIMIT_BAD_REPORT]
    assert stream.counts("worker-a") is None
    assert stream.on_report(good) == {"worker-a"}  # the stream goes on


def test_clusters_beyond_the_endpoint_bound_are_left_out_until_there_is_room(cache: SnapshotCache, monkeypatch):
    monkeypatch.setattr(health_module, "MAX_CHECKED_ENDPOINTS", 3)
    cache.upsert(make_vs("a", "worker-a", ["10.0.0.1", "10.0.0.2"]))
    cache.upsert(make_vs("b", "worker-b", ["10.0.0.3", "10.0.0.4"], port=3001))
    cache.commit()
    stream, watch, limits = stream_on(cache)
    assert decode(stream.on_snapshot(watch.snapshot)[0]).keys() == {"worker-a"}  # name order: a first
    assert limits.hits == [LIMIT_CHECKED_ENDPOINTS]

    cache.delete(("media", "a"))
    cache.commit()
    assert decode(stream.on_snapshot(watch.snapshot)[0]).keys() == {"worker-b"}


# -- several proxies, and status -----------------------------------------------------------------------


def test_several_proxies_are_summarized_by_the_one_that_sees_the_fewest():
    assert summarize([]) is None
    assert summarize([("edge-1", (2, 2)), ("edge-2", (0, 2)), ("edge-3", (1, 2))]) == (0, 2, ["edge-2"])


def _observed(health: ClusterHealth | None) -> Observed:
    listener = ListenerState("calls-l", "UDP", 3000, ClusterState("calls-c", 2))
    return Observed(
        generation=1,
        serving_generation=1,
        progress=Progress(selected=1, applied=1),
        listeners=(listener,),
        health=(health,) if health is not None else (),
    )


def test_ready_is_unhealthy_when_no_endpoint_passes_on_a_proxy_and_counts_are_in_status():
    failing = ClusterHealth(0, 2, ("media/envoy-0", "media/envoy-1"), "10.0.0.1:2001, 10.0.0.2:2001")
    status = status_of(_observed(failing), None, "2026-01-01T00:00:00Z")
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Unhealthy")
    assert ready["message"] == (
        "cluster calls-c: no endpoint passes its health check on proxy media/envoy-0 (and 1 more proxies): "
        "10.0.0.1:2001, 10.0.0.2:2001 failing"
    )
    assert status["listeners"][0]["cluster"] == {
        "name": "calls-c",
        "readyEndpoints": 2,
        "healthyEndpoints": 0,
        "checkedEndpoints": 2,
    }

    passing = status_of(_observed(ClusterHealth(1, 2)), None, "2026-01-01T00:00:00Z")
    assert {c["type"]: c for c in passing["conditions"]}["Ready"]["status"] == "True"
    # No report (no health check, or no HDS stream): status as before, without the health counts.
    unknown = status_of(_observed(None), None, "2026-01-01T00:00:00Z")
    assert unknown["listeners"][0]["cluster"] == {"name": "calls-c", "readyEndpoints": 2}


# -- the service, over gRPC ----------------------------------------------------------------------------


async def test_service_sends_the_specifier_and_reads_reports_over_grpc(cache: SnapshotCache):
    cache.upsert(make_vs("a", "worker-a"))
    cache.commit()
    changes: list[set[str]] = []
    health = HealthDiscoveryService(cache, on_health=changes.append)
    server, port = await start_server(AggregatedDiscoveryService(cache, health=health), "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            outbox: asyncio.Queue[hds_pb2.HealthCheckRequestOrEndpointHealthResponse | None] = asyncio.Queue()

            async def requests():
                while (item := await outbox.get()) is not None:
                    yield item

            call = hds_pb2_grpc.HealthDiscoveryServiceStub(channel).StreamHealthCheck(requests())
            node = base_pb2.Node(id="edge-1")
            node.metadata.fields["labels"].struct_value.fields["app"].string_value = "ingress"
            first = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
            first.health_check_request.node.CopyFrom(node)
            await outbox.put(first)
            specifier = await asyncio.wait_for(call.read(), 10)
            assert [c.cluster_name for c in specifier.cluster_health_checks] == ["@hds@worker-a"]

            failing = hds_pb2.HealthCheckRequestOrEndpointHealthResponse.FromString(
                report({"worker-a": {"10.0.0.1:2001": UNHEALTHY}})
            )
            for _ in range(FAILING_REPORTS):
                await outbox.put(failing)

            await eventually(lambda: (health.view("edge-1") or {}).get("unhealthy_count") == 1, "edge-1 failing")
            assert health.unhealthy_endpoints() == 1
            assert health.cluster_counts("worker-a") == [("edge-1", (0, 1))]
            assert {"worker-a"} in changes
            await outbox.put(None)  # the proxy ends its stream
            await eventually(lambda: health.view("edge-1") is None, "the stream to end")
        assert health.unhealthy_endpoints() == 0
    finally:
        await server.stop(0)


async def test_a_stream_that_does_not_start_with_its_node_is_refused(cache: SnapshotCache):
    health = HealthDiscoveryService(cache)
    server, port = await start_server(AggregatedDiscoveryService(cache, health=health), "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = hds_pb2_grpc.HealthDiscoveryServiceStub(channel)
            report_first = hds_pb2.HealthCheckRequestOrEndpointHealthResponse.FromString(report({}))
            call = stub.StreamHealthCheck(iter([report_first]))
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await asyncio.wait_for(call.read(), 10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)


# -- `xds-operator status` -----------------------------------------------------------------------------------


def test_status_command_lists_unhealthy_endpoints_per_proxy():
    from xds_operator.commands.status import proxy_views, table

    answer = [
        {
            "node_id": "edge-1",
            "variant": "delta",
            "labels": {"app": "ingress"},
            "group": "app=ingress",
            "types": {"CDS": {"version": "v1", "state": "ACKed", "acked_version": "v1", "error": None}},
            "health": {
                "clusters": 1,
                "endpoints": 2,
                "healthy": 1,
                "unhealthy_count": 1,
                "unhealthy": [{"cluster": "worker-a", "endpoint": "10.0.0.2:2001", "health_check_port": 1233}],
                "reports": 3,
            },
        },
        {  # a proxy without a health report stream (an older bootstrap), and an older server's answer
            "node_id": "edge-2",
            "variant": "sotw",
            "labels": None,
            "group": "(identity unknown)",
            "types": {},
        },
    ]
    text = table(proxy_views(answer))
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "GROUP", "VARIANT", "CDS", "EDS", "LDS", "HEALTHY"]
    assert lines[1].split()[-1] == "1/2" and lines[2].split()[-1] == "-"
    assert "  edge-1 worker-a: 10.0.0.2:2001 (health check port 1233) fails" in lines
    with pytest.raises(ValueError, match=r"item 0.health.unhealthy is not a list"):
        proxy_views([{**answer[0], "health": {**answer[0]["health"], "unhealthy": "x"}}])


# -- bootstrap ---------------------------------------------------------------------------------------------


def test_bootstrap_asks_for_health_reports_unless_told_not_to(capsys):
    import yaml

    from xds_operator.cli import main

    assert main(["bootstrap", "--node-id", "edge-1", "--label", "app=ingress"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["hds_config"] == {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
    }
    assert main(["bootstrap", "--node-id", "edge-1", "--no-health-reports"]) == 0
    assert "hds_config" not in yaml.safe_load(capsys.readouterr().out)


def test_a_status_that_would_drop_known_health_counts_is_held_back():
    from xds_operator.status.conditions import awaiting_health

    known = status_of(_observed(ClusterHealth(2, 2)), None, "2026-01-01T00:00:00Z")
    unknown = status_of(_observed(None), None, "2026-01-01T00:00:00Z")
    assert awaiting_health(unknown, known)  # after a restart, before the reports come back
    assert not awaiting_health(known, known)
    assert not awaiting_health(unknown, None)  # a new VirtualService: nothing to keep
    assert not awaiting_health(unknown, unknown)
    renamed = {**unknown, "listeners": [{**unknown["listeners"][0], "name": "other-l"}]}
    assert not awaiting_health(renamed, known)  # another listener: its counts are not this one's
