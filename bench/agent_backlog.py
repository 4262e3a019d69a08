"""How fast the agent catches up on a log backlog: tailer, rules, events and store together.

A backlog builds up when the agent was down, or when a job's log appears with
hours of output already in it. The agent then reads each file at most 4 MiB at a
time, matches the lines, stores every throughput reading and feeds the policy.
This bench runs an in-process agent (dry run, its own state database in a
temporary directory, a stand-in for Slurm that shows one running managed job),
appends the training log or the free-text log of `rules_throughput.py` to that
job's log file at once, and times `Agent.read_logs` passes until the file is
read to its end. It needs no Slurm. Pinned to one CPU like `rules_throughput.py`
(`--all-cores` lifts that).

Usage: python bench/agent_backlog.py [--mb 100] [--all-cores]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# Run as a script, this directory is on sys.path; rules_throughput puts the repository there.
from rules_throughput import MIX, free_text, pin_to_one_cpu, synthetic_lines

from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.adapters.store import Store
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool

JOB_ID = 7
LOG_NAME = f"train_{JOB_ID}_date_26-01-01_time_00-00-00.log"


def catch_up(directory: Path, lines: list[str]) -> tuple[float, int, int]:
    """Seconds the agent takes to read ``lines`` appended at once; bytes and readings stored."""
    settings = Settings(state_db=directory / "ajr.db", rules_dirs=(), dry_run=True, http_port=0)
    store = Store(settings.state_db)
    store.set_meta(watching_since=1.0)  # as if the agent had watched the cluster for long
    job = JobSnapshot(
        job_id=JOB_ID, state="RUNNING", user_id=os.getuid(), user="bench", restart_count=0, start_time=100.0,
        end_time=None, batch=True, requeueable=True, nodes="node-1", reason="None", work_dir=str(directory),
        stdout="", name="train", comment='{"APS": {}}',
    )  # fmt: skip
    # The tests' Slurm, holding the one job: the agent is in dry run and acts on nothing.
    agent = Agent(settings, store, MemorySlurm(jobs={JOB_ID: job}), load_rules(settings), pool=InlinePool())
    log = directory / LOG_NAME
    log.write_text("step 0\n")
    agent.poll(time.time())
    data = ("\n".join(lines) + "\n").encode()
    with log.open("ab") as handle:
        handle.write(data)
    start = time.perf_counter()
    while agent.feed.tailer.position(str(log)).offset < len(data) + len("step 0\n"):
        agent.read_logs(time.time())
    seconds = time.perf_counter() - start
    readings = len(store.throughput(JOB_ID))
    store.close()
    return seconds, len(data), readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="size of each backlog in MB (default 100)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--all-cores", action="store_true", help="do not pin the benchmark to one CPU")
    args = parser.parse_args()
    print("all CPUs allowed" if args.all_cores else pin_to_one_cpu())
    for title, mix in (("realistic training log", MIX), ("free text only", ((free_text, 1.0),))):
        lines = list(synthetic_lines(args.mb, args.seed, mix))
        with tempfile.TemporaryDirectory(prefix="ajr-backlog-bench-") as tmp:
            seconds, size, readings = catch_up(Path(tmp), lines)
        print(f"{title}: {size / 1e6:.1f} MB, {len(lines):,} lines read in {seconds:.2f} s: "
              f"{size / 1e6 / seconds:.1f} MB/s, {len(lines) / seconds:,.0f} lines/s, {readings:,} readings stored")  # fmt: skip


if __name__ == "__main__":
    main()
