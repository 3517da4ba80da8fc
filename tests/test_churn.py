"""Churn leaves nothing behind: ADS streams and VirtualServices created and deleted against a real
`xds-operator serve --dir` subprocess (bench/churn.py, with smaller counts than `make bench`'s
10,000 stream and 1,000 VirtualService cycles, to fit the suite).

What must come back to where it was once the server settles, read from its /debug/runtime:
asyncio tasks, open streams, identified connections, cache groups, watches, shared snapshots
and VirtualServices; its RSS (from /proc) within 10 %; and a new proxy gets exactly the
resources of the VirtualServices left on disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import churn  # noqa: E402

STREAM_CYCLES = 3_000
VS_CYCLES = 500
WARMUP_STREAMS = 1_000  # most of the RSS growth a warm server has happens here (see bench/churn.py)


def test_stream_and_virtualservice_churn_leaks_nothing_and_ends_exact() -> None:
    m = churn.measure(STREAM_CYCLES, VS_CYCLES, WARMUP_STREAMS, churn.BATCH)

    # measure() waited for the counters to equal `before`; say which ones and what they were.
    assert m["after"] == m["before"] == m["final"]
    assert m["before"]["streams"] == m["before"]["connections"] == 0
    assert m["before"]["groups"] == m["before"]["watches"] == m["before"]["snapshots"] == 0
    assert m["before"]["virtual_services"] == churn.KEPT
    assert m["final_listeners"] == m["expected_listeners"]
    assert m["final_clusters"] == m["expected_clusters"]
    assert m["rss_ratio"] <= churn.RSS_RATIO_LIMIT, (
        f"RSS grew from {m['rss_before'] / 2**20:.1f} MB to {m['rss_after'] / 2**20:.1f} MB "
        f"over {STREAM_CYCLES} stream and {VS_CYCLES} VirtualService cycles"
    )
    print(
        f"\nFIGURE churn stream_cycles={STREAM_CYCLES} vs_cycles={VS_CYCLES} "
        f"rss_before_mb={m['rss_before'] / 2**20:.1f} rss_after_mb={m['rss_after'] / 2**20:.1f} "
        f"ratio={m['rss_ratio']:.3f} counters={m['after']}"
    )


def test_churn_benchmark_reports_its_figures() -> None:
    (result,) = churn.run(smoke=True)
    assert result["figures"]["leaked_counters"] == 0 and result["figures"]["final_state_exact"] == 1
    assert set(result["ratios"]) == {"rss_after_vs_before"}
