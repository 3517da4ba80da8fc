"""Leadership handover and the status writer: the real `kubernetes` client against the fake API server.

A replica computes status whether or not it leads, and skips a VirtualService whose inputs did not
change. When it (again) becomes leader it must still write every status that differs from what the
object carries, even one another leader changed while this replica followed, and what was wanted
while its own renewal was late.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from kubernetes import client

from tests.support.ads_client import eventually
from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import GROUP, NS, PLURAL, VERSION, vs_body
from xds_operator.app.wiring import build_kubernetes_plane
from xds_operator.sources.kubernetes.leader import LeaderElector, LeaseConfig
from xds_operator.status.writer import StatusWriter


def programmed(apiserver: FakeApiServer, name: str) -> str | None:
    status = (apiserver.get(PLURAL, NS, name) or {}).get("status") or {}
    return {c["type"]: c.get("reason") for c in status.get("conditions") or ()}.get("Programmed")


async def test_a_new_leader_rewrites_a_status_another_leader_changed_while_it_followed() -> None:
    with FakeApiServer(bookmark_interval=0.2) as apiserver:
        api = apiserver.api_client()
        leading = True
        plane = build_kubernetes_plane(api, [NS], leading=lambda: leading, status_retry_delay=0.1)
        writer = plane.writer
        plane.start_watches()
        tasks = [asyncio.create_task(work) for work in plane.background()]
        objects = client.CustomObjectsApi(api)
        try:
            await asyncio.wait_for(plane.source.synced(), 15)
            objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs_body("calls"))
            # The status once the served generation's listener is in it: nothing more is written after it.
            await eventually(
                lambda: programmed(apiserver, "calls") == "NoProxies" and status_of_calls(apiserver)["listeners"],
                "the first complete status",
            )

            leading = False  # another replica leads, and writes what it sees (here: something stale)
            stale = {"observedGeneration": 1, "conditions": [{"type": "Programmed", "status": "True"}]}
            objects.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "calls", {"status": stale})
            await eventually(
                lambda: writer.written((NS, "calls")) == status_of_calls(apiserver), "the follower to see that status"
            )
            assert programmed(apiserver, "calls") is None  # still the stale one (it has no reason)

            leading = True  # this replica leads again: what the elector tells the plane
            plane.leadership_changed(True)
            await eventually(lambda: programmed(apiserver, "calls") == "NoProxies", "the status rewritten")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await plane.close(reflector_timeout=1.0)
            api.close()


async def test_status_wanted_while_a_renewal_was_late_is_written_once_the_leader_renews() -> None:
    """Writes stop when the leader has not renewed for the renew deadline, even while its renewal is still on
    its way (a slow API server); when that renewal succeeds after all, what was wanted meanwhile is written."""
    with FakeApiServer() as apiserver:
        api = apiserver.api_client()
        late = 0.0  # added to the clock: how late the leader's renewal is
        config = LeaseConfig("xds-operator", NS, "replica-a", lease_duration=8.0, renew_deadline=6.0, retry_period=1.0)
        writer = StatusWriter(api, retry_delay=0.1, leading=lambda: elector.leading)
        elector = LeaderElector(
            api,
            config,
            on_change=lambda leading: writer.resume() if leading else None,
            clock=lambda: time.monotonic() + late,
        )
        tasks = [asyncio.create_task(elector.run()), asyncio.create_task(writer.run())]
        objects = client.CustomObjectsApi(api)
        try:
            objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs_body("calls"))
            await eventually(lambda: elector.leading, "replica-a to lead")
            renewed = lease_renewal(apiserver)
            await eventually(lambda: lease_renewal(apiserver) != renewed, "a renewal (then a 1 s pause)")

            late = config.renew_deadline  # the leader now stops writing, until its next renewal
            assert not elector.leading
            status = {"observedGeneration": 1, "conditions": []}
            writer.want((NS, "calls"), status)  # refused for now
            await eventually(lambda: status_of_calls(apiserver) == status, "the wanted status, after the renewal")
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await elector.stopped()
            api.close()


def lease_renewal(apiserver: FakeApiServer) -> str | None:
    return ((apiserver.get("leases", NS, "xds-operator") or {}).get("spec") or {}).get("renewTime")


def status_of_calls(apiserver: FakeApiServer) -> dict | None:
    return (apiserver.get(PLURAL, NS, "calls") or {}).get("status")


async def test_a_write_that_returns_after_leadership_ended_does_not_hide_what_the_next_leader_wrote() -> None:
    """The race behind this module's flakiness: the API server stores a write before the writer hears back.
    Meanwhile leadership ends and the watch delivers that write and then the next leader's; recording the
    own write only afterwards would overwrite the newer status, so the writer would never correct it."""
    leading = True
    writer = StatusWriter(client.ApiClient(), retry_delay=0.01, leading=lambda: leading)
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    class Answer:  # the raw response the writer asks for (it does not decode it)
        def drain_conn(self) -> None:
            pass

    class SlowObjects:
        def patch_namespaced_custom_object_status(self, *args: object, **kwargs: object) -> Answer:
            started.set()
            release.wait(10)
            returned.set()
            return Answer()

    writer._objects = SlowObjects()  # type: ignore[assignment]
    writing = asyncio.create_task(writer.run())
    key = (NS, "calls")
    mine = {"observedGeneration": 1, "conditions": [{"type": "Programmed", "reason": "NoProxies"}]}
    theirs = {"observedGeneration": 1, "conditions": [{"type": "Programmed", "reason": "Programmed"}]}
    try:
        writer.want(key, mine)
        await eventually(started.is_set, "the write to be sent")
        leading = False
        writer.observed(key, mine)  # the watch: this write, then the next leader's
        writer.observed(key, theirs)
        release.set()
        await eventually(lambda: returned.is_set() and writer.writes == 1, "the write to return")
        # The writer handles the answer: what it holds as written is what the watch saw last, not its own write.
        await eventually(lambda: writer.written(key) == theirs, "the writer to take the next leader's status")
    finally:
        release.set()
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
