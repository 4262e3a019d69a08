"""Helpers shared by the benchmarks: the local Slurm, job submission, figures.

Importing this module also puts the repository root on sys.path, so that the
benchmarks run as `python bench/<name>.py` from a checkout without installing AJR.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOCAL_SLURM = ROOT / "packaging" / "local-slurm" / "local-slurm.sh"


def start_slurm() -> None:
    """Start the local one-node cluster (idempotent); it must run as root.

    `start` also waits for the node to be idle, which it may not be while other
    people's test jobs complete on it: a cluster that answers is good enough.
    """
    if os.geteuid() != 0:
        sys.exit("the benchmarks drive the local Slurm cluster: run them as root")
    if subprocess.run([str(LOCAL_SLURM), "start"], timeout=300, check=False).returncode != 0:
        if subprocess.run(["sinfo", "-h"], capture_output=True, check=False).returncode != 0:
            sys.exit("the local Slurm cluster does not answer; see /var/log/ajr-local-slurm/")


def sbatch(*args: str, cwd: Path | str = "/tmp") -> int:
    """Submit one job; its id. Retries once on a busy controller, which 10,000 quick submissions can meet."""
    command = ["sbatch", "--parsable", *args]
    for _ in range(2):
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return int(done.stdout.strip().split(";")[0])
    raise RuntimeError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")


def scancel(job_ids: list[int]) -> None:
    """Cancel jobs by id, in chunks that keep the command line short; unknown ids are ignored."""
    for start in range(0, len(job_ids), 1000):
        chunk = [str(j) for j in job_ids[start : start + 1000]]
        subprocess.run(["scancel", *chunk], capture_output=True, check=False)


def other_agents() -> list[int]:
    """Pids of AJR agents not started by this process: they would act on the benchmark's jobs too."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ajr_agent.surfaces.service" in argv or any(arg.endswith(b"/ajr-agent") for arg in argv):
            found.append(int(entry.name))
    return found


def prepare(others_note: str) -> None:
    """What every benchmark does first: make SIGTERM unwind like Ctrl-C (so its jobs are
    cancelled), start the local cluster, and warn when other agents share it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    start_slurm()
    if others := other_agents():
        print(f"note: other AJR agents are running (pids {others}); {others_note}", file=sys.stderr)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return statistics.median(values)


def verdict(value: float, target: float) -> str:
    """'ok' or 'MISSED' against an upper bound, for the printed tables."""
    return "ok" if value < target else "MISSED"
