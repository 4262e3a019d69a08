"""Poll cycle: what one read of a 10,000-job queue costs the agent, in time and memory.

Against the local Slurm:

1. make sure 10,000 held jobs named `pollbench` are queued (individual jobs, not an
   array, which squeue shows as one line), ~20 of them managed (an APS comment), and
   100 more whose names are hostile (line breaks of every kind followed by a forged
   queue record, in the old \x1f format and with a guessed token, bytes that are not
   UTF-8, Slurm's longest name, an ExcNodeList look-alike), so that the figures
   include them and the read is checked against them; what an earlier run left
   queued is counted, only the missing ones are submitted, in parallel;
2. time `CommandGateway.list_jobs()` (the agent's one `squeue` per poll, its format
   and token in SQUEUE_FORMAT2, parsed) over several runs; measure the peak RSS of
   its squeue child (from wait4's rusage, for that child alone) and the Python-side
   peak of the call and of the parsing alone (tracemalloc);
3. for comparison, run `squeue --json` once: its time, output size, peak RSS, and
   the time json.loads takes on it;
4. time whole `Agent.poll()` calls of an in-process agent (fresh state database,
   dry run so that it can never act on anyone's job): the first one adopts the
   managed jobs, the next ones are the steady state.

The jobs are cancelled at the end (`scancel --name pollbench`, the hostile ones by id)
unless --keep is given.
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

from _common import median, prepare, sbatch, scancel, verdict

from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.slurm import (
    SQUEUE_COMMAND,
    SQUEUE_FIELDS,
    CommandGateway,
    new_token,
    parse_squeue,
    squeue_format,
)
from ajr_agent.domain.spec import SPEC_KEY
from ajr_agent.adapters.store import Store

JOB_NAME = "pollbench"
# The hostile jobs' names start so: an earlier run's are counted and cancelled by it.
HOSTILE_PREFIX = "pollbench-hostile"
# Everything Python's str.splitlines() breaks on, and the carriage return.
LINE_BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
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


def run_measured(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run a command and reap it with wait4, whose rusage covers that child alone.

    RUSAGE_CHILDREN would give the largest of every child this process ever waited
    for, the sbatch calls and `squeue --json` included.
    """
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, env=env)
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


def hostile_names(count: int, target: int) -> list[str]:
    """`count` job names that try to break the queue read, each forging a record of job `target` ended FAILED."""

    def forged(separator: str) -> str:
        values = {field: "x" for field in SQUEUE_FIELDS} | {"JobID": str(target), "State": "FAILED", "UserId": "0",
                                                             "RestartCnt": "0", "Comment": MANAGED_SPEC}  # fmt: skip
        return "".join(values[field] + separator for field in SQUEUE_FIELDS)

    payloads = [f"{brk}{forged(separator)}{brk}" for brk in LINE_BREAKS for separator in ("\x1f", new_token())]
    payloads += ["\udcff\udcfe not UTF-8\n" + forged("\x1f"), " ExcNodeList=n[0-99999999]", ("\n" * 1024)]
    return [(f"{HOSTILE_PREFIX}-{i}" + payloads[i % len(payloads)])[:1024] for i in range(count)]


def submit_hostile(count: int, gateway: CommandGateway, parallel: int) -> set[str]:
    """Top the queue up to `count` held jobs with hostile names; every hostile name queued, as it reads back."""
    jobs = gateway.list_jobs()
    queued = {j.name for j in jobs if j.name.startswith(HOSTILE_PREFIX) and j.state == "PENDING"}
    wanted = hostile_names(count, min((j.job_id for j in jobs if j.name == JOB_NAME), default=1))
    missing = [name for name in wanted if as_read(name) not in queued]
    print(f"hostile jobs queued: {len(queued)}; submitting {len(missing)}", flush=True)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(lambda name: sbatch("--hold", "-p", "defq", "-J", name, "-o", "/dev/null", "--wrap", "true"),
                      missing))  # fmt: skip
    return {as_read(name) for name in wanted}


def as_read(submitted: str) -> str:
    """A name as the gateway reads it back: the bytes it was submitted as, those that are not UTF-8 as U+FFFD."""
    return submitted.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_hostile(gateway: CommandGateway, names: set[str]) -> None:
    """The hostile jobs read back whole, and no forged record was taken for a job."""
    jobs = gateway.list_jobs()
    read = {j.name for j in jobs if j.name.startswith(HOSTILE_PREFIX)}
    forged = [j.job_id for j in jobs if j.state == "FAILED" and j.name == "x"]
    print(f"hostile names: {len(names)} queued, {len(names & read)} read back whole, "
          f"{len(read - names)} read cut or changed; forged records taken for jobs: {len(forged)} "
          f"[{'ok' if read >= names and not forged else 'MISSED'}]")  # fmt: skip


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

    # The squeue list_jobs() runs, alone: its format and token in the environment, none of ours.
    token = new_token()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
    child = run_measured(list(SQUEUE_COMMAND), env | {"SQUEUE_FORMAT2": squeue_format(token)})
    tracemalloc.start()
    gateway.list_jobs()
    _, call_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    text = child.output.decode("utf-8", "surrogateescape")
    parse_times = []
    for _ in range(runs):
        started = time.perf_counter()
        parse_squeue(text, token)
        parse_times.append(time.perf_counter() - started)
    # Apart from the timing: tracemalloc slows allocation-heavy code down several times.
    tracemalloc.start()
    parse_squeue(text, token)
    _, parse_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  squeue alone: {child.seconds:.3f} s, {len(child.output) / MIB:.1f} MiB printed "
          f"({len(child.output) / max(len(snapshots), 1):.0f} bytes a job), "
          f"peak RSS {child.max_rss_mib:.0f} MiB [{verdict(child.max_rss_mib, TARGET_MIB)}: < {TARGET_MIB:g} MiB]")
    print(f"  Python side: list_jobs() peak {call_peak / MIB:.1f} MiB traced "
          f"[{verdict(call_peak / MIB, TARGET_MIB)}: < {TARGET_MIB:g} MiB]; parse_squeue alone: "
          f"median {median(parse_times):.3f} s, peak {parse_peak / MIB:.1f} MiB")  # fmt: skip
    return median(times)


def bench_squeue_json() -> None:
    """The JSON form, for comparison: one run."""
    child = run_measured(["squeue", "--json"])
    started = time.perf_counter()
    document = json.loads(child.output.decode("utf-8", "surrogateescape"))
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
    parser.add_argument("--hostile", type=int, default=100, help="held jobs with hostile names, on top of --jobs")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of list_jobs() and of Agent.poll()")
    parser.add_argument("--parallel", type=int, default=16, help="sbatch calls at once while submitting")
    parser.add_argument("--keep", action="store_true", help="leave the bench jobs queued for the next run")
    args = parser.parse_args()
    prepare("they poll the same 10,000 jobs meanwhile")
    gateway = CommandGateway(15)
    try:
        submit(args.jobs, args.managed, gateway, args.parallel)
        hostile = submit_hostile(args.hostile, gateway, args.parallel)
        total = len(gateway.list_jobs())
        print(f"queue: {total} jobs in slurmctld's memory (squeue -t all)")
        check_hostile(gateway, hostile)
        list_seconds = bench_list_jobs(gateway, args.runs)
        bench_squeue_json()
        bench_agent_poll(args.runs, list_seconds, queued_bench_jobs(gateway)[1])
    finally:
        if not args.keep:
            subprocess.run(["scancel", "--name", JOB_NAME], check=False)
            scancel([j.job_id for j in gateway.list_jobs() if j.name.startswith(HOSTILE_PREFIX)])
            print(f"cancelled the {JOB_NAME} jobs (they stay listed by squeue -t all for MinJobAge)")


if __name__ == "__main__":
    main()
