"""How long the EpilogSlurmctld hook keeps slurmctld's job end waiting (target: well under 100 ms).

Runs the shipped slurm_hooks/ajr-epilog, pointed at a temporary spool, the way
slurmscriptd does (a bare environment with the job's variables), for a managed job
and for a job without an APS spec, and prints median, p99 and max.

    python bench/epilog_hook.py [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "slurm_hooks" / "ajr-epilog"
JOB_ENV = {
    "PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_JOB_RESTART_COUNT": "0", "SLURM_JOB_EXIT_CODE2": "1:0",
    "SLURM_JOB_NODELIST": "gpu-[1-8]", "SLURM_JOB_USER": "alice", "SLURM_JOB_NAME": "llama",
}  # fmt: skip


def timings(hook: Path, env: dict[str, str], runs: int) -> list[float]:
    """Wall time of each run, in seconds, sorted."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(hook)], env=env, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per kind of job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        spool = Path(workdir) / "spool"
        spool.mkdir()
        hook = Path(workdir) / "ajr-epilog"
        hook.write_text(HOOK.read_text().replace("SPOOL=/var/spool/ajr/epilog", f"SPOOL={spool}"))
        hook.chmod(0o755)
        for label, comment in (("managed job (writes a record)", '{"APS": {}}'), ("job without APS", "nightly")):
            times = timings(hook, {**JOB_ENV, "SLURM_JOB_COMMENT": comment}, args.runs)
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(f"{label:32} median {statistics.median(times) * 1000:5.2f} ms  p99 {p99 * 1000:5.2f} ms  "
                  f"max {times[-1] * 1000:5.2f} ms  [{'ok' if p99 < 0.1 else 'MISSED'}: < 100 ms]")  # fmt: skip


if __name__ == "__main__":
    main()
