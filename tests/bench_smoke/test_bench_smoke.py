"""Tiny runs of the benchmarks in bench/, so they keep working (their figures are not asserted)."""

from __future__ import annotations

import sys

from tests.support.paths import BENCH

sys.path.insert(0, str(BENCH))

import wire_bytes  # noqa: E402


def test_wire_bytes_delta_sends_one_resource_where_sotw_sends_all() -> None:
    rows = wire_bytes.measure(20)
    assert [label for label, *_ in rows] == ["one cluster's endpoints", "one listener's port"]
    for _, sotw_bytes, sotw_resources, delta_bytes, delta_resources in rows:
        assert (sotw_resources, delta_resources) == (20, 1)
        assert delta_bytes < sotw_bytes


import json  # noqa: E402

import cold_start  # noqa: E402
import incremental  # noqa: E402
import run as bench_run  # noqa: E402
import snapshot_build  # noqa: E402
import status_pass  # noqa: E402


def test_status_pass_writes_each_call_once() -> None:
    (result,) = status_pass.run(smoke=True)
    assert result["figures"]["status_writes_per_call"] == 1  # Ready, without a Pending before it


def test_snapshot_build_reports_both_floors() -> None:
    (result,) = snapshot_build.run(smoke=True)
    assert result["parameters"] == {"virtual_services": 50, "resources": 100}
    assert set(result["ratios"]) == {"vs_serialize_floor", "vs_build_and_serialize"}


def test_incremental_change_retranslates_only_the_edited_virtualservice() -> None:
    (result,) = incremental.run(smoke=True)
    assert result["figures"]["translated_per_edit"] == 1
    assert result["figures"]["serialized_resources_per_edit"] == 2  # its listener and its cluster


def test_cold_start_gets_a_complete_first_response() -> None:
    (result,) = cold_start.run(smoke=True)
    count = result["parameters"]["virtual_services"]
    # The proxy's first CDS and LDS responses each carried every VirtualService's resource.
    assert result["first_response"] == {"clusters": count, "listeners": count}
    assert set(result["figures"]) == {"seconds"}


def test_the_runner_writes_json_with_targets_judged(tmp_path) -> None:
    assert bench_run.main(["--smoke", "--only", "snapshot_build", "incremental", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["machine"]["cpus"] >= 1 and report["smoke"] is True
    assert [r["scenario"] for r in report["results"]] == ["snapshot build", "incremental change"]
    incremental_result = report["results"][1]
    assert incremental_result["targets"] and incremental_result["met"] is bench_run.met(incremental_result)


def test_a_target_is_met_only_when_every_bound_holds() -> None:
    result = {
        "figures": {"median_ms": 4.0},
        "ratios": {"vs_floor": 1.2},
        "targets": {"median_ms": 5.0, "vs_floor": 1.5},
    }
    assert bench_run.met(result) is True
    assert bench_run.met({**result, "figures": {"median_ms": 6.0}}) is False  # one bound broken
    assert bench_run.met({**result, "ratios": {}}) is False  # a target nothing was measured for
    assert bench_run.met({"figures": {"median_ms": 6.0}}) is None  # no targets: no verdict
