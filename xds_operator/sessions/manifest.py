"""What a session's route is made of, and how to read its status (pure: no I/O).

A session's route is one VirtualService, `session-<id>`, with one listener and one EDS cluster of
the same name whose only endpoint is the session's worker pod. It is labelled with the session id
and the manager that owns it (one label-selected watch serves all of a manager's sessions), and it
carries an ownerReference to the worker pod, so Kubernetes' garbage collector deletes it with the pod.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict

# Spelled out rather than imported from xds_operator.api: that package loads the protobuf schema, and
# this one is for applications, which need nothing but the kubernetes client.
GROUP, VERSION, PLURAL = "servicemesh.l7mp.io", "v1", "virtualservices"
SESSION_LABEL = "servicemesh.l7mp.io/session"  # the session id
MANAGER_LABEL = "servicemesh.l7mp.io/session-manager"  # who opened it: what the shared watch selects
SESSION_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")  # "session-" + id is a DNS-1123 name
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")

Protocol = Literal["udp", "tcp"]


class OwnerReference(TypedDict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    blockOwnerDeletion: bool
    controller: NotRequired[bool]


def check_session_id(session: str) -> str:
    if not SESSION_ID.fullmatch(session):
        raise ValueError(f"session id {session!r}: use lowercase letters, digits and '-' (at most 52)")
    return session


def check_label_value(what: str, value: str) -> str:
    if not LABEL_VALUE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a label value (at most 63 letters, digits, '-', '_', '.')")
    return value


def route_name(session: str) -> str:
    """The VirtualService's name, and its listener's and cluster's."""
    return f"session-{session}"


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def owner_reference(pod: Mapping[str, Any]) -> OwnerReference:
    """An ownerReference to the worker pod: the garbage collector deletes the route when the pod goes.

    Not `controller`: the pod does not manage the VirtualService (nothing reconciles it from the pod),
    and an object may have only one controller reference, which tools and controllers read as "the
    thing that manages me"; the garbage collector ignores the flag either way. Not
    `blockOwnerDeletion`: it would only make a foreground deletion of the pod wait for the route, and
    setting it needs permission to update the pod's finalizers, which an application has no reason to hold.
    """
    meta = pod["metadata"]
    return {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"], "blockOwnerDeletion": False}


def virtual_service(
    session: str,
    *,
    namespace: str,
    manager: str,
    proxy_selector: Mapping[str, str],
    worker_label: Mapping[str, str],
    worker_port: int,
    worker_pod: Mapping[str, Any],
    port: int | None = None,
    protocol: Protocol = "udp",
) -> dict[str, Any]:
    """The session's VirtualService. Without `port` the listener leaves it out: the operator assigns one."""
    name = route_name(session)
    listener: dict[str, Any] = {
        "cluster": {
            "name": name,
            "service_discovery": "eds",  # the pod's IP changes only the endpoints, not the listener
            "endpoints": [{"name": "worker", "host": {"selector": dict(worker_label)}, "port": worker_port}],
        }
    }
    if port is not None:
        listener = {"port": port, **listener}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {SESSION_LABEL: session, MANAGER_LABEL: manager},
            "ownerReferences": [owner_reference(worker_pod)],
        },
        "spec": {"selector": dict(proxy_selector), "listeners": [{"name": name, protocol: listener}]},
    }


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The condition of that type, if it is about the object's current generation; else {}."""
    generation = (obj.get("metadata") or {}).get("generation")
    for found in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(found, Mapping) and found.get("type") == kind and found.get("observedGeneration") == generation:
            return found
    return {}


def listener_status(obj: Mapping[str, Any], listener: str) -> tuple[int, tuple[str, ...]] | None:
    """(port, proxy addresses) of a listener as status.listeners reports it; None until it names both."""
    for found in (obj.get("status") or {}).get("listeners") or ():
        if not isinstance(found, Mapping) or found.get("name") != listener:
            continue
        port, addresses = found.get("port"), found.get("addresses")
        if isinstance(port, int) and 1 <= port <= 65535 and isinstance(addresses, list) and addresses:
            return port, tuple(str(address) for address in addresses)
    return None


def pick(addresses: tuple[str, ...], session: str) -> str:
    """One proxy's address for a session: sessions spread over the proxies by their id, stably."""
    return addresses[zlib.crc32(session.encode()) % len(addresses)]


def serving(pod: Mapping[str, Any]) -> bool:
    """A pod that can be a session's worker: not terminating, not finished."""
    phase = (pod.get("status") or {}).get("phase")
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and phase not in ("Succeeded", "Failed")
