"""What the Kubernetes source knows of one VirtualService beyond what the cache holds (the status side reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from xds_operator.api import VirtualService


@dataclass
class VirtualServiceRecord:
    """Kept up to date by the source as the watch delivers new generations."""

    generation: int
    uid: str
    rejected: str | None = None  # why the latest generation is invalid
    serving_generation: int | None = None  # the generation in the cache, if any is valid
    vs: VirtualService | None = None  # that generation, with its assigned ports
    waiting: str | None = None  # why the valid generation is not served: a listener waits for a free port
