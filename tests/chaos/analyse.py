"""What a chaos run's folder says about its lost records.

    .venv/bin/python tests/chaos/analyse.py /tmp/casewatch-chaos-<pid>

From the oracle, the records read and the events (always kept):
- the lost records by rule and by the source partition of their customer;
- for each lost record whose customer has a later record: whether that later record's context
  lists it as open (the worker detected it, so its record reached the dispatch topic and was
  lost on the way to the handlers) or not (the event never changed the customer's state).

With `--trace` (tests/chaos/traced.py) also:
- every commit that passed an offset no worker had processed at that moment (input topics and
  the dispatch topic): the step that loses work, with its time, process and offsets;
- for the first lost records: which process processed the triggering event, sent the record to
  dispatch, routed it and wrote it to a handler topic, and when.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.runtime.topics import partition_for  # noqa: E402

Key = tuple[str, str]


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def records(folder: Path) -> tuple[dict[Key, dict[str, Any]], list[dict[str, Any]], list[Key]]:
    oracle = {(r["exception_id"], r["status"]): r for r in lines(folder / "oracle.jsonl")}
    read = lines(folder / "read.jsonl")
    got = {(r["exception_id"], r["status"]) for r in read}
    return oracle, read, [k for k in oracle if k not in got]


def detected(
    oracle: dict[Key, dict[str, Any]], read: list[dict[str, Any]], lost: list[Key]
) -> Counter[str]:
    """Whether a later record of the customer knows the lost one as open."""
    later: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in read:
        later[r["customer_id"]].append(r)
    verdict: Counter[str] = Counter()
    for key in lost:
        r = oracle[key]
        after = [x for x in later[r["customer_id"]] if x["event_time"] > r["event_time"]]
        if not after:
            verdict["no later record of the customer"] += 1
            continue
        known = {
            e["exception_id"]
            for x in after
            for e in (x.get("context") or {}).get("open_exceptions", [])
        }
        if key[0] in known:
            verdict["detected (open in a later record's context): lost after dispatch"] += 1
        else:
            verdict[
                "not known to the customer's later state: never detected, or the state lost it"
            ] += 1
    return verdict


def trace(folder: Path) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for file in folder.glob("trace-*.jsonl"):
        pid = int(file.stem.split("-")[1])
        for line in file.read_bytes().splitlines():
            try:
                step = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line cut by kill -9
                continue
            steps.append(step | {"pid": pid})
    return sorted(steps, key=lambda s: s["t"])


def bad_commits(steps: list[dict[str, Any]], t0: float) -> list[str]:
    """Commits that passed offsets nobody had processed when they were made."""
    done: dict[str, dict[int, float]] = defaultdict(dict)
    for s in steps:
        if s["k"] == "P":
            done[s["tp"]].setdefault(s["o"], s["t"])
        elif s["k"] == "Q":
            done["dispatch"].setdefault(s["o"], s["t"])
    high: dict[str, int] = defaultdict(int)
    found = []
    for s in steps:
        if s["k"] != "C" or not s["ok"]:
            continue
        for tp, offset in s["offsets"].items():
            key = "dispatch" if "-dispatch:" in tp else tp
            if key not in done or offset <= high[tp]:
                continue
            missing = [
                o for o in range(high[tp], offset) if done[key].get(o, float("inf")) > s["t"]
            ]
            if missing:
                found.append(
                    f"{s['t'] - t0:8.2f}s pid {s['pid']}: committed {tp} = {offset} (was "
                    f"{high[tp]}) with {len(missing)} offsets not processed, "
                    f"{missing[0]}-{missing[-1]}"
                )
            high[tp] = offset
    return found


def follow(
    steps: list[dict[str, Any]], t0: float, oracle: dict[Key, dict[str, Any]], lost: list[Key]
) -> list[str]:
    by_event: dict[str, list[str]] = defaultdict(list)
    by_record: dict[Key, list[str]] = defaultdict(list)
    for s in steps:
        at = f"{s['t'] - t0:.2f}s pid {s['pid']}"
        if s["k"] == "P" and s.get("e"):
            by_event[s["e"]].append(f"processed {s['tp']}@{s['o']} ({at})")
        elif s["k"] in ("D", "Q", "H") and s.get("x"):
            what = {
                "D": "sent to dispatch",
                "Q": f"routed (dispatch offset {s.get('o')})",
                "H": f"written to {str(s.get('topic', '')).split('.', 1)[-1]}",
            }[s["k"]]
            by_record[s["x"], s["s"]].append(f"{what} ({at})")
    out = []
    for key in lost[:10]:
        r = oracle[key]
        event = r["evidence"][0] if r["evidence"] else "?"
        steps_seen = by_event.get(event, ["never processed"]) + by_record.get(key, [])
        out.append(f"{r['rule']} {key[0][:12]} {key[1]} (event {event}): " + "; ".join(steps_seen))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a chaos run's folder (printed at its end)")
    parser.add_argument("--partitions", type=int, default=6, help="the run's partition count")
    args = parser.parse_args()
    oracle, read, lost = records(args.folder)
    print(f"expected {len(oracle)}, read {len(read)}, lost {len(lost)}")
    if lost:
        print("by rule:", dict(Counter(oracle[k]["rule"] for k in lost).most_common()))
        print(
            "by source partition:",
            dict(
                sorted(
                    Counter(
                        partition_for(oracle[k]["customer_id"], args.partitions) for k in lost
                    ).items()
                )
            ),
        )
        for verdict, n in detected(oracle, read, lost).items():
            print(f"  {n:5d} {verdict}")
    steps = trace(args.folder)
    if not steps:
        print("no trace (run with --trace for the steps)")
        return 0
    t0 = steps[0]["t"]
    commits = bad_commits(steps, t0)
    print(f"commits that passed unprocessed offsets: {len(commits)}")
    for line in commits[:20]:
        print("  " + line)
    for line in follow(steps, t0, oracle, lost):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
