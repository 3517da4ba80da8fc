"""VirtualService status: what to write (pure) and the writer that writes it (coalesced, off the loop).

Conditions follow the usual Kubernetes shape (type, status, reason, message,
lastTransitionTime, observedGeneration):
- Accepted: the spec is valid (False carries the validation errors).
- Programmed: every selected proxy has ACKed its resources (False says how many have,
  or carries Envoy's NACK text).
- Ready: Programmed, the latest generation is valid, and every cluster has at least one
  ready endpoint: the route is live (what an app waits for before handing out an address).
- Conflicted: another, older VirtualService claims the same listener name, cluster name or
  port on a proxy, so this one is left out there.

Beside them, status.listeners: per listener its name, protocol, port, the pod IPs of the
proxies that run it (sorted, at most MAX_STATUS_ADDRESSES) and its cluster's ready endpoint count.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xds_operator.api import API_GROUP, API_VERSION, KIND, Key
from xds_operator.api.schema import MAX_STATUS_ADDRESSES, PLURAL
from xds_operator.api.timestamps import now_rfc3339 as now_rfc3339  # also for sources/kubernetes/source.py
from xds_operator.status.progress import Progress
from xds_operator.status.readiness import ListenerState

if TYPE_CHECKING:
    import urllib3

log = logging.getLogger(__name__)

COMPONENT = "xds-operator"
WRITES_IN_FLIGHT = 4  # status PATCHes sent at once (the client's connection pool holds more)
MAX_MESSAGE = 1024  # keep conditions readable; Kubernetes allows 32768


@dataclass(frozen=True)
class Observed:
    """What the control plane knows of one VirtualService when it computes its status."""

    generation: int
    rejected: str | None = None  # the validation errors of the latest generation
    serving_generation: int | None = None  # the generation in the snapshots (an older one if the latest is invalid)
    conflict: str | None = None
    progress: Progress | None = None
    listeners: tuple[ListenerState, ...] = ()  # of the generation served
    addresses: tuple[str, ...] = ()  # pod IPs of the proxies that run its current resources, sorted


def status_of(observed: Observed, previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The status subresource for a VirtualService; lastTransitionTime kept when a condition's status holds."""
    earlier = {c.get("type"): c for c in (previous or {}).get("conditions") or () if isinstance(c, Mapping)}
    programmed = _programmed(observed)
    conditions = [
        _condition(kind, status, reason, message, observed.generation, earlier.get(kind), now)
        for kind, status, reason, message in (
            _accepted(observed),
            programmed,
            _ready(observed, programmed),
            _conflicted(observed),
        )
    ]
    # Always present (even empty): the status is merge-patched, and an absent key would keep the old list.
    return {"observedGeneration": observed.generation, "conditions": conditions, "listeners": _listeners(observed)}


SETTLING = frozenset({"Pending", "NoProxies"})  # Ready's reasons while the proxies have yet to get it


def settling(status: Mapping[str, Any]) -> bool:
    """Whether a status says no more than "not on every selected proxy yet" (Ready False, Pending or NoProxies)."""
    ready: Mapping[str, Any] = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
    return ready.get("status") == "False" and ready.get("reason") in SETTLING


def _accepted(observed: Observed) -> tuple[str, str, str, str]:
    if observed.rejected is None:
        return ("Accepted", "True", "Accepted", "the spec is valid")
    message = observed.rejected
    if observed.serving_generation is not None:
        message += f" (still serving generation {observed.serving_generation})"
    return ("Accepted", "False", "Invalid", message)


def _programmed(observed: Observed) -> tuple[str, str, str, str]:
    progress = observed.progress or Progress()
    if observed.serving_generation is None:
        return ("Programmed", "False", "Invalid", "not served: no valid generation of the spec")
    if progress.rejections:
        node, error = progress.rejections[0]
        more = f" (and {len(progress.rejections) - 1} more proxies)" if len(progress.rejections) > 1 else ""
        return ("Programmed", "False", "Rejected", f"proxy {node} rejected its resources{more}: {error}")
    if progress.selected == 0:
        return ("Programmed", "False", "NoProxies", "no connected proxy in its namespace matches spec.selector")
    counts = f"{progress.applied} of {progress.selected} selected proxies run it"
    if progress.replicas > 1:
        counts += f" (proxies of all {progress.replicas} control plane replicas)"
    if progress.waiting:
        return ("Programmed", "False", "Pending", f"{counts}; waiting for replica {progress.waiting[0]} to catch up")
    if progress.applied == progress.selected:
        return ("Programmed", "True", "Programmed", counts)
    if observed.conflict is not None:
        return ("Programmed", "False", "Conflicted", f"{counts}; left out where it conflicts")
    return ("Programmed", "False", "Pending", counts)


def _ready(observed: Observed, programmed: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
    if observed.rejected is not None:
        return ("Ready", "False", "Invalid", f"generation {observed.generation} is invalid (see Accepted)")
    _, status, reason, message = programmed
    if status != "True":
        return ("Ready", "False", reason, message)
    empty = [listener.cluster for listener in observed.listeners if listener.cluster.ready_endpoints == 0]
    if empty:
        more = f" (and {len(empty) - 1} more clusters)" if len(empty) > 1 else ""
        cluster = empty[0]
        return (
            "Ready",
            "False",
            "NoReadyEndpoints",
            f"cluster {cluster.name} has no ready endpoint{more}: {cluster.why_none}",
        )
    return ("Ready", "True", "Ready", f"{message}; every cluster has a ready endpoint")


def _listeners(observed: Observed) -> list[dict[str, Any]]:
    return [
        {
            "name": listener.name,
            "protocol": listener.protocol,
            "port": listener.port,
            "addresses": list(observed.addresses[:MAX_STATUS_ADDRESSES]),
            "cluster": {"name": listener.cluster.name, "readyEndpoints": listener.cluster.ready_endpoints},
        }
        for listener in observed.listeners
    ]


def _conflicted(observed: Observed) -> tuple[str, str, str, str]:
    if observed.conflict is None:
        return ("Conflicted", "False", "NoConflicts", "no other VirtualService claims its listeners, clusters or ports")
    return ("Conflicted", "True", "Conflicted", observed.conflict)


def _condition(
    kind: str, status: str, reason: str, message: str, generation: int, earlier: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    since = earlier.get("lastTransitionTime") if earlier and earlier.get("status") == status else None
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }


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
        self.writes = 0  # status writes sent, for tests and /debug
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

        The source skips a VirtualService whose inputs did not change, so a status that matched the
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
                written = await self._attempt(what, self._emit, warning)
                self.failures["event_write"] += written is False
                failed |= not written
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
            ok = await self._attempt(f"status of {key[0]}/{key[1]}", self._patch, key, status)
            if ok:
                # If leadership ended during the write, the watch, not this write, says what the object
                # carries: it may already have delivered what the next leader wrote since.
                if self._leading():
                    self._written[key] = status
            elif ok is None:
                self._written.pop(key, None)
            else:
                self._wanted.setdefault(key, status)  # retry, unless a newer one is already wanted
                self.failures["status_write"] += 1
                all_written = False
        return all_written

    async def _attempt(self, what: str, call: Callable[..., Any], *args: Any) -> bool | None:
        """True when written, None when the object is gone, False to retry."""
        try:
            await asyncio.to_thread(call, *args)
            return True
        except NotLeading:
            return False  # kept wanted; written if this replica leads again
        except ApiException as error:
            if error.status == 404:
                log.debug("%s: the VirtualService is gone", what)
                return None
            log.warning("cannot write %s: HTTP %s %s", what, error.status, error.reason, extra={"error": error.reason})
        except Exception as error:  # network trouble: retry later
            log.warning("cannot write %s: %s", what, error, extra={"error": str(error)})
        return False

    def _patch(self, key: Key, status: dict[str, Any]) -> None:
        namespace, name = key
        if not self._leading():  # leadership can end while writes queue up
            raise NotLeading()
        response = self._objects.patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False
        )
        # Not decoding the object it returns saves client CPU per write. With _preload_content=False the client
        # returns urllib3's response as it is (its signature says `object`).
        cast("urllib3.BaseHTTPResponse", response).drain_conn()
        self.writes += 1

    def _emit(self, warning: WarningEvent) -> None:
        if not self._leading():
            return  # dropped: the leader reports it
        now = now_rfc3339()
        self._core.create_namespaced_event(
            warning.namespace,
            {  # type: ignore[arg-type]  # the client's validate_call turns the dict into the CoreV1Event it names
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
