"""Failover on a real Slurm with two controllers (packaging/local-slurm/ha-slurm.sh): an agent
beside each slurmctld, the primary stopped in the middle of a burst of failing jobs, control
handed back when it returns. Every job must end with exactly its requeue limit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ROOT, wait_for
from tests.integration.support import AgentProcess

HA_SLURM = ROOT / "packaging" / "local-slurm" / "ha-slurm.sh"
BASE = Path("/var/lib/ajr-ha")
LIMIT = 2
JOBS = 6
JOB = """#!/bin/bash
log="$PWD/${SLURM_JOB_NAME}_${SLURM_JOB_ID}_date_$(date +%y-%m-%d_time_%H-%M-%S).log"
echo "attempt ${SLURM_RESTART_COUNT:-0} on $(hostname)" > "$log"
sleep 2
echo 'Rank0: (1) segmentation fault: artificial segfault' >> "$log"
sleep 60
"""

pytestmark = pytest.mark.slurm


def on(host: int, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command on controller host ctl<host> of the HA cluster."""
    return subprocess.run([str(HA_SLURM), "run", str(host), *command], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def ha_cluster() -> Iterator[None]:
    subprocess.run([str(HA_SLURM), "stop"], check=False, timeout=120)
    subprocess.run(["rm", "-rf", str(BASE)], check=True)
    subprocess.run([str(HA_SLURM), "start"], check=True, timeout=120)
    yield
    subprocess.run([str(HA_SLURM), "stop"], check=False, timeout=120)


def agent_on(host: int, tmp_path: Path, shared: Path) -> AgentProcess:
    workdir = tmp_path / f"ctl{host}"
    workdir.mkdir()
    extra = (f'failover = "slurm"\nha_lease_seconds = 4\nha_status_file = "{workdir / "control.json"}"\n'
             f'log_dirs = ["{shared / "jobs"}"]\nhttp_port = 18470\nhttp_bind = "127.0.0.1"\n')  # fmt: skip
    launcher = (str(HA_SLURM), "run", str(host))
    return AgentProcess(workdir, extra_config=extra, launcher=launcher, state_db=shared / "ajr.db").start()


def role(agent: AgentProcess) -> dict[str, Any] | None:
    """What `ajr status --json` on the agent's host says of it (None before the database exists)."""
    done = agent.cli("status", "--json")
    return json.loads(done.stdout)["control"] if done.returncode == 0 else None


def cockpit_role(host: int) -> str:
    """The role /api/status of the cockpit on ctl<host> reports."""
    fetch = "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:18470/api/status'))['control']['role'])"
    return on(host, sys.executable, "-c", fetch).stdout.strip()


def restarts(job_ids: list[int]) -> dict[int, tuple[str, int]]:
    """Each job's Slurm state and restart count, as seen from ctl2."""
    out = on(2, "squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(map(str, job_ids))).stdout
    states = {int(i): s for i, s in (line.split("|") for line in out.splitlines() if "|" in line)}
    counts = {}
    for job_id in job_ids:
        shown = on(2, "scontrol", "-o", "show", "job", str(job_id)).stdout
        restart = next((int(w.split("=")[1]) for w in shown.split() if w.startswith("Restarts=")), -1)
        counts[job_id] = (states.get(job_id, "?"), restart)
    return counts


def test_the_backup_agent_takes_over_when_the_primary_stops_and_hands_back(ha_cluster: None, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "jobs").mkdir(parents=True)
    first, second = agent_on(1, tmp_path, shared), agent_on(2, tmp_path, shared)
    try:
        wait_for(lambda: (role(first) or {}).get("role") == "active", 30, "the agent beside the primary is active")
        wait_for(lambda: (role(second) or {}).get("reason") == "primary is ctl1", 30, "the backup's agent stands by")
        assert (cockpit_role(1), cockpit_role(2)) == ("active", "standby")

        script = shared / "jobs" / "fail.sh"
        script.write_text(JOB)
        spec = json.dumps({"APS": {"auto_resume_mode": "requeue", "max_requeue_times": LIMIT}})
        job_ids = []
        for n in range(JOBS):
            done = on(2, "sbatch", "--parsable", "-J", f"burst{n}", "-D", str(shared / "jobs"), "-o", "/dev/null",
                      f"--comment={spec}", str(script))  # fmt: skip
            assert done.returncode == 0, done.stderr
            job_ids.append(int(done.stdout.strip().split(";")[0]))

        # The primary goes away once the first agent has recovered some of the burst.
        wait_for(lambda: sum(r for _, r in restarts(job_ids).values()) >= 2, 90, "the first recoveries")
        lost_at = time.time()
        subprocess.run([str(HA_SLURM), "stop-controller", "1"], check=True, timeout=60)
        wait_for(lambda: (role(second) or {}).get("role") == "active", 60, "the backup's agent takes over")
        took_over = time.time() - lost_at
        wait_for(lambda: (role(first) or {}).get("role") == "standby", 30, "the primary's agent stands by")

        wait_for(lambda: all(r == LIMIT and s in ("FAILED", "CANCELLED", "COMPLETED")
                             for s, r in restarts(job_ids).values()), 300, "every job ends at its limit")  # fmt: skip
        final = restarts(job_ids)
        assert {r for _, r in final.values()} == {LIMIT}, final
        requeued_after = []
        for job_id in job_ids:
            shown = second.show(job_id)
            assert shown is not None
            holds = [a for a in shown["actions"] if a["kind"] == "requeue_hold" and a["status"] == "done"]
            assert len(holds) == LIMIT, (job_id, shown["actions"])
            requeued_after += [a["created_at"] for a in holds if a["created_at"] > lost_at]
        gap = min(requeued_after) - lost_at if requeued_after else None
        print(f"\nfailover: primary stopped -> the backup's agent active within {took_over:.1f} s; first requeue by "
              f"it {gap:.1f} s after" if gap else "\nfailover: every requeue happened before the primary was stopped")  # fmt: skip

        subprocess.run([str(HA_SLURM), "start-controller", "1"], check=True, timeout=60)
        wait_for(lambda: (role(first) or {}).get("role") == "active", 90, "the primary's agent takes control back")
        wait_for(lambda: (role(second) or {}).get("role") == "standby", 30, "the backup's agent stands by again")
        assert (cockpit_role(1), cockpit_role(2)) == ("active", "standby")
    finally:
        for agent in (first, second):
            if agent.process and agent.process.poll() is None:
                agent.stop()
        on(2, "scancel", "--user=root", "--partition=defq")
