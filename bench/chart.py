"""The PNG: throughput and latency against offered load. Needs matplotlib (the `bench` extra);
without it the chart is skipped with a message and everything else still runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], path: Path) -> str:
    """Draw the chart to `path`; return what was done, for the log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "chart skipped: matplotlib is not installed "
            "(pip install matplotlib, or the project's bench extra)"
        )
    loads = results["loads"]
    offered = [x["offered_events_per_s"] for x in loads]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    _throughput(left, results, offered, [x["achieved_events_per_s"] for x in loads])
    _latency(right, results, offered, loads)
    fig.suptitle(
        f"Casewatch benchmark ({results['mode']}): {results['events']:,} events, "
        f"{results['customers']:,} customers, store {results['store']}, "
        f"{results['machine']['cpus']} cores, broker on the same machine",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"


def _throughput(
    ax: Any, results: dict[str, Any], offered: list[float], achieved: list[float]
) -> None:
    low = min([*offered, *achieved]) / 2
    high = max(results["ceiling_events_per_s"], 30_000) * 1.5
    right = max(offered) * 1.15
    diagonal = [low + (right - low) * i / 100 for i in range(101)]  # straight on linear x only
    ax.plot(diagonal, diagonal, color="grey", linestyle=":", label="achieved = offered")
    ax.plot(offered, achieved, "o-", color="tab:blue", label="one worker, paced load: achieved")
    lines = (
        ("worker_events_per_s", "tab:blue", "one worker, backlog drain"),
        ("two_workers_events_per_s", "tab:green", "two workers, backlog drain"),
        ("ceiling_events_per_s", "tab:red", "ceiling (plain aiokafka loop)"),
    )
    for key, color, label in lines:
        ax.axhline(
            results[key], color=color, linestyle="--", label=f"{label}: {results[key]:,.0f}/s"
        )
    ax.axhline(30_000, color="black", linestyle=":", linewidth=0.8, label="target: 30,000/s")
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("throughput (events/s, log scale)")
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.set_xlim(0, right)
    ax.set_title("throughput")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3, which="both")


def _latency(
    ax: Any, results: dict[str, Any], offered: list[float], loads: list[dict[str, Any]]
) -> None:
    series = (
        ("p50_ms", "processing p50 (worker histogram)", "o-", "tab:blue"),
        ("p99_ms", "processing p99 (worker histogram)", "s-", "tab:blue"),
        ("e2e_publish_p50_ms", "produce -> exception published, p50", "o--", "tab:orange"),
        ("e2e_publish_p99_ms", "produce -> exception published, p99", "s--", "tab:orange"),
    )
    for key, label, style, color in series:
        points = [
            (o, x[key]) for o, x in zip(offered, loads, strict=True) if x.get(key) is not None
        ]
        if points:
            ax.plot(
                *zip(*points, strict=True),
                style,
                color=color,
                label=label,
                alpha=1.0 if "p99" in key else 0.6,
            )
    ax.axhline(50, color="red", linestyle=":", label="target: p99 <= 50 ms at 70% of peak")
    peak = results.get("peak_events_per_s") or results["worker_events_per_s"]
    ax.axvline(0.7 * peak, color="grey", linestyle=":", label="70% of the measured peak")
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title("latency")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3, which="both")
