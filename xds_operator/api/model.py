"""The typed VirtualService: Kubernetes identity around the validated proto spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from xds_operator.api import virtualservice_pb2 as pb
from xds_operator.api.timestamps import EpochNanos as EpochNanos

Key = tuple[str, str]  # (namespace, name): a VirtualService's identity everywhere
Protocol = Literal["UDP", "TCP"]
_PROTOCOLS: dict[str, Protocol] = {"udp": "UDP", "tcp": "TCP"}  # the Listener.protocol oneof's fields


def protocol_of(listener: pb.Listener) -> Protocol:
    """Whether a (validated) listener is a UDP or a TCP one."""
    return _PROTOCOLS[_block_name(listener)]


def port_of(listener: pb.Listener) -> int:
    """The port a listener binds, whatever its protocol."""
    return _block(listener).port


def has_port(listener: pb.Listener) -> bool:
    """Whether a listener names its port (absent: the control plane assigns one, see xds_operator/ports)."""
    return _block(listener).HasField("port")


def cluster_of(listener: pb.Listener) -> pb.Cluster:
    """The cluster a listener proxies to, whatever its protocol."""
    return _block(listener).cluster


def _block(listener: pb.Listener) -> pb.UdpListener | pb.TcpListener:
    """The listener's protocol block: `udp` or `tcp`."""
    block: pb.UdpListener | pb.TcpListener = getattr(listener, _block_name(listener))
    return block


def _block_name(listener: pb.Listener) -> str:
    name: str | None = listener.WhichOneof("protocol")  # protobuf's stub: Any
    if name is None:  # validation guarantees one; this is a programming error, said clearly
        raise ValueError(f"listener {listener.name!r} has neither a udp nor a tcp block")
    return name


# In Kubernetes mode a proxy's labels also carry its pod's namespace, under a key no Kubernetes label
# can have (label keys hold no ":"): a VirtualService selects proxies in its own namespace only.
NAMESPACE_LABEL = ":namespace"


def key_of(document: Any) -> Key | None:
    """(namespace, name) of a VirtualService document, when it says them, even if it is otherwise invalid."""
    metadata = document.get("metadata") if isinstance(document, Mapping) else None
    if isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str):
        namespace = metadata.get("namespace")
        return (namespace if isinstance(namespace, str) and namespace else "default", metadata["name"])
    return None


@dataclass(frozen=True, eq=False)
class VirtualService:
    namespace: str
    name: str
    spec: pb.VirtualServiceSpec
    generation: int = 0
    # metadata.creationTimestamp as nanoseconds since the epoch (None: not given); the older one wins a conflict
    created: EpochNanos | None = None
    uid: str = ""
    origin: str = ""  # where it came from, for messages: a file path, or "kubernetes"
    # Listeners whose port the control plane assigned (their spec names none; `spec` carries the assigned one).
    assigned: frozenset[str] = frozenset()

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def spec_bytes(self) -> bytes:
        """Deterministic serialization of the spec: equal specs give equal bytes."""
        return self.spec.SerializeToString(deterministic=True)

    @cached_property
    def selector(self) -> tuple[tuple[str, str], ...]:
        """spec.selector as plain pairs (read on every group rebuild: cheaper than the proto map)."""
        return tuple(self.spec.selector.items())

    def selects(self, labels: dict[str, str]) -> bool:
        """True when the proxy labels contain every pair of the selector (and, if they name one, the namespace)."""
        namespace = labels.get(NAMESPACE_LABEL)
        if namespace is not None and namespace != self.namespace:
            return False
        return all(labels.get(key) == value for key, value in self.selector)

    def same_content(self, other: VirtualService) -> bool:
        return self.key == other.key and self.spec_bytes == other.spec_bytes
