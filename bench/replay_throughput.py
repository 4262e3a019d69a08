"""`ajr replay` throughput: how fast a site's history of logs is replayed, MB/s on one core.

Writes the realistic training log of `rules_throughput.py` (Megatron-LM iteration lines with
their TFLOP readings and timestamps, Trainer, DeepSpeed, NCCL INFO bursts, progress bars,
warnings, free text, a failure or checkpoint line every 20,000 lines), then times, with the
shipped rules loaded before the clock starts:

- reading alone: the file cut into lines and batches as replay reads it (no rules);
- `replay_file` on the plain log: reading, the rules, the root cause, the checkpoint stages,
  the straggler check at every reading and the hang's search among the timestamps;
- the same log gzip-compressed (logrotate's `.gz`), MB/s counted on the uncompressed bytes;
- `replay` over a directory of many small logs of the same lines (`--small-kb` each), where
  the cost of each file (opening it, its name, its results) shows;
- the same directory over `--jobs` processes (`ajr replay --jobs`), unpinned: each process
  takes a core.

Pinned to one CPU like the rules bench (`--all-cores` lifts that); each figure is the best of
`--repeat` runs, from the page cache. The last line says how long a year of logs would take
at the measured rate for a given daily volume (`--gb-per-day`).

Usage: python bench/replay_throughput.py [--mb 200] [--small-kb 200] [--repeat 3] [--jobs N] [--gb-per-day 50]
                                         [--all-cores]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rules_throughput import MIX, pin_to_one_cpu, synthetic_lines, write_log  # noqa: E402

from ajr_agent.detect.rules import RuleSet, default_rules_dir  # noqa: E402
from ajr_agent.domain.settings import Settings  # noqa: E402
from ajr_agent.ops import replay  # noqa: E402

NAME = "llama_{}_date_26-02-10_time_03-00-00.log"


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def report(what: str, seconds: float, size: int) -> float:
    rate = size / 1e6 / seconds
    print(f"  {what:<58} {seconds:>7.2f} s {rate:>8.1f} MB/s")
    return rate


def read_only(path: Path, settings: Settings) -> int:
    with replay._open(path) as (stream, _):
        return sum(len(lines) for lines in replay._batches(stream, settings.max_line_bytes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200.0, help="size of the training log in MB (default 200)")
    parser.add_argument("--small-kb", type=float, default=200.0, help="size of each small log in kB (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept (default 3)")
    parser.add_argument("--gb-per-day", type=float, default=50.0, help="a site's daily log volume for the last line")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes for the last figure (default: the CPUs this process may use)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--all-cores", action="store_true", help="do not pin the benchmark to one CPU")
    args = parser.parse_args()

    cpus = os.sched_getaffinity(0)
    print("all CPUs allowed" if args.all_cores else pin_to_one_cpu())
    rules = RuleSet.load([default_rules_dir()])
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="ajr-replay-bench-") as tmp:
        lines = list(synthetic_lines(args.mb, args.seed, MIX))
        log = Path(tmp, NAME.format(1))
        size = write_log(log, lines)
        packed = Path(tmp, NAME.format(2) + ".gz")
        packed.write_bytes(gzip.compress(log.read_bytes(), compresslevel=6))
        small = Path(tmp, "small")
        small.mkdir()
        per_file = max(1, int(len(lines) * args.small_kb * 1e3 / size))
        for n, start in enumerate(range(0, len(lines), per_file)):
            write_log(small / NAME.format(1000 + n), lines[start : start + per_file])
        files = len(list(small.iterdir()))
        print(f"{len(rules.rules)} rules; training log {size / 1e6:.1f} MB, {len(lines):,} lines "
              f"({size / len(lines):.0f} bytes a line); gzip {packed.stat().st_size / 1e6:.1f} MB; "
              f"{files:,} small logs of {args.small_kb:g} kB")  # fmt: skip
        del lines

        seconds, _ = best_of(args.repeat, lambda: read_only(log, settings))
        report("reading alone (lines and batches, no rules)", seconds, size)
        seconds, seen = best_of(args.repeat, lambda: replay.replay_file(log, rules, settings))
        rate = report("replay_file, plain log", seconds, size)
        assert isinstance(seen, replay.FileReplay) and not seen.error, seen
        print(f"    found: failure at line {seen.failure.line.number if seen.failure else None}, "
              f"{sum(s.reports for s in seen.series):,} readings, {seen.saves.completed if seen.saves else 0} saves, "
              f"{sum(seen.rule_lines.values()):,} matches")  # fmt: skip
        seconds, _ = best_of(args.repeat, lambda: replay.replay_file(packed, rules, settings))
        report("replay_file, the same log gzip-compressed", seconds, size)
        seconds, _ = best_of(args.repeat, lambda: list(replay.replay([small], rules, settings)))
        report(f"replay of a directory of {files:,} small logs", seconds, size)
        os.sched_setaffinity(0, cpus)  # the workers inherit it: one core each
        dirs = [default_rules_dir()]
        seconds, _ = best_of(args.repeat, lambda: list(replay.replay_in_processes([small], dirs, settings, args.jobs)))
        report(f"the same over {args.jobs} processes ({len(cpus)} CPUs)", seconds, size)

    year = args.gb_per_day * 365 * 1e3 / rate / 3600
    print(f"at {rate:.0f} MB/s, a year of {args.gb_per_day:g} GB of logs a day is replayed in {year:.1f} h on one core")


if __name__ == "__main__":
    main()
