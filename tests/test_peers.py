"""Replica progress reports: what a replica publishes about its proxies, and how the leader counts the
other replicas' proxies in status (pure functions; the Lease I/O is covered in tests/e2e/test_replicas.py).
"""

from __future__ import annotations

from xds_operator.operator.peers import Entry, PeerReport, decode, encode, merge, report_name
from xds_operator.operator.status import Observed, status_of
from xds_operator.xds.progress import Progress

CALLS, MEDIA = ("media", "calls"), ("media", "rtp")


def programmed(progress: Progress, generation: int = 2) -> dict:
    status = status_of(Observed(generation, serving_generation=generation, progress=progress), None, "now")
    return {c["type"]: c for c in status["conditions"]}["Programmed"]


def test_a_report_round_trips_counts_generations_and_the_first_rejection() -> None:
    own = {CALLS: Progress(3, 2, [("media/envoy-1", "bad port"), ("media/envoy-2", "x")]), MEDIA: Progress()}
    entries, partial = decode(encode(own, {CALLS: 2, MEDIA: 7}))
    assert not partial
    assert entries == {CALLS: Entry(2, 3, 2, "media/envoy-1: bad port"), MEDIA: Entry(7)}
    assert decode(encode({}, {("media", "invalid"): None}))[0] == {("media", "invalid"): Entry(None)}


def test_garbage_reports_count_as_nothing() -> None:
    for text in (None, "", "{", "[1]", '{"no-slash": 1, "a/b": "x"}'):
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


def test_report_names_are_valid_object_names() -> None:
    assert report_name("xds-operator", "host_1a2b") == report_name("xds-operator", "host_1a2b")
    assert report_name("xds-operator", "host_1a2b") != report_name("xds-operator", "host_9z")
    assert report_name("xds-operator", "Host_1").replace("-", "").isalnum()
