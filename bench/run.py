"""Run the benchmark suite: print a table, write bench/results/latest.json and the fan-out chart.

    .venv/bin/python bench/run.py [--smoke] [--only NAME ...] [--output DIR]

Each scenario module has `run(smoke) -> list[dict]`; a result holds its scenario, name,
parameters, figures, ratios and targets (and, for distributions, samples). `make bench`
runs the full suite; `--smoke` runs tiny sizes (what the tests do, to keep the suite alive).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# In the order the issue lists them; wire_bytes compares the two ADS variants.
SCENARIOS = [
    "snapshot_build",
    "incremental",
    "status_pass",
    "hds",
    "fanout",
    "envoy_convergence",
    "cold_start",
    "wire_bytes",
    "churn",
    "calls",
    "calls_kube",
    "session_routes",
]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def met(result: dict[str, Any]) -> bool | None:
    """Whether every target holds (figures and ratios are upper bounds); None without targets."""
    targets = result.get("targets") or {}
    if not targets:
        return None
    values = {**result.get("figures", {}), **result.get("ratios", {})}
    return all(key in values and values[key] <= bound for key, bound in targets.items())


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | case | figures | ratios | target met |", "|---|---|---|---|---|"]
    for result in results:
        figures = ", ".join(f"{key} {fmt(value)}" for key, value in result.get("figures", {}).items())
        ratios = ", ".join(f"{key} {fmt(value)}" for key, value in result.get("ratios", {}).items())
        verdict = {True: "yes", False: "**no**", None: "–"}[met(result)]
        lines.append(f"| {result['scenario']} | {result['name']} | {figures} | {ratios} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run xds-operator's benchmarks.")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every scenario runs")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, metavar="NAME", help=f"a subset of {SCENARIOS}")
    parser.add_argument("--output", type=Path, default=HERE / "results", help="where latest.json and charts go")
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    for name in args.only or SCENARIOS:
        started = time.monotonic()
        print(f"== {name} ...", flush=True)
        module = importlib.import_module(name)
        scenario_results = module.run(smoke=args.smoke)
        for result in scenario_results:
            result.setdefault("met", met(result))
        results.extend(scenario_results)
        print(f"   done in {time.monotonic() - started:.1f} s", flush=True)

    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "smoke": args.smoke,
        "results": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    latest = args.output / ("smoke.json" if args.smoke else "latest.json")
    latest.write_text(json.dumps(report, indent=2) + "\n")
    fanout = [r for r in results if r["scenario"] == "fan-out"]
    chart = args.output / ("fanout-smoke.png" if args.smoke else "fanout.png")
    if fanout:
        try:
            from chart import fanout_chart

            fanout_chart(fanout, chart)
        except ImportError as error:  # matplotlib is in the [bench] extra: make bench installs it
            print(f"no chart ({error}); install the bench extra: pip install -e '.[bench]'", file=sys.stderr)
    print()
    print(f"Measured {report['date']} on {report['machine']['cpus']} × {report['machine']['cpu_model'] or 'CPU'}")
    print(table(results))
    print(f"\nwrote {latest}" + (f" and {chart}" if fanout and chart.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
