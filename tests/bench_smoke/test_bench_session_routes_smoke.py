"""A tiny run of bench/session_routes.py, so it keeps working (its timings are not asserted)."""

from __future__ import annotations

import sys

from tests.support.paths import BENCH

sys.path.insert(0, str(BENCH))

import session_routes  # noqa: E402


def test_the_helper_opens_every_session_over_one_watch_where_the_old_way_opened_one_each() -> None:
    shared, floor = session_routes.run(smoke=True)
    assert shared["parameters"] == {"sessions": 20, "variant": "shared watch"}
    assert shared["figures"]["watches"] == 1 and floor["figures"]["watches"] == 20
    assert shared["figures"]["requests_per_session"] == 3.0  # the worker pod's LIST, the create, the delete
    assert set(shared["ratios"]) == {"all_ready_vs_one_watch_each", "cpu_vs_one_watch_each"}
