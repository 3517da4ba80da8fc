"""A tiny run of the fan-out benchmark (bench/fanout.py): a real server process and load generator.

Only outcomes are asserted — every stream ACKed the edit and every figure was measured — never timings.
"""

from __future__ import annotations

import sys

from tests.support.paths import BENCH

sys.path.insert(0, str(BENCH))

import fanout  # noqa: E402


def test_every_stream_acks_the_edit_and_every_figure_is_measured() -> None:
    results = fanout.run(smoke=True)

    assert len(results) == 2
    for result in results:
        assert result["scenario"] == "fan-out"
        streams = result["parameters"]["proxies"]
        assert len(result["samples"]) == streams == result["figures"]["streams"]
        assert all(latency > 0 for latency in result["samples"])
        figures = result["figures"]
        for name in ("p50_seconds", "p99_seconds", "max_seconds", "server_peak_rss_mb", "initial_sync_seconds"):
            assert figures[name] > 0, name
        # CPU time is counted in clock ticks (10 ms): a tiny push may round to zero.
        for name in ("server_cpu_seconds", "server_sync_cpu_seconds", "loadgen_push_cpu_seconds"):
            assert figures[name] >= 0, name
        assert figures["p50_seconds"] <= figures["p99_seconds"] <= figures["max_seconds"]
        main = result["parameters"]["groups"] == fanout.MAIN_GROUPS  # the targets are for 50 groups
        assert result["targets"] == ({"p99_seconds": 2.0, "server_peak_rss_mb": 300} if main else {})
        assert set(result["ratios"]) >= {"p99_vs_target", "cpu_per_group_ms"}
