"""Leader election between replicas: LeaderElector instances (one per replica, each with its own
client and User-Agent) against the fake API server's coordination.k8s.io Leases, with short
durations. Tests assert who holds the Lease and who may write, sampled all along: never two.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from kubernetes import client

from tests.support.ads_client import eventually
from tests.support.fake_apiserver import FakeApiServer
from xds_operator import cli
from xds_operator.api.timestamps import parse_rfc3339
from xds_operator.sources.kubernetes.leader import LeaderElector, LeaseConfig, Record, may_take

NS = "xds-operator-system"
LEASE = "xds-operator"
WAIT = 15.0


@dataclass
class Replica:
    elector: LeaderElector
    api: client.ApiClient
    task: asyncio.Task | None = None
    changes: list[bool] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.elector.identity

    async def stop(self) -> None:
        """A clean stop: cancel the loop, wait for the Lease to be released."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            await self.elector.stopped()
            self.task = None


class Replicas:
    def __init__(self, apiserver: FakeApiServer):
        self.apiserver = apiserver
        self.all: list[Replica] = []
        self.both_led = False  # set by the sampler if two replicas ever may write at once
        self._sampler: asyncio.Task | None = None

    def start(self, identity: str, lease_duration: float = 3.0, renew_deadline: float = 2.0, retry: float = 0.1):
        api = self.apiserver.api_client()
        api.user_agent = f"xds-operator-test ({identity})"
        config = LeaseConfig(LEASE, NS, identity, lease_duration, renew_deadline, retry)
        replica = Replica(LeaderElector(api, config), api)
        replica.elector._on_change = replica.changes.append
        replica.task = asyncio.create_task(replica.elector.run())
        self.all.append(replica)
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample())
        return replica

    async def _sample(self) -> None:
        while True:
            if sum(r.elector.leading for r in self.all) > 1:
                self.both_led = True
            await asyncio.sleep(0.005)

    def leaders(self) -> list[str]:
        return [r.name for r in self.all if r.elector.leading]

    def lease(self) -> dict:
        return (self.apiserver.get("leases", NS, LEASE) or {}).get("spec") or {}

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        for replica in self.all:
            await replica.stop()
            replica.api.close()


@pytest.fixture
def apiserver():
    with FakeApiServer() as server:
        yield server
        assert server.errors == []


@pytest.fixture
async def replicas(apiserver: FakeApiServer) -> AsyncIterator[Replicas]:
    group = Replicas(apiserver)
    try:
        yield group
    finally:
        await group.close()


def test_who_may_take_a_lease() -> None:
    held = Record("a", 15, 0, None, None)
    assert may_take(held, "a", 0.0)  # its own: renew
    assert not may_take(held, "b", 14.9)  # someone else's, not expired
    assert may_take(held, "b", 15.0)  # expired: unchanged for the whole duration
    assert may_take(Record("", 1, 3, None, None), "b", 0.0)  # released: free at once


def test_inconsistent_durations_are_refused() -> None:
    assert LeaseConfig("l", "ns", "a").problems() == []
    assert LeaseConfig("l", "ns", "a", lease_duration=10, renew_deadline=10).problems() == [
        "--lease-duration must be more than --renew-deadline"
    ]
    assert LeaseConfig("l", "ns", "a", renew_deadline=2, retry_period=2).problems() == [
        "--renew-deadline must be more than 1.2 × --retry-period"
    ]
    assert LeaseConfig("My_Lease", "ns", "a").problems() == [
        "--lease-name 'My_Lease': use lowercase letters, digits, '-' and '.' (at most 200)"
    ]


def test_serve_refuses_inconsistent_lease_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--lease-duration", "5", "--renew-deadline", "5", "--kubeconfig", "/nonexistent"]) == 2
    assert "--lease-duration must be more than --renew-deadline" in capsys.readouterr().err


async def test_two_replicas_elect_exactly_one_leader(replicas: Replicas) -> None:
    a, b = replicas.start("replica-a"), replicas.start("replica-b")
    await eventually(lambda: len(replicas.leaders()) == 1, "one leader")
    [leader] = replicas.leaders()
    assert replicas.lease()["holderIdentity"] == leader
    # Several renewals later the same replica leads, and the other never did.
    renewed = replicas.lease()["renewTime"]
    await eventually(lambda: replicas.lease()["renewTime"] != renewed, "a renewal")
    await asyncio.sleep(0.5)
    assert replicas.leaders() == [leader]
    assert [r.changes for r in (a, b)] == ([[True], []] if leader == "replica-a" else [[], [True]])
    assert replicas.lease()["leaseTransitions"] == 0  # acquired once, at creation
    assert not replicas.both_led


async def test_a_leader_that_cannot_renew_steps_down_and_the_other_takes_over_after_expiry(
    replicas: Replicas, apiserver: FakeApiServer
) -> None:
    a = replicas.start("replica-a")
    await eventually(lambda: a.elector.leading, "replica-a to lead")
    b = replicas.start("replica-b")
    await eventually(lambda: b.elector.holder == "replica-a", "replica-b to see the Lease")
    cut = len(apiserver.requests)
    apiserver.fail_next(10**6, code=503, user_agent="(replica-a)")  # replica-a is cut off from the API server
    # replica-a sends one request at a time: once one fails, its last renewal is in the Lease.
    await eventually(lambda: any("replica-a" in r.user_agent for r in apiserver.requests[cut:]), "a failed renewal")
    assert replicas.lease()["holderIdentity"] == "replica-a"
    last_renewal = parse_rfc3339(replicas.lease()["renewTime"])
    await eventually(lambda: b.elector.leading, "replica-b to take over")
    assert not a.elector.leading  # it stopped writing by the renew deadline, before the Lease expired
    await eventually(lambda: a.changes == [True, False], "replica-a to step down")
    spec = replicas.lease()
    assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1
    # Not before the Lease expired: replica-b waited the full duration after replica-a's last renewal.
    assert (parse_rfc3339(spec["acquireTime"]) - last_renewal) / 1e9 >= 3.0 - 0.05
    assert not replicas.both_led

    apiserver.clear_failures()  # replica-a is back: it follows
    await eventually(lambda: a.elector.holder == "replica-b", "replica-a to see the new holder")
    assert replicas.leaders() == ["replica-b"]


async def test_a_clean_stop_hands_over_without_waiting_for_expiry(replicas: Replicas) -> None:
    # A 60 s lease: the other replica could only take over this fast because the Lease was released.
    a = replicas.start("replica-a", lease_duration=60, renew_deadline=30, retry=0.1)
    await eventually(lambda: a.elector.leading, "replica-a to lead")
    b = replicas.start("replica-b", lease_duration=60, renew_deadline=30, retry=0.1)
    await eventually(lambda: b.elector.holder == "replica-a", "replica-b to see the Lease")
    await a.stop()
    assert not a.elector.leading and a.changes == [True, False]
    await eventually(lambda: b.elector.leading, "replica-b to take over", timeout=WAIT)
    spec = replicas.lease()
    assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1
    assert not replicas.both_led


async def test_a_stopped_follower_leaves_the_lease_alone(replicas: Replicas) -> None:
    a, b = replicas.start("replica-a"), replicas.start("replica-b")
    await eventually(lambda: len(replicas.leaders()) == 1, "one leader")
    [follower] = [r for r in (a, b) if not r.elector.leading]
    holder = replicas.lease()["holderIdentity"]
    await follower.stop()
    assert replicas.lease()["holderIdentity"] == holder
    assert replicas.leaders() == [holder]
