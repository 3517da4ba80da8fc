"""Charts of benchmark results (needs the `bench` extra: pip install -e '.[bench]').

matplotlib is imported inside each function, so importing this module costs nothing and
nothing in `make test` needs matplotlib.
"""

from __future__ import annotations

from pathlib import Path


def fanout_chart(results: list[dict], path: Path) -> None:
    """The fan-out latency distribution: per configuration, the CDF of seconds from the edit until each proxy ACKed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), layout="constrained")
    target = None
    for result in results:
        samples = sorted(result["samples"])
        if not samples:
            continue
        count = len(samples)
        fractions = [(rank + 1) / count for rank in range(count)]
        p99 = result["figures"]["p99_seconds"]
        axes.step(samples, fractions, where="post", label=f"{result['name']} (p99 {p99:.2f} s)")
        target = result.get("targets", {}).get("p99_seconds", target)
    if target is not None:
        axes.axvline(target, color="grey", linestyle="--", linewidth=1, label=f"p99 target ({target:g} s)")
    axes.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("seconds from the edit until the proxy ACKed the new version (log scale)")
    axes.set_ylabel("fraction of proxies")
    axes.set_ylim(0, 1.01)
    axes.set_title("Fan-out: one VirtualService edit reaching every proxy (state-of-the-world ADS)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
