"""The figures as a table on the terminal and as JSON, against the targets one run can check
(docs/performance.md, "Targets"; the other one, three times the per-message worker measured the
same day, takes `--drain-only` runs of both commits)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS: tuple[tuple[str, str, str, Callable[[float], bool]], ...] = (
    # key, label, target text, test
    ("ratio", "throughput / ceiling", ">= 0.25", lambda v: v >= 0.25),
    ("p99_ms", "p99 processing latency at 70% of peak", "<= 50 ms", lambda v: v <= 50),
    ("state_bytes_per_customer", "state per customer", "<= 1,024 B", lambda v: v <= 1024),
)


def machine(bootstrap: str) -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    mem = 0.0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        mem = int(meminfo.read_text().split()[1]) / 1024 / 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "broker": bootstrap,
        "packages": _versions("faust-streaming", "aiokafka", "pydantic", "rocksdict", "orjson"),
    }


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, label, text, test in TARGETS:
        value = results.get(key)
        out[key] = {
            "label": label,
            "target": text,
            "value": value,
            "met": None if value is None else bool(test(value)),
        }
    soak = results.get("soak")
    if soak:
        out["soak"] = {
            "label": "resident memory over the soak",
            "target": "flat",
            "value": soak.get("slope_mb_per_min"),
            "met": soak.get("flat"),
        }
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(r: dict[str, Any]) -> str:
    """The human-readable summary."""
    rows = [
        (
            "mode",
            f"{r['mode']}: {r['events']:,} events ({r['event_bytes_mean']:.0f} B mean), "
            f"{r['customers']:,} customers, store {r['store']}",
        ),
        ("publish (bulk aiokafka producer)", f"{_fmt(r['publish_events_per_s'])} events/s"),
        ("ceiling (aiokafka loop + parse_event)", f"{_fmt(r['ceiling_events_per_s'])} events/s"),
        (
            "one worker, backlog drain",
            f"{_fmt(r['worker_events_per_s'])} events/s "
            f"(10-90%: {_fmt(r['worker_steady_events_per_s'])})",
        ),
        ("ratio worker / ceiling", _fmt(r["ratio"], 3)),
        (
            "one worker, a second day (the peak)",
            f"{_fmt(r.get('peak_events_per_s'))} events/s "
            f"(10-90%: {_fmt(r.get('warm_steady_events_per_s'))}), "
            f"{_fmt(r.get('warm_events_per_cpu_s'))} per CPU s: the loads are shares of it",
        ),
        (
            "events per CPU second",
            f"ceiling {_fmt(r.get('ceiling_events_per_cpu_s'))}, "
            f"worker {_fmt(r.get('worker_events_per_cpu_s'))} "
            f"(worker waited for a CPU {_fmt(100 * (r.get('worker_runqueue_share') or 0), 0)}% "
            "of the drain)",
        ),
        (
            "two workers, backlog drain",
            f"{_fmt(r['two_workers_events_per_s'])} events/s "
            f"(10-90%: {_fmt(r['two_workers_steady_events_per_s'])})",
        ),
        ("scale-out ratio (two / one)", _fmt(r["scale_out_ratio"], 2)),
        ("exception records per 1,000 events", _fmt(r["exceptions_per_1000_events"], 1)),
    ]
    for load in r["loads"]:
        rows.append(
            (
                f"load {load['fraction']:.0%} of peak ({_fmt(load['offered_events_per_s'])}/s)",
                f"achieved {_fmt(load['achieved_events_per_s'])}/s, caught up "
                f"{_fmt(load['catch_up_s'], 1)} s after; "
                f"processing p50 {_fmt(load['p50_ms'], 1)} ms, p99 {_fmt(load['p99_ms'], 1)} ms; "
                f"produce->published p50 {_fmt(load['e2e_publish_p50_ms'], 1)} ms, "
                f"p99 {_fmt(load['e2e_publish_p99_ms'], 1)} ms (n={load['e2e_samples']})",
            )
        )
    rows += [
        (
            "resident memory after load",
            f"{_fmt(r['rss_mb'], 1)} MiB (peak {_fmt(r['rss_hwm_mb'], 1)})",
        ),
        (
            "state per customer (changelog)",
            f"{_fmt(r['state_bytes_per_customer'])} B mean, "
            f"p99 {_fmt(r['state']['p99'])}, max {_fmt(r['state']['max'])}, "
            f"{_fmt(r['state']['customers'])} customers",
        ),
    ]
    if r.get("soak"):
        s = r["soak"]
        rows.append(
            (
                "soak",
                f"{s['minutes']} min: {s['first_mb']} -> {s['last_mb']} MiB, "
                f"slope {s['slope_mb_per_min']} MiB/min, flat: {s['flat']}",
            )
        )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    for t in r["targets"].values():
        mark = {True: "met", False: "NOT met", None: "-"}[t["met"]]
        lines.append(f"target {t['label']:<40} {t['target']:<12} {_fmt(t['value'], 2):>12}  {mark}")
    return "\n".join(lines)


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def git_head(repo: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def drain_summary(r: dict[str, Any]) -> str:
    """One line per figure of a `--drain-only` run (an A/B comparison)."""
    rows = [
        ("mode", f"{r['mode']} (drain only): {r['events']:,} events, store {r['store']}"),
        ("ceiling", f"{_fmt(r['ceiling_events_per_s'])} events/s"),
        (
            "one worker, backlog drain",
            f"{_fmt(r['worker_events_per_s'])} events/s "
            f"(10-90%: {_fmt(r['worker_steady_events_per_s'])})",
        ),
        (
            "events per CPU second",
            f"ceiling {_fmt(r.get('ceiling_events_per_cpu_s'))}, "
            f"worker {_fmt(r.get('worker_events_per_cpu_s'))} "
            f"(worker waited for a CPU {_fmt(100 * (r.get('worker_runqueue_share') or 0), 0)}% "
            "of the drain)",
        ),
        ("dispatch caught up after the drain", f"{_fmt(r['worker_routing_catch_up_s'], 1)} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
