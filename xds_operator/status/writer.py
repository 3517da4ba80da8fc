"""The status writer: writes the VirtualService statuses and Warning Events the reconciler hands it,
coalesced per VirtualService, a few requests at a time in worker threads (never on the event loop).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xds_operator.api import API_GROUP, API_VERSION, KIND, Key
from xds_operator.api.schema import PLURAL
from xds_operator.api.timestamps import now_rfc3339
from xds_operator.status.conditions import MAX_MESSAGE

log = logging.getLogger(__name__)

COMPONENT = "xds-operator"
WRITES_IN_FLIGHT = 4  # status PATCHes sent at once (the client's connection pool holds more)


class Attempt(enum.Enum):
    """How one write went."""

    WRITTEN = "written"
    GONE = "gone"  # the VirtualService no longer exists (404): nothing to retry
    FAILED = "failed"  # to be retried


class NotLeading(Exception):
    """Another replica leads: this one does not write."""


@dataclass(frozen=True)
class WarningEvent:
    """A Kubernetes Event about a VirtualService (type Warning)."""

    namespace: str
    name: str
    uid: str
    reason: str
    message: str


class StatusWriter:
    """Writes the latest wanted status per VirtualService, one request at a time, in a worker thread.

    `want` never blocks: it records the wanted status and wakes the writer. Writes of a key
    collapse to the newest; an unchanged status is not written; failures are retried with
    backoff; a VirtualService that is gone (404) is dropped.

    With several replicas only the leader writes (`leading`): a follower keeps computing what
    it wants, takes the status the objects carry as its baseline, drops its Events (the leader
    emits them), and writes what differs once it leads (`resume`).
    """

    def __init__(
        self, api_client: client.ApiClient, retry_delay: float = 1.0, leading: Callable[[], bool] = lambda: True
    ):
        self._leading = leading
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._latest: dict[Key, dict[str, Any]] = {}  # the status last computed, written or not (for `resume`)
        self._wanted: dict[Key, dict[str, Any]] = {}  # of those, the ones to write
        self._written: dict[Key, dict[str, Any]] = {}  # what the object carries, as far as this replica knows
        self._warnings: list[WarningEvent] = []
        self._wake = asyncio.Event()
        self._retry_delay = retry_delay
        self.writes = 0  # status writes sent, for metrics (the API server load status costs)
        self.failures: Counter[str] = Counter()  # failed writes by kind ("status_write", "event_write"), for metrics

    def written(self, key: Key) -> dict[str, Any] | None:
        return self._written.get(key)

    def observed(self, key: Key, status: Mapping[str, Any] | None) -> None:
        """The status the object carries now (from the watch): the baseline to compare against."""
        if status and (key not in self._written or not self._leading()):
            self._written[key] = dict(status)  # a follower follows what the leader wrote

    def want(self, key: Key, status: dict[str, Any]) -> None:
        self._latest[key] = status
        if self._written.get(key) == status:
            self._wanted.pop(key, None)
            return
        self._wanted[key] = status
        self._wake.set()

    def warn(self, warning: WarningEvent) -> None:
        self._warnings.append(warning)
        self._wake.set()

    def resume(self) -> None:
        """Leadership began: write whatever differs from what the objects carry.

        The reconciler skips a VirtualService whose inputs did not change, so a status that matched the
        object when computed is not wanted again even if another leader has changed the object since.
        """
        for key, status in self._latest.items():
            if self._written.get(key) != status:
                self._wanted[key] = status
        self._wake.set()

    def forget(self, key: Key) -> None:
        self._latest.pop(key, None)
        self._wanted.pop(key, None)
        self._written.pop(key, None)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._leading():
                self._warnings.clear()  # the leader reports these; `resume` wakes this loop
                continue
            failed = False
            while self._warnings:
                warning = self._warnings.pop(0)
                what = f"event for {warning.namespace}/{warning.name}"
                attempt = await self._attempt(what, self._emit, warning)
                self.failures["event_write"] += attempt is Attempt.FAILED
                failed |= attempt is not Attempt.WRITTEN
            # A few writes in flight at once: one at a time, 10,000 statuses at a cold start took ~40 s
            # of request round trips. Each key is written by one task, so its writes stay in order.
            keys = iter(list(self._wanted))
            outcomes = await asyncio.gather(*(self._write_some(keys) for _ in range(WRITES_IN_FLIGHT)))
            failed |= not all(outcomes)
            if failed:
                await asyncio.sleep(self._retry_delay)
                self._wake.set()

    async def _write_some(self, keys: Iterator[Key]) -> bool:
        """Write wanted statuses, taking keys from a shared iterator; False if any write failed."""
        all_written = True
        for key in keys:
            status = self._wanted.pop(key, None)
            if status is None or self._written.get(key) == status:
                continue
            attempt = await self._attempt(f"status of {key[0]}/{key[1]}", self._patch, key, status)
            if attempt is Attempt.WRITTEN:
                # If leadership ended during the write, the watch, not this write, says what the object
                # carries: it may already have delivered what the next leader wrote since.
                if self._leading():
                    self._written[key] = status
            elif attempt is Attempt.GONE:
                self._written.pop(key, None)
            else:
                self._wanted.setdefault(key, status)  # retry, unless a newer one is already wanted
                self.failures["status_write"] += 1
                all_written = False
        return all_written

    async def _attempt(self, what: str, call: Callable[..., Any], *args: Any) -> Attempt:
        try:
            await asyncio.to_thread(call, *args)
            return Attempt.WRITTEN
        except NotLeading:
            return Attempt.FAILED  # kept wanted; written if this replica leads again
        except ApiException as error:
            if error.status == 404:
                log.debug("%s: the VirtualService is gone", what)
                return Attempt.GONE
            log.warning("cannot write %s: HTTP %s %s", what, error.status, error.reason, extra={"error": error.reason})
        except Exception as error:  # network trouble: retry later
            log.warning("cannot write %s: %s", what, error, extra={"error": str(error)})
        return Attempt.FAILED

    def _patch(self, key: Key, status: dict[str, Any]) -> None:
        namespace, name = key
        if not self._leading():  # leadership can end while writes queue up
            raise NotLeading()
        response: Any = self._objects.patch_namespaced_custom_object_status(  # the raw response
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False
        )
        response.drain_conn()  # the object it returns is not needed: not decoding it saves client CPU per write
        self.writes += 1

    def _emit(self, warning: WarningEvent) -> None:
        if not self._leading():
            return  # dropped: the leader reports it
        now = now_rfc3339()
        self._core.create_namespaced_event(  # the client sends a dict as it is
            warning.namespace,
            {  # type: ignore[arg-type]
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{warning.name}.{uuid.uuid4().hex[:16]}", "namespace": warning.namespace},
                "involvedObject": {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": KIND,
                    "namespace": warning.namespace,
                    "name": warning.name,
                    "uid": warning.uid,
                },
                "reason": warning.reason,
                "message": warning.message[:MAX_MESSAGE],
                "type": "Warning",
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )
