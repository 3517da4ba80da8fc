"""Leader election through a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every replica serves xDS; only the leader writes VirtualService status and Events. A
candidate takes the Lease when it is free (no holder) or expired, the leader renews it every
retry period, and stops leading when it has not renewed for the renew deadline (shorter than
the lease duration, so it stops before anyone else may start). A leader that stops cleanly
releases the Lease (no holder, 1 s duration), so another replica takes over at its next try.

Expiry is judged like client-go: by when this replica last saw the Lease record change (its
own monotonic clock), not by the renewTime written with another machine's clock. Writes carry
the resourceVersion read, so two candidates racing for a free Lease cannot both win (409).
Lease I/O runs in a worker thread, one request at a time; the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # an object name
JITTER = 0.2  # candidates retry after retry_period × [1, 1.2): they do not all ask at once


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0  # how long a holder's claim lasts without renewal (client-go defaults)
    renew_deadline: float = 10.0  # the leader stops leading when it could not renew for this long
    retry_period: float = 2.0  # how often the leader renews and candidates try

    @property
    def request_timeout(self) -> float:
        """For each Lease request: a stuck one must not outlast half the renew deadline."""
        return max(0.5, self.renew_deadline / 2)

    def problems(self) -> list[str]:
        """What is inconsistent about these durations (client-go refuses the same combinations)."""
        problems = []
        if not NAME.fullmatch(self.name) or len(self.name) > 200:  # room for the replica reports' suffix
            problems.append(f"--lease-name {self.name!r}: use lowercase letters, digits, '-' and '.' (at most 200)")
        if self.retry_period <= 0:
            problems.append("--retry-period must be positive")
        if self.renew_deadline <= self.retry_period * (1 + JITTER):
            problems.append("--renew-deadline must be more than 1.2 × --retry-period")
        if self.lease_duration <= self.renew_deadline:
            problems.append("--lease-duration must be more than --renew-deadline")
        return problems


def default_namespace() -> str:
    """Where the Lease lives: $POD_NAMESPACE, else the in-cluster service account's namespace, else `default`."""
    if namespace := os.environ.get("POD_NAMESPACE"):
        return namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    """$POD_NAME (unique among running pods), else the host name plus a random suffix (unique per process)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Record:
    """The part of a Lease that says who leads (client-go's LeaderElectionRecord)."""

    holder: str
    duration: int
    transitions: int
    acquired: datetime | None
    renewed: datetime | None


def record_of(spec: client.V1LeaseSpec | None) -> Record:
    spec = spec or client.V1LeaseSpec()
    return Record(
        spec.holder_identity or "",
        spec.lease_duration_seconds or 0,
        spec.lease_transitions or 0,
        spec.acquire_time,
        spec.renew_time,
    )


def may_take(record: Record, identity: str, seen_for: float) -> bool:
    """Whether `identity` may write itself into a Lease whose record has been unchanged for `seen_for` seconds."""
    return not record.holder or record.holder == identity or seen_for >= record.duration


class LeaderElector:
    """Runs the election for one replica; `leading` says, at any moment, whether it may write."""

    def __init__(
        self,
        api_client: client.ApiClient,
        config: LeaseConfig,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._leases = client.CoordinationV1Api(api_client)
        self._on_change = on_change  # called on the event loop when leadership starts or ends
        self._clock = clock
        self._lock = threading.Lock()  # one Lease request at a time (a release waits for a renewal in flight)
        self._observed: Record | None = None
        self._observed_at = 0.0
        self._leading = False
        self._renewed_at = -float("inf")  # when the last successful renewal was sent
        self._releasing: asyncio.Future[bool] | None = None

    @property
    def identity(self) -> str:
        return self.config.identity

    @property
    def leading(self) -> bool:
        """True while this replica holds the Lease and renewed it within the renew deadline.

        Checked against the clock, so a renewal stuck in the network stops writes on time too.
        """
        return self._leading and self._clock() - self._renewed_at < self.config.renew_deadline

    @property
    def holder(self) -> str:
        """The holder this replica last saw in the Lease ('' when free or not read yet)."""
        return self._observed.holder if self._observed else ""

    def describe(self) -> dict[str, object]:
        return {"identity": self.identity, "leading": self.leading, "holder": self.holder, "lease": self._lease_ref()}

    async def run(self) -> None:
        """Try to acquire, then renew, forever; on cancel, release the Lease (see `stopped`)."""
        config = self.config
        try:
            while True:
                started = self._clock()
                held = await asyncio.to_thread(self._try_acquire_or_renew)
                if held:
                    if self._leading and not self.leading:
                        # The renew deadline passed before this renewal came back: writes were refused
                        # meanwhile, so say so, and start again (the writer then writes what waited).
                        self._set_leading(False)
                    self._renewed_at = started
                    if not self._leading:
                        self._set_leading(True)
                elif self._leading and (self.holder != self.identity or not self.leading):
                    self._set_leading(False)
                pause = config.retry_period if self._leading else config.retry_period * (1 + JITTER * random.random())
                await asyncio.sleep(pause)
        except asyncio.CancelledError:
            self._release_in_background()
            raise

    async def stopped(self) -> None:
        """Wait for the release that cancelling `run` started (so a stopping process hands over at once)."""
        if self._releasing is not None:
            await asyncio.shield(self._releasing)

    def _release_in_background(self) -> None:
        # Always: an acquisition may still be in flight. `release` waits for it and checks the holder.
        was_leading, self._leading = self._leading, False  # stop writing now, before the Lease is released
        if was_leading:
            self._on_change(False)
        self._releasing = asyncio.get_running_loop().run_in_executor(None, self.release)

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        if leading:
            log.info("leader election: %s now leads (Lease %s): writing status", self.identity, self._lease_ref())
        else:
            why = (
                f"could not renew Lease {self._lease_ref()} for {self.config.renew_deadline:g}s"
                if self.holder == self.identity
                else f"Lease {self._lease_ref()} is now held by {self.holder!r}"
            )
            log.warning("leader election: %s stopped leading (%s): not writing status", self.identity, why)
        self._on_change(leading)

    def _lease_ref(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"

    # -- Lease I/O, in a worker thread ------------------------------------------------------

    def _try_acquire_or_renew(self) -> bool:
        with self._lock:
            try:
                return self._acquire_or_renew()
            except ApiException as error:
                if error.status == 409:  # another replica wrote first: read again next time
                    log.debug("leader election: Lease %s changed under us (409)", self._lease_ref())
                else:
                    log.warning("leader election: Lease %s: HTTP %s %s", self._lease_ref(), error.status, error.reason)
            except Exception as error:  # network trouble: try again next period
                log.warning("leader election: Lease %s: %s", self._lease_ref(), error)
            return False

    def _acquire_or_renew(self) -> bool:
        config, timeout = self.config, self.config.request_timeout
        try:
            lease = self._leases.read_namespaced_lease(config.name, config.namespace, _request_timeout=timeout)
        except ApiException as error:
            if error.status != 404:
                raise
            now = datetime.now(UTC)
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=config.name, namespace=config.namespace),
                spec=self._spec(now, now, 0),
            )
            created = self._leases.create_namespaced_lease(config.namespace, body, _request_timeout=timeout)
            self._observe(record_of(created.spec))
            return True
        record = record_of(lease.spec)
        if record != self._observed:
            self._observe(record)
        if not may_take(record, config.identity, self._clock() - self._observed_at):
            return False
        now = datetime.now(UTC)
        if record.holder == config.identity:
            spec = self._spec(record.acquired or now, now, record.transitions)
        else:
            spec = self._spec(now, now, record.transitions + 1)
            log.info("leader election: %s takes Lease %s (was %r)", config.identity, self._lease_ref(), record.holder)
        lease.spec = spec  # metadata.resourceVersion stays as read: a concurrent write makes this a 409
        replaced = self._leases.replace_namespaced_lease(config.name, config.namespace, lease, _request_timeout=timeout)
        self._observe(record_of(replaced.spec))
        return True

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.config.identity,
            lease_duration_seconds=max(1, round(self.config.lease_duration)),
            acquire_time=acquired,
            renew_time=renewed,
            lease_transitions=transitions,
        )

    def _observe(self, record: Record) -> None:
        self._observed, self._observed_at = record, self._clock()

    def release(self) -> bool:
        """Give the Lease up if this replica holds it: no holder, a 1 s duration. Blocking; True when released."""
        config = self.config
        with self._lock:
            try:
                lease = self._leases.read_namespaced_lease(config.name, config.namespace, _request_timeout=2.0)
                spec = lease.spec
                if spec is None or spec.holder_identity != config.identity:
                    return False
                now = datetime.now(UTC)
                lease.spec = client.V1LeaseSpec(
                    lease_duration_seconds=1,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=spec.lease_transitions or 0,
                )
                self._leases.replace_namespaced_lease(config.name, config.namespace, lease, _request_timeout=2.0)
            except Exception as error:  # it expires on its own; the next leader only waits longer
                log.warning("leader election: cannot release Lease %s: %s", self._lease_ref(), error)
                return False
        log.info("leader election: %s released Lease %s", config.identity, self._lease_ref())
        return True
