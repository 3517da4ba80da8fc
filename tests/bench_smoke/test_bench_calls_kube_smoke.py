"""A tiny run of bench/calls_kube.py (fake API server, real Envoy): outcomes only, never timings."""

from __future__ import annotations

import os
import sys

import pytest

from tests.support.paths import BENCH

sys.path.insert(0, str(BENCH))

import calls_kube  # noqa: E402


@pytest.mark.parametrize(
    ("delta", "workers"), [(False, None), (True, None), (True, 4)], ids=["sotw", "delta", "delta-shared-clusters"]
)
def test_every_call_is_ready_and_answered_and_nothing_is_left_over(delta: bool, workers: int | None) -> None:
    if not os.access(calls_kube.ENVOY, os.X_OK):
        pytest.fail(f"this test needs a real Envoy at {calls_kube.ENVOY} (pip install -e '.[test]')")
    live, rate, seconds, _ = calls_kube.SMOKE
    # A generous bound: on a loaded machine a call may be slow, but it must get there.
    cold, churned = calls_kube.measure(live, rate, seconds, delta=delta, within=60.0, workers=workers)

    assert cold["scenario"] == churned["scenario"] == "calls-kube"
    # The cold start waited for Envoy to run every listener and every status to be Ready.
    assert cold["figures"]["status_writes_per_virtual_service"] >= 1
    figures = churned["figures"]
    outcomes = {
        key: figures[key]
        for key in (
            "not_ready",
            "unanswered",
            "wrong_answers",
            "listeners_left_over",
            "listeners_missing",
            "live_calls_unanswered",
        )
    }
    assert outcomes == dict.fromkeys(outcomes, 0)
    assert figures["status_writes_per_call"] > 0  # the fake counted the control plane's status PATCHes
