"""How pipeline/core/state6.zdict, the Zstandard dictionary of state version 6, was made.

    .venv/bin/python bench/state_dict.py /tmp/state6.zdict   # about 25 s; the same bytes

Stored states can only be read with the dictionary they were written with: the committed file
is the one version 6 uses, whatever this script makes today (a change to the default rules or
to a detector's state changes its output). A new dictionary is a new state version.

Its samples are customer states after 3 and after 14 model days of the benchmark's workload
under the default rules (pipeline/defaults/casewatch.yaml), with a seed, an id prefix and a
start of their own (the benchmarks use others, so what it learns is the states' layout, keys
and vocabulary, not their events), replayed uncompressed (so the dictionary in use plays no
part). Zstandard's fastCover trainer, single-threaded with
the default steps, is deterministic: the same samples give the same dictionary.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import workload
from pipeline.config import Config, load_config
from pipeline.tools.replay import Replay

START = 1_780_000_000.0  # earlier than bench/logic.py's: other event times
DAYS, CUSTOMERS, SIZE = 14, 2000, 4096
SNAPSHOTS = (3, 14)  # model days after which every customer's state is a sample


def samples(config: Config) -> list[bytes]:
    """Each customer's state body (without its version byte) at every snapshot day."""
    plain = config.model_copy(
        update={"pipeline": config.pipeline.model_copy(update={"compress_state": False})}
    )
    msgs = workload.build(
        CUSTOMERS,
        CUSTOMERS * 3 * DAYS,
        START,
        DAYS * 86400.0,
        "dict",
        seed=101,
        span_hours=DAYS * 24,
    )
    replay = Replay(plain, errors=io.StringIO())
    found: list[bytes] = []
    fed = 0
    for day in SNAPSHOTS:
        until = START + day * 86400.0
        end = fed
        while end < len(msgs) and msgs[end].t < until:
            end += 1
        list(replay.feed(m.value for m in msgs[fed:end]))
        fed = end
        found += [value[1:] for _, value in sorted(replay.states.items())]
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the dictionary")
    args = parser.parse_args(argv)
    found: list[bytes | bytearray | memoryview] = list(samples(load_config()))
    trained = zstandard.train_dictionary(SIZE, found, level=1)
    args.out.write_bytes(trained.as_bytes())
    print(f"{args.out}: {len(trained.as_bytes()):,} bytes")


if __name__ == "__main__":
    main()
