"""The listener port assigner (xds_operator/ports/assigner.py): listeners without a port get one from a range,
stable, the same in every process fed the same objects, honouring recorded ports, off explicit ones."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from xds_operator.api import ValidationError, VirtualService, parse_virtual_service, port_of
from xds_operator.ports.assigner import (
    PortAssigner,
    PortRange,
    parse_port_range,
    recorded_from_status,
)

RANGE = PortRange(20000, 29999)


def vs(
    name: str,
    *,
    port: int | None = None,
    created: str | None = "2026-01-01T00:00:00Z",
    protocol: str = "udp",
    listeners: int = 1,
) -> VirtualService:
    """A VirtualService with `listeners` listeners <name>-l<i>; the first names `port` (None: assigned)."""
    items: list[dict[str, Any]] = []
    for index in range(listeners):
        block: dict[str, Any] = {"cluster": {"name": f"{name}-c{index}", "endpoints": [_endpoint()]}}
        if index == 0 and port is not None:
            block["port"] = port
        items.append({"name": f"{name}-l{index}", protocol: block})
    metadata: dict[str, Any] = {"name": name, "namespace": "media"}
    if created is not None:
        metadata["creationTimestamp"] = created
    return parse_virtual_service(
        {
            "apiVersion": "servicemesh.l7mp.io/v1",
            "kind": "VirtualService",
            "metadata": metadata,
            "spec": {"selector": {"app": "envoy"}, "listeners": items},
        }
    )


def _endpoint() -> dict[str, Any]:
    return {"name": "w", "host": {"address": "10.0.0.1"}, "port": 9000}


def ports(assigner: PortAssigner, name: str) -> list[int]:
    served = assigner.result(("media", name))
    assert served is not None, assigner.waiting(("media", name))
    return [port_of(listener) for listener in served.spec.listeners]


def test_a_listener_without_port_gets_one_in_the_range_and_the_spec_carries_it() -> None:
    assigner = PortAssigner(RANGE)
    assert assigner.place(vs("a")) == {("media", "a")}
    served = assigner.result(("media", "a"))
    assert served is not None and served.assigned == frozenset({"a-l0"})
    [port] = ports(assigner, "a")
    assert port in RANGE
    # Listeners that name their port are served as they are: the same object, no copy.
    explicit = vs("b", port=3000)
    assigner.place(explicit)
    assert assigner.result(("media", "b")) is explicit


def test_ports_never_move_when_others_are_deleted() -> None:
    assigner = PortAssigner(PortRange(20000, 20009))  # a small range: every search collides
    names = [f"call-{i}" for i in range(10)]
    for name in names:
        assigner.place(vs(name))
    before = {name: ports(assigner, name) for name in names}
    assert sorted(p for v in before.values() for p in v) == list(range(20000, 20010))
    for name in names[::2]:
        assigner.remove(("media", name))
    assert {name: ports(assigner, name) for name in names[1::2]} == {name: before[name] for name in names[1::2]}
    # A new one takes a freed port; the others still stay where they are.
    assigner.place(vs("late"))
    assert ports(assigner, "late")[0] in {p for name in names[::2] for p in before[name]}
    assert {name: ports(assigner, name) for name in names[1::2]} == {name: before[name] for name in names[1::2]}


@pytest.mark.parametrize("size", [3, 10, 10_000])
def test_two_assigners_fed_the_same_objects_in_any_order_agree(size: int) -> None:
    # Equal creationTimestamps (Kubernetes' are to the second), so namespace/name order decides who is older.
    services = [vs(f"s{i}", listeners=2) for i in range(8)] + [vs("named", port=20001, listeners=1)]
    expected: dict[str, list[int] | None] | None = None
    shuffler = random.Random(7)
    for _ in range(20):
        order = list(services)
        shuffler.shuffle(order)
        assigner = PortAssigner(PortRange(20000, 20000 + size - 1))
        for service in order:
            assigner.place(service)
        got = {s.name: (ports(assigner, s.name) if assigner.result(s.key) else None) for s in services}
        if expected is None:
            expected = got
        assert got == expected
    assert expected is not None
    if size == 3:  # 3 ports, one named: the two oldest listeners (s0's) get the others, everyone else waits
        assert expected["s0"] == [20000, 20002] or expected["s0"] == [20002, 20000]
        assert all(expected[f"s{i}"] is None for i in range(1, 8))


def test_recorded_ports_are_honoured_across_instances() -> None:
    first = PortAssigner(RANGE)
    for name in ("a", "b", "c"):
        first.place(vs(name))
    recorded = {name: {(f"{name}-l0", "UDP"): ports(first, name)[0]} for name in ("a", "b", "c")}
    # A restart, after "a" was deleted: the others keep what their status reports.
    second = PortAssigner(RANGE)
    for name in ("c", "b"):
        second.place(vs(name), recorded[name])
    assert ports(second, "b") == ports(first, "b") and ports(second, "c") == ports(first, "c")
    # A recorded port that another replica chose moves this replica's assignment to it.
    third = PortAssigner(RANGE)
    third.place(vs("b"))
    third.place(vs("b"), {("b-l0", "UDP"): 21234})
    assert ports(third, "b") == [21234]


def test_a_recorded_port_outranks_an_unrecorded_younger_holder() -> None:
    small = PortRange(20000, 20001)
    assigner = PortAssigner(small)
    assigner.place(vs("young", created="2026-01-02T00:00:00Z"))
    held = ports(assigner, "young")[0]
    assigner.place(vs("old"), {("old-l0", "UDP"): held})
    assert ports(assigner, "old") == [held]
    assert ports(assigner, "young") != [held] and ports(assigner, "young")[0] in small


def test_assigned_ports_avoid_explicit_ports_and_a_later_explicit_port_takes_an_unrecorded_one() -> None:
    small = PortRange(20000, 20002)
    assigner = PortAssigner(small)
    assigner.place(vs("named1", port=20000))
    assigner.place(vs("named2", port=20002))
    assigner.place(vs("auto"))
    assert ports(assigner, "auto") == [20001]
    # Named later on it: before any status reports it the assigned port moves, here to nowhere (full).
    assigner.place(vs("named3", port=20001))
    assert assigner.result(("media", "auto")) is None
    assert "20000-20002" in (assigner.waiting(("media", "auto")) or "")
    # Once recorded, it stays: the explicit one then conflicts on the proxies (older wins, in the cache).
    settled = PortAssigner(small, settled_when_assigned=True)
    settled.place(vs("auto"))
    held = ports(settled, "auto")[0]
    settled.place(vs("named", port=held))
    assert ports(settled, "auto") == [held]


def test_a_full_range_waits_with_a_message_naming_range_and_flag_and_resumes_when_a_port_is_freed() -> None:
    assigner = PortAssigner(PortRange(20000, 20001))
    assigner.place(vs("a"))
    assigner.place(vs("b"))
    assert assigner.place(vs("c", created="2026-01-03T00:00:00Z")) == {("media", "c")}
    assert assigner.result(("media", "c")) is None
    message = assigner.waiting(("media", "c"))
    assert message is not None and "20000-20001" in message and "--listener-ports" in message and "c-l0" in message
    freed = ports(assigner, "a")[0]
    assert ("media", "c") in assigner.remove(("media", "a"))
    assert ports(assigner, "c") == [freed]
    assert assigner.waiting(("media", "c")) is None


def test_udp_and_tcp_have_a_pool_each() -> None:
    assigner = PortAssigner(PortRange(20000, 20000))
    assigner.place(vs("u"))
    assigner.place(vs("t", protocol="tcp"))
    assert ports(assigner, "u") == ports(assigner, "t") == [20000]


def test_without_a_range_a_missing_port_is_invalid_naming_field_and_flag() -> None:
    assigner = PortAssigner(None)
    with pytest.raises(ValidationError) as caught:
        assigner.place(vs("a"))
    assert "spec.listeners[0].udp.port" in str(caught.value) and "--listener-ports" in str(caught.value)
    assigner.place(vs("b", port=2000))  # explicit ports need no range


def test_a_listener_keeps_its_port_across_generations_and_gives_it_up_when_removed() -> None:
    assigner = PortAssigner(PortRange(20000, 20001))
    assigner.place(vs("a", listeners=2))
    first = ports(assigner, "a")
    assigner.place(vs("a", listeners=2))
    assert ports(assigner, "a") == first
    assigner.place(vs("a", listeners=1))  # its second listener went: its port is free again
    assigner.place(vs("b"))
    assert ports(assigner, "b") == [first[1]]


def test_placing_one_among_thousands_touches_only_it() -> None:
    assigner = PortAssigner(RANGE)
    for index in range(5000):
        assigner.place(vs(f"c{index}"))
    assert assigner.place(vs("new", created="2026-02-01T00:00:00Z")) == {("media", "new")}
    assert assigner.remove(("media", "c17")) == {("media", "c17")}
    counts = assigner.counts()
    assert counts["udp_assigned"] == 5000 and counts["udp_free"] == RANGE.size - 5000


def test_port_range_flag_text() -> None:
    assert parse_port_range("20000-29999") == RANGE and str(RANGE) == "20000-29999"
    for bad in ("20000", "x-y", "0-10", "10-70000", "30000-20000", "+1-2", "１-2"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_recorded_ports_are_read_defensively_from_status() -> None:
    status = {
        "listeners": [
            {"name": "a", "protocol": "UDP", "port": 20001},
            {"name": "b", "protocol": "SCTP", "port": 1},
            {"name": "c", "protocol": "TCP", "port": True},
            "junk",
            {"name": "d", "protocol": "TCP", "port": 20002},
        ]
    }
    assert recorded_from_status(status) == {("a", "UDP"): 20001, ("d", "TCP"): 20002}
    assert recorded_from_status(None) == {} and recorded_from_status({"listeners": "x"}) == {}


def test_many_orders_of_a_small_world_agree() -> None:
    # Every permutation of five VirtualServices (two with explicit ports in the range) over four ports.
    services = [vs("a"), vs("b"), vs("c", port=20001), vs("d"), vs("e", port=20003)]
    seen = set()
    for order in itertools.permutations(services):
        assigner = PortAssigner(PortRange(20000, 20003))
        for service in order:
            assigner.place(service)
        seen.add(tuple(tuple(ports(assigner, s.name)) if assigner.result(s.key) else () for s in services))
    assert len(seen) == 1


def test_a_status_that_records_the_port_keeps_the_served_object() -> None:
    # The leader's status write comes back as an event of the same spec: nothing to translate again.
    assigner = PortAssigner(RANGE)
    assigner.place(vs("a"))
    served = assigner.result(("media", "a"))
    assert served is not None
    port = ports(assigner, "a")[0]
    assert assigner.place(vs("a"), {("a-l0", "UDP"): port}) == {("media", "a")}
    assert assigner.result(("media", "a")) is served
    # Recorded now: an older listener arriving late no longer takes it.
    tight = PortAssigner(PortRange(port, port))
    tight.place(vs("z", created="2026-01-05T00:00:00Z"), {("z-l0", "UDP"): port})
    tight.place(vs("older", created="2026-01-01T00:00:00Z"))
    assert ports(tight, "z") == [port] and tight.result(("media", "older")) is None


def test_a_recorded_port_outside_the_range_is_assigned_anew() -> None:
    assigner = PortAssigner(PortRange(20000, 20009))
    assigner.place(vs("a"), {("a-l0", "UDP"): 30000})  # recorded under an earlier, other range
    assert ports(assigner, "a")[0] in PortRange(20000, 20009)


def test_a_listener_that_names_a_port_gives_up_its_assigned_one() -> None:
    assigner = PortAssigner(PortRange(20000, 20000))
    assigner.place(vs("a"))
    assert ports(assigner, "a") == [20000]
    assigner.place(vs("a", port=3000))  # the same listener now names its port: 20000 is free again
    assert ports(assigner, "a") == [3000]
    assigner.place(vs("b"))
    assert ports(assigner, "b") == [20000]


def test_an_explicit_port_of_its_own_other_listener_moves_an_assigned_one() -> None:
    assigner = PortAssigner(PortRange(20000, 20001), settled_when_assigned=True)
    assigner.place(vs("a", listeners=2))
    first, second = ports(assigner, "a")
    assigner.place(vs("a", port=second, listeners=2))  # its first listener names what its second held
    assert ports(assigner, "a") == [second, first]


@pytest.mark.parametrize("size", [250, 320, 2000])
def test_any_arrival_order_gives_what_arrival_oldest_first_gives(size: int) -> None:
    # 300 listeners without a record, some explicit ports in the range, timestamps to the second (many ties):
    # fed in a random order, the ports equal those of feeding them oldest first.
    shuffler = random.Random(size)
    services = [
        vs(f"call-{shuffler.randrange(10**6)}-{i}", created=f"2026-01-01T00:00:0{shuffler.randrange(3)}Z")
        for i in range(300)
    ] + [vs(f"named-{i}", port=20000 + shuffler.randrange(size)) for i in range(10)]
    oldest_first = PortAssigner(PortRange(20000, 20000 + size - 1))
    for service in sorted(services, key=lambda s: (s.created, s.namespace, s.name)):
        oldest_first.place(service)
    expected = {s.name: oldest_first.ports_of(s.key) for s in services}
    for _ in range(3):
        shuffler.shuffle(services)
        assigner = PortAssigner(PortRange(20000, 20000 + size - 1))
        for service in services:
            assigner.place(service)
        assert {s.name: assigner.ports_of(s.key) for s in services} == expected
