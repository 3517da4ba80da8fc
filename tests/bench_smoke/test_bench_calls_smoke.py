"""A tiny run of bench/calls.py (real Envoys, both ADS variants and the floor): outcomes only, never timings."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from tests.support.paths import BENCH

sys.path.insert(0, str(BENCH))

import calls  # noqa: E402
import envoy_convergence  # noqa: E402

LOST = ("unanswered", "unclosed", "listeners_missing", "listeners_extra", "live_silent", "ended_answering")


def test_every_call_is_answered_and_nothing_is_left_over() -> None:
    if not os.access(envoy_convergence.ENVOY, os.X_OK):
        pytest.fail(f"this test needs a real Envoy at {envoy_convergence.ENVOY} (pip install -e '.[test]')")
    results = calls.run(smoke=True)

    assert [result["parameters"]["variant"] for result in results] == ["sotw", "delta", "floor"]
    size = calls.SMOKE_SIZE
    for result in results:
        assert result["scenario"] == "calls"
        parameters, figures = result["parameters"], result["figures"]
        assert (parameters["new_calls"], parameters["ended_calls"]) == (size.steps, size.steps)
        # Every new call answered, every ended one closed; at the end Envoy runs exactly the live
        # calls' listeners, each answers, and no ended call does.
        assert {key: figures[key] for key in LOST} == dict.fromkeys(LOST, 0), result["name"]
        assert len(result["samples"]["answered_ms"]) == size.steps
        assert all(key in result["targets"] for key in LOST)
    floor = results[2]
    assert floor["figures"]["floor_lds_responses"] > 0  # the floor's ACK log was read
    for ours in results[:2]:
        assert set(ours["ratios"]) == {"p50_vs_floor", "p99_vs_floor"}
    assert "ratios" not in floor


def test_calls_sharing_their_workers_cluster_are_all_answered_and_nothing_is_left_over() -> None:
    """The per-call pattern the README recommends: every call names the worker's cluster, declared alike."""
    if not os.access(envoy_convergence.ENVOY, os.X_OK):
        pytest.fail(f"this test needs a real Envoy at {envoy_convergence.ENVOY} (pip install -e '.[test]')")
    size = dataclasses.replace(calls.SMOKE_SIZE, shared=True)
    results = calls.measure_all([size], [calls.DELTA, calls.FLOOR])
    for result in results:
        assert result["parameters"]["shared_cluster"] is True
        assert {key: result["figures"][key] for key in LOST} == dict.fromkeys(LOST, 0), result["name"]
        assert len(result["samples"]["answered_ms"]) == size.steps
