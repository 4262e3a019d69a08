"""Poll cycle: what one read of a 10,000-job queue costs the agent, in time and memory.

Against the local Slurm:

1. make sure 10,000 held jobs named `pollbench` are queued (individual jobs, not an
   array, which squeue shows as one line), ~20 of them managed (an APS comment);
   what an earlier run left queued is counted, only the missing ones are submitted,
   in parallel;
2. time `CommandGateway.list_jobs()` (the agent's one `squeue -O` per poll, parsed)
   over several runs; measure the peak RSS of its squeue child (from wait4's
   rusage, for that child alone) and the Python-side peak of the call and of the
   parsing alone (tracemalloc);
3. for comparison, run `squeue --json` once: its time, output size, peak RSS, and
   the time json.loads takes on it;
4. time whole `Agent.poll()` calls of an in-process agent (fresh state database,
   dry run so that it can never act on anyone's job): the first one adopts the
   managed jobs, the next ones are the steady state.

The jobs are cancelled at the end (`scancel --name pollbench`) unless --keep is given.
Cancelled jobs stay in slurmctld's memory for MinJobAge (600 s on the local cluster),
so `squeue -t all` keeps listing them for a while after.

Usage: python bench/poll_cycle.py [--jobs 10000] [--runs 10] [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _common import median, prepare, sbatch, verdict

from ajr_agent.agent import Agent, load_rules
from ajr_agent.config import Settings
from ajr_agent.slurm import SQUEUE_FORMAT, CommandGateway, parse_squeue
from ajr_agent.spec import SPEC_KEY
from ajr_agent.store import Store

JOB_NAME = "pollbench"
MANAGED_SPEC = '{"APS": {"max_requeue_times": 1}}'
# Held jobs never run; should someone release one, it writes nowhere and ends at once.
SUBMIT = ("--hold", "-p", "defq", "-J", JOB_NAME, "-o", "/dev/null", "--wrap", "true")
TARGET_SECONDS, TARGET_MIB = 0.25, 100.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Measured:
    """One command run on its own: wall time, bytes printed, peak RSS."""

    seconds: float
    output: bytes
    max_rss_mib: float


def run_measured(command: list[str]) -> Measured:
    """Run a command and reap it with wait4, whose rusage covers that child alone.

    RUSAGE_CHILDREN would give the largest of every child this process ever waited
    for, the sbatch calls and `squeue --json` included.
    """
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` exited with {child.returncode}")
        out.seek(0)
        return Measured(seconds, out.read(), usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def queued_bench_jobs(gateway: CommandGateway) -> tuple[int, int]:
    """Bench jobs still pending (held) from an earlier run: all of them, and the managed ones."""
    pending = [j for j in gateway.list_jobs() if j.name == JOB_NAME and j.state == "PENDING"]
    return len(pending), sum(SPEC_KEY in j.comment for j in pending)


def submit(total: int, managed: int, gateway: CommandGateway, parallel: int) -> None:
    """Top the queue up to `total` held bench jobs, `managed` of them with an APS comment."""
    have, have_managed = queued_bench_jobs(gateway)
    extra_managed = max(0, managed - have_managed)
    plain = max(0, total - have - extra_managed)
    print(f"bench jobs queued: {have} ({have_managed} managed); submitting {plain + extra_managed}", flush=True)
    if plain + extra_managed == 0:
        return
    argument_lists = [("--comment", MANAGED_SPEC, *SUBMIT)] * extra_managed + [SUBMIT] * plain
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for done, _ in enumerate(pool.map(lambda args: sbatch(*args), argument_lists), 1):
            if done % 2000 == 0:
                print(f"  {done} submitted ({done / (time.monotonic() - started):.0f}/s)", flush=True)
    elapsed = time.monotonic() - started
    print(f"  {len(argument_lists)} submitted in {elapsed:.0f} s ({len(argument_lists) / elapsed:.0f}/s)")


def bench_list_jobs(gateway: CommandGateway, runs: int) -> float:
    """Time and memory of the agent's queue read; its median time."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        snapshots = gateway.list_jobs()
        times.append(time.perf_counter() - started)
    print(f"list_jobs(): {len(snapshots)} jobs; median {median(times):.3f} s, max {max(times):.3f} s over {runs} runs "
          f"[{verdict(median(times), TARGET_SECONDS)}: < {TARGET_SECONDS:g} s]")  # fmt: skip
    print(f"  each run in order (s): {' '.join(f'{t:.3f}' for t in times)}")

    child = run_measured(["squeue", "-h", "-t", "all", "-O", SQUEUE_FORMAT])
    tracemalloc.start()
    gateway.list_jobs()
    _, call_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    text = child.output.decode()
    parse_times = []
    for _ in range(runs):
        started = time.perf_counter()
        parse_squeue(text)
        parse_times.append(time.perf_counter() - started)
    # Apart from the timing: tracemalloc slows allocation-heavy code down several times.
    tracemalloc.start()
    parse_squeue(text)
    _, parse_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  squeue -O alone: {child.seconds:.3f} s, {len(child.output) / MIB:.1f} MiB printed, "
          f"peak RSS {child.max_rss_mib:.0f} MiB [{verdict(child.max_rss_mib, TARGET_MIB)}: < {TARGET_MIB:g} MiB]")
    print(f"  Python side: list_jobs() peak {call_peak / MIB:.1f} MiB traced "
          f"[{verdict(call_peak / MIB, TARGET_MIB)}: < {TARGET_MIB:g} MiB]; parse_squeue alone: "
          f"median {median(parse_times):.3f} s, peak {parse_peak / MIB:.1f} MiB")  # fmt: skip
    return median(times)


def bench_squeue_json() -> None:
    """The JSON form, for comparison: one run."""
    child = run_measured(["squeue", "--json"])
    started = time.perf_counter()
    document = json.loads(child.output)
    parse_seconds = time.perf_counter() - started
    print(f"squeue --json (comparison): {child.seconds:.3f} s, {len(child.output) / MIB:.1f} MiB printed, "
          f"peak RSS {child.max_rss_mib:.0f} MiB; json.loads {parse_seconds:.3f} s for {len(document['jobs'])} jobs")


def bench_agent_poll(runs: int, list_seconds: float, bench_managed: int) -> None:
    """Whole poll cycles of an in-process agent with a fresh state database, in dry run."""
    # Its warnings about other people's jobs (a broken spec, say) are noise here.
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ajr-bench-poll-") as tmp:
        settings = Settings(state_db=Path(tmp) / "ajr.db", rules_dirs=(), slurm_backend="commands", dry_run=True)
        store = Store(settings.state_db)
        agent = Agent(settings, store, CommandGateway(settings.slurm_command_timeout), load_rules(settings))
        try:
            started = time.perf_counter()
            agent.poll(time.time())
            first = time.perf_counter() - started
            adopted = len(agent.jobs)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                agent.poll(time.time())
                times.append(time.perf_counter() - started)
        finally:
            store.close()
    print(f"Agent.poll(): first (adopting {adopted} managed jobs) {first:.3f} s; then median {median(times):.3f} s, "
          f"max {max(times):.3f} s over {runs} runs [{verdict(median(times), TARGET_SECONDS)}: < {TARGET_SECONDS:g} s]")
    # Every APS job in slurmctld's memory is managed, other people's and finished ones too.
    print(f"  the managed jobs: {adopted - bench_managed} of them not this bench's; poll minus list_jobs(): "
          f"{1000 * (median(times) - list_seconds) / max(adopted, 1):.2f} ms per managed job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="held bench jobs in the queue")
    parser.add_argument("--managed", type=int, default=20, help="how many of them carry an APS comment")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of list_jobs() and of Agent.poll()")
    parser.add_argument("--parallel", type=int, default=16, help="sbatch calls at once while submitting")
    parser.add_argument("--keep", action="store_true", help="leave the bench jobs queued for the next run")
    args = parser.parse_args()
    prepare("they poll the same 10,000 jobs meanwhile")
    gateway = CommandGateway(15)
    try:
        submit(args.jobs, args.managed, gateway, args.parallel)
        total = len(gateway.list_jobs())
        print(f"queue: {total} jobs in slurmctld's memory (squeue -t all)")
        list_seconds = bench_list_jobs(gateway, args.runs)
        bench_squeue_json()
        bench_agent_poll(args.runs, list_seconds, queued_bench_jobs(gateway)[1])
    finally:
        if not args.keep:
            subprocess.run(["scancel", "--name", JOB_NAME], check=False)
            print(f"cancelled the {JOB_NAME} jobs (they stay listed by squeue -t all for MinJobAge)")


if __name__ == "__main__":
    main()
