"""A tiny run of bench/hds.py, so it keeps working (its timings are not asserted)."""

from __future__ import annotations

import sys

from tests.support.paths import BENCH

sys.path.insert(0, str(BENCH))

import hds  # noqa: E402


def test_hds_bench_sees_the_failing_endpoint_in_status() -> None:
    (result,) = hds.run(smoke=True)
    figures = result["figures"]
    assert figures["endpoints_checked_per_proxy"] == 50
    assert figures["ready_unhealthy_after_flip"] == 1  # every flip turned its call's Ready to Unhealthy
    assert figures["specifier_bytes"] > 0 and figures["report_bytes"] > 0
