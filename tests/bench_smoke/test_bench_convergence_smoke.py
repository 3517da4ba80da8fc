"""A tiny run of bench/envoy_convergence.py (real Envoys), so it keeps working: outcomes only, never timings."""

from __future__ import annotations

import os
import sys

import pytest

from tests.support.paths import BENCH

sys.path.insert(0, str(BENCH))

import envoy_convergence  # noqa: E402


def test_every_variant_converges_on_every_edit() -> None:
    if not os.access(envoy_convergence.ENVOY, os.X_OK):
        pytest.fail(f"this test needs a real Envoy at {envoy_convergence.ENVOY} (pip install -e '.[test]')")
    results = envoy_convergence.run(smoke=True)

    assert [result["name"] for result in results] == [
        "xds-operator SotW",
        "xds-operator delta",
        "Envoy filesystem xDS (floor)",
    ]
    for result in results:
        assert result["scenario"] == "envoy-convergence"
        edits = result["parameters"]["edits"]
        assert edits == 3
        assert len(result["samples"]) == edits, result["name"]
        assert all(sample > 0 for sample in result["samples"])
        assert set(result["figures"]) == {"median_seconds", "p90_seconds", "min_seconds"}
        assert all(value > 0 for value in result["figures"].values())
    for ours in results[:2]:
        assert ours["ratios"]["vs_floor"] > 0
        assert ours["targets"] == {"vs_floor": 1.5}
    assert "ratios" not in results[2] and "targets" not in results[2]
