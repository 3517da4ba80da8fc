"""Replicas tell each other how far their proxies are, so the leader's status counts every proxy.

Each replica serves only the proxies connected to it. Every replica publishes, in a Lease of its
own (`<lease-name>-<hash of identity>`, labelled as one of `<lease-name>`'s replicas), a summary
per VirtualService: the generation it serves, and how many of its proxies it selects, how many
run it (and their node ids, for status.listeners addresses), and the first NACK. Every replica
reads the others' summaries every retry period; the leader adds them to its own proxies'
progress before it writes status:

- a peer's proxies count as running generation G only if the peer serves G too;
- while a live peer serves another generation of a VirtualService, or does not list it yet,
  Programmed stays False (Pending, "waiting for replica X"): it never turns True on a partial
  count and back;
- a peer whose Lease has not changed for its lease duration (it stopped or hung) is left out,
  and the leader deletes reports that have been stale for STALE_DELETE_FACTOR durations.

The pure parts (encode, decode, merge) are separate from the Lease I/O (ProgressReports).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xds_operator.api import Key
from xds_operator.sources.kubernetes.leader import LeaseConfig
from xds_operator.status.progress import Progress

log = logging.getLogger(__name__)

ANNOTATION = "xds-operator.l7mp.io/progress"
LABEL = "xds-operator.l7mp.io/replica-of"
MAX_REPORT = 200_000  # bytes; annotations may total 256 KiB
MAX_SERVING = 32  # node ids per VirtualService in a report: status.listeners lists at most 32 addresses
BUILD_SPACING = 20  # a report is built at most every 20 times as long as building the last one took
STALE_DELETE_FACTOR = 20  # a report unchanged this many lease durations belongs to a replica that is gone


@dataclass(frozen=True)
class Entry:
    """One replica's view of one VirtualService."""

    generation: int | None  # the generation it serves (None: no valid one)
    selected: int = 0
    applied: int = 0
    rejection: str | None = None  # "<node id>: <Envoy's error>"
    serving: tuple[str, ...] = ()  # node ids of its proxies that run it (status.listeners addresses)


def encode(own: Mapping[Key, Progress], generations: Mapping[Key, int | None]) -> str:
    """A compact JSON report, at most MAX_REPORT bytes (see `_report` for its shape).

    When the full report is too big, first the serving node ids go (status.listeners then lists
    only the other replicas' proxies), then the VirtualServices without proxies here (see merge).
    """
    for with_nodes, partial in ((True, False), (False, False), (False, True)):
        text = json.dumps(_report(own, generations, with_nodes, partial), separators=(",", ":"))
        if len(text) <= MAX_REPORT:
            break
    return text


def _report(
    own: Mapping[Key, Progress], generations: Mapping[Key, int | None], with_nodes: bool, partial: bool
) -> dict[str, object]:
    """{"ns/name": generation} for a VirtualService without proxies here, else
    [generation, selected, applied, rejection, index into "nodes" or null]; "nodes" holds each set of
    serving node ids once (the same proxies usually run many VirtualServices)."""
    report: dict[str, object] = {"partial": True} if partial else {}
    node_sets: dict[tuple[str, ...], int] = {}
    for key, generation in sorted(generations.items()):
        progress = own.get(key)
        name = f"{key[0]}/{key[1]}"
        if progress is None or (progress.selected == 0 and not progress.rejections):
            if not partial:
                report[name] = generation
            continue
        rejection = f"{progress.rejections[0][0]}: {progress.rejections[0][1]}" if progress.rejections else None
        serving = tuple(sorted({node for nodes in progress.serving for node in nodes})[:MAX_SERVING])
        index = node_sets.setdefault(serving, len(node_sets)) if serving and with_nodes else None
        report[name] = [generation, progress.selected, progress.applied, rejection and rejection[:512], index]
    if node_sets:
        report["nodes"] = [list(nodes) for nodes in node_sets]
    return report


def decode(text: str | None) -> tuple[dict[Key, Entry], bool]:
    """The entries of a report and whether it is partial; garbage gives ({}, True) (counted as nothing)."""
    try:
        report = json.loads(text or "")
    except ValueError:
        return {}, True
    if not isinstance(report, dict):
        return {}, True
    listed = report.get("nodes")
    node_sets: list[tuple[str, ...]] = []  # shared by the entries (status caches addresses per node set)
    if isinstance(listed, list) and all(
        isinstance(nodes, list) and all(isinstance(node, str) for node in nodes) for nodes in listed
    ):
        node_sets = [tuple(nodes) for nodes in listed]
    entries: dict[Key, Entry] = {}
    for name, value in report.items():
        namespace, sep, vs_name = name.partition("/")
        if not sep:
            continue
        if isinstance(value, list) and len(value) == 5:
            generation, selected, applied, rejection, index = value
            if (
                _count(generation, True)
                and _count(selected)
                and _count(applied)
                and isinstance(rejection, str | None)
                and (index is None or (_count(index) and index < len(node_sets)))
            ):
                serving = node_sets[index] if index is not None else ()
                entries[(namespace, vs_name)] = Entry(generation, selected, applied, rejection, serving)
        elif _count(value, True):
            entries[(namespace, vs_name)] = Entry(value)
    return entries, report.get("partial") is True


def _count(value: object, none_ok: bool = False) -> bool:
    return (value is None and none_ok) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


@dataclass(frozen=True)
class PeerReport:
    identity: str
    entries: dict[Key, Entry]
    partial: bool = False


def merge(
    own: Mapping[Key, Progress], generations: Mapping[Key, int | None], peers: list[PeerReport]
) -> dict[Key, Progress]:
    """Own progress plus every live peer's, per VirtualService this replica serves (pure)."""
    return {key: merge_one(own.get(key), generation, key, peers) for key, generation in generations.items()}


def merge_one(mine: Progress | None, generation: int | None, key: Key, peers: list[PeerReport]) -> Progress:
    """One VirtualService's progress: this replica's proxies plus every live peer's (pure)."""
    mine = mine or Progress()
    total = Progress(
        mine.selected, mine.applied, list(mine.rejections), serving=list(mine.serving), replicas=1 + len(peers)
    )
    for peer in peers:
        entry = peer.entries.get(key)
        if entry is None:
            if not peer.partial:  # a full report without it: the peer has not seen it yet
                total.waiting.append(peer.identity)
            continue
        if entry.generation != generation:
            total.waiting.append(peer.identity)
            total.selected += entry.selected
            continue
        total.selected += entry.selected
        total.applied += entry.applied
        if entry.serving:
            total.serving.append(entry.serving)
        if entry.rejection:
            node, _, error = entry.rejection.partition(": ")
            total.rejections.append((node, error))
    return total


def changed_entries(before: PeerReport, after: PeerReport) -> set[Key]:
    """The VirtualServices whose entries differ between two reports of one peer (none if it is the same read)."""
    if before is after:
        return set()
    old, new = before.entries, after.entries
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def report_name(lease_name: str, identity: str) -> str:
    """A valid object name for any identity (host names with `_` are not)."""
    return f"{lease_name}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


@dataclass
class _Seen:
    resource_version: str
    since: float  # when this replica first saw that version (its monotonic clock)
    report: PeerReport = field(default_factory=lambda: PeerReport("", {}))
    duration: float = 15.0


class ProgressReports:
    """Publishes this replica's report and reads the others', every retry period, in a worker thread."""

    def __init__(
        self,
        api_client: client.ApiClient,
        config: LeaseConfig,
        on_change: Callable[[], None] = lambda: None,
        leading: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        stale_delete_factor: float = STALE_DELETE_FACTOR,
    ) -> None:
        self.config = config
        self.name = report_name(config.name, config.identity)
        self._stale_delete_factor = stale_delete_factor
        self._leases = client.CoordinationV1Api(api_client)
        self._on_change = on_change  # called on the event loop when a peer's report changes
        self._leading = leading
        self._clock = clock
        self._lock = threading.Lock()
        self._report: str | None = None  # the latest report to publish
        self._build: Callable[[], str] | None = None  # or what makes it (see publish_from)
        self._next_build = 0.0  # monotonic time before which the report is not built again
        self._published: str | None = None
        self._published_at = -float("inf")
        self._seen: dict[str, _Seen] = {}  # Lease name → what was read
        self._live: list[PeerReport] = []
        self.synced = asyncio.Event()  # set after the first read: before it, peers are unknown
        self._withdrawing: asyncio.Future[None] | None = None

    def publish(self, report: str) -> None:
        self._report = report
        self._build = None

    def publish_from(self, build: Callable[[], str]) -> None:
        """Publish what `build` returns, built when the report is next written (at most once per retry
        period): the report covers every VirtualService, so it is not re-encoded on every change."""
        self._build = build

    def peers(self) -> list[PeerReport]:
        """The live peers' reports (not this replica's), as last read."""
        return list(self._live)

    async def run(self) -> None:
        """Publish and read every retry period; on cancel, withdraw this replica's report (see `stopped`)."""
        try:
            while True:
                if self._build is not None and time.monotonic() >= self._next_build:
                    self._build_report()
                live = await asyncio.to_thread(self._sync)
                if live is not None and (live != self._live or not self.synced.is_set()):
                    self._live = live
                    self.synced.set()
                    self._on_change()
                await asyncio.sleep(self.config.retry_period)
        except asyncio.CancelledError:
            self._withdrawing = asyncio.get_running_loop().run_in_executor(None, self._withdraw)
            raise

    def _build_report(self) -> None:
        """Build the report on the loop (which owns what it is made of). It covers every VirtualService,
        so with thousands of them one build takes a good part of a second: the next waits BUILD_SPACING
        times as long, which keeps reports under ~1/BUILD_SPACING of a core (other replicas then see
        this one's proxies that much later; one replica alone is not slowed)."""
        assert self._build is not None
        started = time.monotonic()
        self._report, self._build = self._build(), None
        self._next_build = started + BUILD_SPACING * (time.monotonic() - started)

    async def stopped(self) -> None:
        if self._withdrawing is not None:
            await asyncio.shield(self._withdrawing)

    # -- Lease I/O, in a worker thread ------------------------------------------------------

    def _sync(self) -> list[PeerReport] | None:
        with self._lock:
            try:
                self._write_own()
                return self._read_peers()
            except Exception as error:  # network trouble: keep the last view, retry next period
                log.warning("replica reports (Leases %s-*): %s", self.config.name, error)
                return None

    def _write_own(self) -> None:
        report = self._report
        due = self._clock() - self._published_at >= self.config.lease_duration / 3  # peers see it is alive
        if report is None or (report == self._published and not due):
            return
        config = self.config
        now = datetime.now(UTC)
        spec = client.V1LeaseSpec(
            holder_identity=config.identity,
            lease_duration_seconds=max(1, round(config.lease_duration)),
            renew_time=now,
        )
        metadata = client.V1ObjectMeta(
            name=self.name, namespace=config.namespace, labels={LABEL: config.name}, annotations={ANNOTATION: report}
        )
        try:
            current = self._leases.read_namespaced_lease(
                self.name, config.namespace, _request_timeout=config.request_timeout
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self._leases.create_namespaced_lease(
                config.namespace, client.V1Lease(metadata=metadata, spec=spec), _request_timeout=config.request_timeout
            )
        else:
            current_version = current.metadata.resource_version if current.metadata else None
            metadata.resource_version = current_version  # only this replica writes it
            self._leases.replace_namespaced_lease(
                self.name,
                config.namespace,
                client.V1Lease(metadata=metadata, spec=spec),
                _request_timeout=config.request_timeout,
            )
        self._published, self._published_at = report, self._clock()

    def _read_peers(self) -> list[PeerReport]:
        config = self.config
        listed = self._leases.list_namespaced_lease(
            config.namespace, label_selector=f"{LABEL}={config.name}", _request_timeout=config.request_timeout
        )
        now = self._clock()
        seen: dict[str, _Seen] = {}
        for lease in listed.items:
            metadata = lease.metadata
            # The API server gives every object a name and a resourceVersion (the client's model has them optional).
            if metadata is None or not metadata.name or not metadata.resource_version or metadata.name == self.name:
                continue
            name, version = metadata.name, metadata.resource_version
            previous = self._seen.get(name)
            if previous is not None and previous.resource_version == version:
                seen[name] = previous
                continue
            entries, partial = decode((metadata.annotations or {}).get(ANNOTATION))
            identity = (lease.spec.holder_identity if lease.spec else None) or name
            duration = float((lease.spec.lease_duration_seconds if lease.spec else None) or config.lease_duration)
            seen[name] = _Seen(version, now, PeerReport(identity, entries, partial), duration)
        self._seen = seen
        live = []
        for name, entry in sorted(seen.items()):
            age = now - entry.since
            if age < entry.duration:
                live.append(entry.report)
            elif age > self._stale_delete_factor * entry.duration and self._leading():
                self._delete(name, entry.resource_version)
        return live

    def _delete(self, name: str, resource_version: str) -> None:
        try:
            self._leases.delete_namespaced_lease(
                name,
                self.config.namespace,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=resource_version)),
                _request_timeout=self.config.request_timeout,
            )
            log.info("deleted the stale replica report Lease %s/%s", self.config.namespace, name)
        except ApiException as error:
            log.debug("replica report %s: not deleted: HTTP %s", name, error.status)

    def _withdraw(self) -> None:
        """A clean stop: delete this replica's report, so the leader stops counting (and waiting for) it."""
        with self._lock:
            if self._published is None:
                return
            try:
                self._leases.delete_namespaced_lease(self.name, self.config.namespace, _request_timeout=2.0)
            except Exception as error:  # it goes stale on its own
                log.warning("cannot delete replica report Lease %s/%s: %s", self.config.namespace, self.name, error)
