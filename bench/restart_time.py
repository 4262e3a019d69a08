"""From a failure line to the next attempt running, on a real Slurm at its default scheduler settings.

AJR: one job (max_requeue_times 10) fails ten times. Each attempt notes when its batch
script started, writes its log (named as AJR looks for it), and after a few seconds a
segfault line, noting when it wrote it. A real `ajr-agent` at its default settings
requeues the job held, releases it, and the next attempt notes its start: the figure
is the time from the failure line to that start (slurmctld made the job RUNNING and
slurmd launched its script). Slurm alone: ten jobs requeue themselves
(`scontrol requeue`) at their failure line, as Slurm's own requeue after a node
failure or an admin's would, and Slurm brings them back after its requeue wait and a
scheduler pass; they run side by side (about 2-3 minutes).

The cluster is local-slurm.sh's, whose slurm.conf leaves every scheduler setting at
Slurm's default (cred_expire 120 s, sched_interval 60 s, bf_interval 30 s); the table
prints what `scontrol show config` says of them.

Usage:
    python bench/restart_time.py [--failures 10] [--slurm-alone 10]     this machine's Slurm
    python bench/restart_time.py --release all|22.05,24.11,26.05 [...]   in each release's
        chroot (packaging/releases/release.sh), one table for all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import _common
from _common import ROOT, median, sbatch, scancel

RELEASE_SH = ROOT / "packaging" / "releases" / "release.sh"
TARGET = 5.0  # seconds, median, from the failure line to the next attempt running
# Each attempt runs this long before its failure line: time for the agent to find its log.
RUN_BEFORE_FAILURE = 4
JOB = """#!/bin/bash
#SBATCH -t 00:30:00
#SBATCH -J restartbench
#SBATCH --comment='{{"APS": {{"auto_resume_mode": "requeue", "max_requeue_times": {failures}}}}}'
attempt=${{SLURM_RESTART_COUNT:-0}}
echo "start $attempt $(date +%s.%N)" >>"{times}"
[ "$attempt" -ge {failures} ] && exit 0
log="$PWD/${{SLURM_JOB_NAME}}_${{SLURM_JOB_ID}}_$(date +date_%y-%m-%d_time_%H-%M-%S).log"
echo "step: training, attempt $attempt" >"$log"
sleep {before}
{on_failure}
echo "Rank0: (1) segmentation fault: artificial segfault" >>"$log"
sleep 300
"""
ON_FAILURE_AJR = 'echo "fail $attempt $(date +%s.%N)" >>"{times}"'
ON_FAILURE_SLURM = 'echo "fail $attempt $(date +%s.%N)" >>"{times}"; scontrol requeue "$SLURM_JOB_ID"'


@dataclass(frozen=True)
class Figures:
    """One release's restarts, in seconds from the failure line to the next attempt's start."""

    slurm: str
    settings: str
    ajr: list[float]
    slurm_alone: list[float]


def slurm_settings() -> tuple[str, str]:
    """Slurm's version, and the scheduler settings the figures depend on, as slurmctld has them."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    values = {key.strip(): value.strip() for key, _, value in (line.partition("=") for line in config.splitlines())}
    version = subprocess.run(["scontrol", "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    shown = [f"SchedulerParameters={values.get('SchedulerParameters', '(null)')}",
             f"AuthInfo={values.get('AuthInfo', '(null)')}"]  # fmt: skip
    return version, " ".join(shown)


def restarts(times: Path) -> list[float]:
    """Seconds from each attempt's failure line to the next attempt's start, from a job's times file."""
    starts: dict[int, float] = {}
    fails: dict[int, float] = {}
    for line in times.read_text().splitlines():
        kind, attempt, at = line.split()
        (starts if kind == "start" else fails)[int(attempt)] = float(at)
    return [starts[attempt + 1] - at for attempt, at in sorted(fails.items()) if attempt + 1 in starts]


def wait_for(test: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not test():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(0.5)


def measure_ajr(workdir: Path, failures: int) -> list[float]:
    """Ten failures of one job, each recovered by a real agent at its default settings."""
    config = workdir / "ajr.toml"
    (workdir / "rules.d").mkdir()
    config.write_text(
        f'state_db = "{workdir / "ajr.db"}"\nspool_dir = "{workdir / "spool"}"\nrules_dirs = ["{workdir / "rules.d"}"]\n'
        # Ten failures in a row without a checkpoint would be a crash loop, stopped at the third.
        f"http_port = 0\ncrashloop_threshold = {failures + 1}\n"
    )  # fmt: skip
    log = (workdir / "agent.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AJR_")}
    agent = subprocess.Popen([sys.executable, "-m", "ajr_agent.surfaces.service", "--config", str(config)],
                             stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    times = workdir / "ajr.times"
    script = workdir / "ajr.sh"
    script.write_text(JOB.format(failures=failures, times=times, before=RUN_BEFORE_FAILURE,
                                 on_failure=ON_FAILURE_AJR.format(times=times)))  # fmt: skip
    job = 0
    try:
        wait_for(lambda: "started" in (workdir / "agent.log").read_text(), 60, "the agent to start")
        job = sbatch(str(script), cwd=workdir)
        wait_for(lambda: times.exists() and f"start {failures} " in times.read_text(), 60 * failures,
                 f"attempt {failures} of job {job} (agent log: {workdir / 'agent.log'})")  # fmt: skip
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        if job:
            scancel([job])
    return restarts(times)


def measure_slurm_alone(workdir: Path, jobs: int) -> list[float]:
    """Jobs that Slurm requeues, and brings back on its own."""
    submitted = []
    files = [workdir / f"slurm{i}.times" for i in range(jobs)]
    try:
        for times in files:
            script = times.with_suffix(".sh")
            script.write_text(JOB.format(failures=1, times=times, before=RUN_BEFORE_FAILURE,
                                         on_failure=ON_FAILURE_SLURM.format(times=times)))  # fmt: skip
            submitted.append(sbatch(str(script), cwd=workdir))
        wait_for(lambda: all(t.exists() and "start 1 " in t.read_text() for t in files), 600,
                 f"the second attempts of jobs {submitted}")  # fmt: skip
    finally:
        scancel(submitted)
    return [value for times in files for value in restarts(times)]


def measure_here(failures: int, slurm_alone: int) -> Figures:
    _common.prepare("they may act on this benchmark's jobs too")
    version, settings = slurm_settings()
    with tempfile.TemporaryDirectory(prefix="ajr-restart-") as directory:
        workdir = Path(directory)
        os.chmod(workdir, 0o755)
        ajr = measure_ajr(workdir, failures)
        alone = measure_slurm_alone(workdir, slurm_alone) if slurm_alone else []
    return Figures(version, settings, ajr, alone)


def measure_in(release: str, failures: int, slurm_alone: int) -> Figures:
    """The figures of one release, measured inside its chroot by this same script."""
    subprocess.run([str(RELEASE_SH), "prepare", release], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(RELEASE_SH), "up", release], check=True)
    done = subprocess.run(
        [str(RELEASE_SH), "exec", release, "python", "bench/restart_time.py", "--json",
         "--failures", str(failures), "--slurm-alone", str(slurm_alone)],
        stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    return Figures(**json.loads(done.stdout.strip().splitlines()[-1]))


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<12} not measured"
    verdict = f"  (target < {TARGET:g} s: {_common.verdict(median(values), TARGET)})" if name == "AJR" else ""
    return (f"  {name:<12} median {median(values):6.1f} s   max {max(values):6.1f} s   over {len(values)} "
            f"failures{verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failures", type=int, default=10, help="failures of the AJR job")
    parser.add_argument("--slurm-alone", type=int, default=10, help="jobs Slurm requeues on its own (0: none)")
    parser.add_argument("--release", help="a release, a comma-separated list, or all; default: this machine")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # how --release reads the figures
    args = parser.parse_args()
    if args.release:
        releases = ["22.05", "24.11", "26.05"] if args.release == "all" else args.release.split(",")
        figures = {release: measure_in(release, args.failures, args.slurm_alone) for release in releases}
    else:
        figures = {"this machine": measure_here(args.failures, args.slurm_alone)}
    if args.json:
        print(json.dumps(asdict(figures["this machine"])))
        return
    print("failure line -> next attempt running (its batch script started)")
    for name, measured in figures.items():
        print(f"Slurm {measured.slurm} ({name}): {measured.settings}")
        print(row("AJR", measured.ajr))
        print(row("Slurm alone", measured.slurm_alone))


if __name__ == "__main__":
    main()
