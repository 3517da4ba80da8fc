"""VirtualService status: the conditions to write, computed from what is observed (pure; written by writer.py).

Conditions follow the usual Kubernetes shape (type, status, reason, message,
lastTransitionTime, observedGeneration):
- Accepted: the spec is valid (False carries the validation errors).
- Programmed: every selected proxy has ACKed its resources (False says how many have,
  or carries Envoy's NACK text; NoFreePort: a listener without a port waits for one to be assigned).
- Ready: Programmed, the latest generation is valid, every cluster has at least one ready
  endpoint, and no proxy that reports endpoint health (HDS) sees every endpoint of a cluster fail
  its health check: the route is live (what an app waits for before handing out an address).
- Conflicted: another, older VirtualService claims the same listener name, cluster name or
  port on a proxy, so this one is left out there.

Beside them, status.listeners: per listener its name, protocol, port, the pod IPs of the
proxies that run it (sorted, at most MAX_STATUS_ADDRESSES) and its cluster's ready endpoint count (and,
once proxies report on a health-checked cluster, its healthy and checked endpoint counts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xds_operator.api.schema import MAX_STATUS_ADDRESSES
from xds_operator.status.progress import Progress
from xds_operator.status.readiness import ClusterHealth, ListenerState

MAX_MESSAGE = 1024  # keep conditions readable; Kubernetes allows 32768


@dataclass(frozen=True)
class Observed:
    """What the control plane knows of one VirtualService when it computes its status."""

    generation: int
    rejected: str | None = None  # the validation errors of the latest generation
    serving_generation: int | None = None  # the generation in the snapshots (an older one if the latest is invalid)
    no_free_port: str | None = None  # not served: a listener waits for an assigned port (serve --listener-ports)
    conflict: str | None = None
    progress: Progress | None = None
    listeners: tuple[ListenerState, ...] = ()  # of the generation served
    addresses: tuple[str, ...] = ()  # pod IPs of the proxies that run its current resources, sorted
    # Per listener (aligned with `listeners`): its cluster's health as the proxies report it; None: no report.
    health: tuple[ClusterHealth | None, ...] = ()


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


def awaiting_health(status: Mapping[str, Any], previous: Mapping[str, Any] | None) -> bool:
    """Whether a status lacks health counts the written one has (for a listener of the same name and cluster):
    after a restart the proxies' health reports come back a little after their ACKs, and a status written in
    between would drop the counts only to write them again (so it is held back like a settling one)."""
    before = {
        (listener.get("name"), (listener.get("cluster") or {}).get("name"))
        for listener in (previous or {}).get("listeners") or ()
        if isinstance(listener, Mapping) and "healthyEndpoints" in (listener.get("cluster") or {})
    }
    return any(
        (listener["name"], listener["cluster"]["name"]) in before and "healthyEndpoints" not in listener["cluster"]
        for listener in status.get("listeners") or ()
    )


def _accepted(observed: Observed) -> tuple[str, str, str, str]:
    if observed.rejected is None:
        return ("Accepted", "True", "Accepted", "the spec is valid")
    message = observed.rejected
    if observed.serving_generation is not None:
        message += f" (still serving generation {observed.serving_generation})"
    return ("Accepted", "False", "Invalid", message)


def _programmed(observed: Observed) -> tuple[str, str, str, str]:
    progress = observed.progress or Progress()
    if observed.no_free_port is not None and observed.rejected is None:
        return ("Programmed", "False", "NoFreePort", f"not served: {observed.no_free_port}")
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
    unhealthy = [
        (listener.cluster.name, health)
        for listener, health in zip(observed.listeners, observed.health, strict=False)
        if health is not None and health.failing_on
    ]
    if unhealthy:
        name, health = unhealthy[0]
        more = f" (and {len(unhealthy) - 1} more clusters)" if len(unhealthy) > 1 else ""
        proxies = f" (and {len(health.failing_on) - 1} more proxies)" if len(health.failing_on) > 1 else ""
        return (
            "Ready",
            "False",
            "Unhealthy",
            f"cluster {name}{more}: no endpoint passes its health check on proxy {health.failing_on[0]}{proxies}: "
            f"{health.failing} failing",
        )
    return ("Ready", "True", "Ready", f"{message}; every cluster has a ready endpoint")


def _listeners(observed: Observed) -> list[dict[str, Any]]:
    health = observed.health + (None,) * (len(observed.listeners) - len(observed.health))
    return [
        {
            "name": listener.name,
            "protocol": listener.protocol,
            "port": listener.port,
            "addresses": list(observed.addresses[:MAX_STATUS_ADDRESSES]),
            "cluster": _cluster(listener, checked),
        }
        for listener, checked in zip(observed.listeners, health, strict=True)
    ]


def _cluster(listener: ListenerState, health: ClusterHealth | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {"name": listener.cluster.name, "readyEndpoints": listener.cluster.ready_endpoints}
    if health is not None:
        cluster["healthyEndpoints"] = health.passing
        cluster["checkedEndpoints"] = health.checked
    return cluster


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
