"""Tiny runs of the benchmarks in bench/, so they keep working (their figures are not asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import wire_bytes  # noqa: E402


def test_wire_bytes_delta_sends_one_resource_where_sotw_sends_all() -> None:
    rows = wire_bytes.measure(20)
    assert [label for label, *_ in rows] == ["one cluster's endpoints", "one listener's port"]
    for _, sotw_bytes, sotw_resources, delta_bytes, delta_resources in rows:
        assert (sotw_resources, delta_resources) == (20, 1)
        assert delta_bytes < sotw_bytes
