"""Replica progress reports: what a replica publishes about its proxies, how the leader counts the
other replicas' proxies in status (pure functions), and the reports' Leases on the fake API server.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.ads_client import eventually
from tests.support.fake_apiserver import FakeApiServer
from xds_operator.sources.kubernetes.leader import LeaseConfig
from xds_operator.status.conditions import Observed, status_of
from xds_operator.status.peers import (
    LABEL,
    MAX_REPORT,
    Entry,
    PeerReport,
    ProgressReports,
    decode,
    encode,
    merge,
    report_name,
)
from xds_operator.status.progress import Progress

CALLS, MEDIA = ("media", "calls"), ("media", "rtp")


def programmed(progress: Progress, generation: int = 2) -> dict:
    status = status_of(Observed(generation, serving_generation=generation, progress=progress), None, "now")
    return {c["type"]: c for c in status["conditions"]}["Programmed"]


def test_a_report_round_trips_counts_generations_and_the_first_rejection() -> None:
    rejections = [("media/envoy-1", "bad port"), ("media/envoy-2", "x")]
    own = {CALLS: Progress(3, 2, rejections, serving=[("media/envoy-3",), ("media/envoy-4",)]), MEDIA: Progress()}
    entries, partial = decode(encode(own, {CALLS: 2, MEDIA: 7}))
    assert not partial
    assert entries == {
        CALLS: Entry(2, 3, 2, "media/envoy-1: bad port", ("media/envoy-3", "media/envoy-4")),
        MEDIA: Entry(7),
    }
    assert decode(encode({}, {("media", "invalid"): None}))[0] == {("media", "invalid"): Entry(None)}


def test_garbage_reports_count_as_nothing() -> None:
    garbage = [
        '{"a/b": ["x", "y", 1, 2, []]}',
        '{"a/b": [1, -1, 0, null, []]}',
        '{"a/b": [1, 1, 1, 7, []]}',
        '{"a/b": [1, 1, 1, null, [3]]}',
        '{"a/b": [1, 1, 1, null, 0]}',  # a node set that is not there
        '{"a/b": [1, 1, 1, null, 0], "nodes": [[3]]}',
        '{"a/b": [1, 1, 1, null]}',
        '{"a/b": true}',
    ]
    for text in (None, "", "{", "[1]", '{"no-slash": 1, "a/b": "x"}', *garbage):
        entries, _ = decode(text)
        assert entries == {}


def test_the_leader_adds_peers_proxies_that_run_the_same_generation() -> None:
    own = {CALLS: Progress(1, 1)}
    peer = PeerReport("replica-b", {CALLS: Entry(2, 2, 2)})
    [merged] = merge(own, {CALLS: 2}, [peer]).values()
    assert (merged.selected, merged.applied, merged.waiting) == (3, 3, [])
    condition = programmed(merged)
    assert (condition["status"], condition["reason"]) == ("True", "Programmed")
    assert condition["message"] == "3 of 3 selected proxies run it (proxies of all 2 control plane replicas)"


def test_the_leader_lists_peers_proxies_among_those_serving_the_same_generation() -> None:
    own = {CALLS: Progress(1, 1, serving=[("media/envoy-1",)])}
    peers = [
        PeerReport("replica-b", {CALLS: Entry(2, 1, 1, serving=("media/envoy-2",))}),
        PeerReport("replica-c", {CALLS: Entry(1, 1, 1, serving=("media/envoy-3",))}),  # an older generation
    ]
    [merged] = merge(own, {CALLS: 2}, peers).values()
    assert merged.serving == [("media/envoy-1",), ("media/envoy-2",)]


def test_no_proxies_on_the_leader_but_some_on_a_peer_is_programmed() -> None:
    [merged] = merge({}, {CALLS: 2}, [PeerReport("replica-b", {CALLS: Entry(2, 1, 1)})]).values()
    assert programmed(merged)["status"] == "True"


def test_a_peer_on_another_generation_or_without_it_keeps_programmed_pending() -> None:
    own = {CALLS: Progress(1, 1)}
    for entries in ({CALLS: Entry(1, 1, 1)}, {}):  # an older generation; not seen yet
        [merged] = merge(own, {CALLS: 2}, [PeerReport("replica-b", entries)]).values()
        assert merged.waiting == ["replica-b"]
        condition = programmed(merged)
        assert (condition["status"], condition["reason"]) == ("False", "Pending")
        assert "waiting for replica replica-b" in condition["message"]


def test_a_partial_report_without_the_key_means_no_proxies_there() -> None:
    [merged] = merge({CALLS: Progress(1, 1)}, {CALLS: 2}, [PeerReport("replica-b", {}, partial=True)]).values()
    assert merged.waiting == [] and programmed(merged)["status"] == "True"


def test_a_peers_rejection_is_reported() -> None:
    peer = PeerReport("replica-b", {CALLS: Entry(2, 1, 0, "media/envoy-9: invalid listener")})
    [merged] = merge({CALLS: Progress(1, 1)}, {CALLS: 2}, [peer]).values()
    condition = programmed(merged)
    assert (condition["status"], condition["reason"]) == ("False", "Rejected")
    assert "proxy media/envoy-9 rejected its resources: invalid listener" in condition["message"]


def test_a_huge_report_keeps_the_counts_and_says_it_is_partial() -> None:
    generations = {("media", f"vs-{i:05d}-{'x' * 40}"): 1 for i in range(6000)}
    own = {key: Progress(1, 1) for key in list(generations)[:3]}
    entries, partial = decode(encode(own, generations))
    assert partial and set(entries) == set(own)


def test_a_report_with_many_serving_proxies_stays_within_the_limit_and_keeps_the_counts() -> None:
    # 300 VirtualServices run by the same 32 proxies (pod UIDs): their node ids alone would take ~370 kB.
    nodes = tuple(f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd" for i in range(32))
    own = {("media", f"vs-{i}"): Progress(32, 32, serving=[nodes]) for i in range(300)}
    text = encode(own, dict.fromkeys(own, 1))
    assert len(text) <= MAX_REPORT
    entries, partial = decode(text)
    assert not partial and set(entries) == set(own)
    assert {(entry.selected, entry.applied) for entry in entries.values()} == {(32, 32)}


def test_report_names_are_valid_object_names() -> None:
    assert report_name("xds-operator", "host_1a2b") == report_name("xds-operator", "host_1a2b")
    assert report_name("xds-operator", "host_1a2b") != report_name("xds-operator", "host_9z")
    assert report_name("xds-operator", "Host_1").replace("-", "").isalnum()


# -- the reports' Leases -------------------------------------------------------------------------------


async def test_replicas_read_each_others_reports_and_drop_stopped_and_silent_ones() -> None:
    with FakeApiServer() as apiserver:
        apis, tasks, reports = [], {}, {}
        for identity in ("replica-a", "replica-b", "replica-c"):
            api = apiserver.api_client()
            api.user_agent = f"test ({identity})"
            config = LeaseConfig(
                "xds-operator", "ops", identity, lease_duration=1.0, renew_deadline=0.5, retry_period=0.1
            )
            report = ProgressReports(
                api, config, leading=lambda leads=identity == "replica-a": leads, stale_delete_factor=3
            )
            report.publish(encode({CALLS: Progress(1, 1)}, {CALLS: 2}))
            apis.append(api)
            reports[identity] = report
            tasks[identity] = asyncio.create_task(report.run())
        a = reports["replica-a"]

        def peers_of_a() -> set[str]:
            return {peer.identity for peer in a.peers()}

        try:
            await eventually(lambda: peers_of_a() == {"replica-b", "replica-c"}, "replica-a to read both reports")
            assert all(peer.entries == {CALLS: Entry(2, 1, 1)} for peer in a.peers())
            leases = apiserver.list("leases", "ops")
            assert {lease["metadata"]["labels"][LABEL] for lease in leases} == {"xds-operator"}
            assert {lease["spec"]["holderIdentity"] for lease in leases} == {"replica-a", "replica-b", "replica-c"}

            # A clean stop deletes the report: nobody counts (or waits for) that replica any more.
            tasks["replica-b"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks["replica-b"]
            await reports["replica-b"].stopped()
            assert apiserver.get("leases", "ops", reports["replica-b"].name) is None
            await eventually(lambda: peers_of_a() == {"replica-c"}, "replica-a to forget replica-b")

            # A replica that can no longer write (hung, partitioned) goes stale, then the leader deletes it.
            apiserver.fail_next(10**6, code=503, user_agent="(replica-c)")
            await eventually(lambda: peers_of_a() == set(), "replica-c's silent report to be left out")
            await eventually(
                lambda: apiserver.get("leases", "ops", reports["replica-c"].name) is None,
                "the leader to delete the stale report",
            )
        finally:
            apiserver.clear_failures()
            for task in tasks.values():
                task.cancel()
            for identity, task in tasks.items():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await reports[identity].stopped()
            for api in apis:
                api.close()
