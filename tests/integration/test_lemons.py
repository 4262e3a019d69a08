"""Lemon nodes on the real Slurm of five nodes: a node whose own kernel log blames it under three
jobs is kept out of another user's pending job and is trusted again after its quiet time, its
exclusion taken back and the user's own kept.

The failing jobs ask for n3 (`-w n3`), so their own exclusion of it is off here
(`exclude_faulty_nodes = false`): the ledger's keep-out is what is tested."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import wait_for
from tests.integration.support import OTHER_USER, AgentProcess, sbatch, scontrol_show

pytestmark = pytest.mark.slurm

LEMON = "n3"
FAILING = """#!/bin/bash
log="$PWD/${SLURM_JOB_NAME}_${SLURM_JOB_ID}_$(date +date_%y-%m-%d_time_%H-%M-%S).log"
echo "attempt ${SLURM_RESTART_COUNT:-0} on $SLURMD_NODENAME" > "$log"
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
  sleep 2
  echo 'Rank0: (1) segmentation fault: artificial segfault' >> "$log"
fi
sleep 300
"""
WAITING = "#!/bin/bash\nsleep 300\n"


def nodes(agent: AgentProcess) -> dict[str, Any]:
    done = agent.cli("nodes", "--json")
    assert done.returncode == 0, done.stderr
    return {n["node"]: n for n in json.loads(done.stdout)["nodes"]}


def test_a_lemon_is_kept_out_of_another_users_job_never_empties_the_partition_and_is_trusted_again(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    node_logs = tmp_path / "syslog"
    (node_logs / LEMON).mkdir(parents=True)
    agent = agent_factory(extra_config=(
        f'node_log_dir = "{node_logs}/{{node}}"\nlemon_jobs = 3\nexclude_faulty_nodes = false\n'
        "trust_after = 20\nnode_check_interval = 1\n"))  # fmt: skip

    # Another user's job waits for its start time, having excluded n5 itself.
    other = tmp_path / "other"
    other.mkdir()
    other.chmod(0o777)
    (other / "wait.sh").write_text(WAITING)
    victim = sbatch(other / "wait.sh", other, f"--uid={OTHER_USER}", "--begin=now+3600", "-J", "ajr-victim", "-x", "n5",
                    "-o", "/dev/null", "--comment", '{"APS": {}}')  # fmt: skip
    agent.submitted.append(victim)
    wait_for(lambda: agent.job(victim) is not None, 30, "the other user's job to be managed")

    # n3's GPU falls off the bus, in n3's own kernel log, under three jobs in turn.
    (tmp_path / "fail.sh").write_text(FAILING)
    failing = []
    for n in range(3):
        stamp = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
        with (node_logs / LEMON / "kern.log").open("a") as log:
            log.write(f"{stamp} {LEMON} kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, GPU has fallen off the bus.\n")
        job_id = sbatch(tmp_path / "fail.sh", tmp_path, "-w", LEMON, "-J", f"ajr-lemon{n}", "-o", "/dev/null",
                        "--comment", '{"APS": {"max_requeue_times": 1}}')  # fmt: skip
        agent.submitted.append(job_id)
        failing.append(job_id)
        wait_for(lambda: (j := agent.job(job_id)) and j["verdict"] == "node", 90, f"job {job_id}'s node verdict")

    record = wait_for(lambda: (r := nodes(agent).get(LEMON)) and r["lemon"] and r, 30, "n3 to be a lemon")
    assert record["witnesses"] == 3 and record["trusted_evidence"]
    assert {b["job_id"] for b in record["blames"]} == set(failing)
    assert {b["basis"] for b in record["blames"]} == {"node_log"}

    # Kept out of the other user's job, beside the node that user excluded.
    wait_for(lambda: sorted(scontrol_show(victim)["ExcNodeList"].split(",")) == [LEMON, "n5"] or
             scontrol_show(victim)["ExcNodeList"] in ("n[3,5]", "n3,n5"), 30, "n3 kept out of the other user's job")  # fmt: skip
    # lemon_action is "exclude" (the default): n3 stays in service.
    state = subprocess.run(["sinfo", "-h", "-n", LEMON, "-o", "%T"], capture_output=True, text=True).stdout
    assert "drain" not in state and nodes(agent)[LEMON]["drains"] == 0

    # In service for trust_after without new blame: trusted again, the exclusion taken back,
    # the user's own one kept.
    trusted = wait_for(lambda: (r := nodes(agent)[LEMON]) and not r["lemon"] and r, 90, "n3 trusted again")
    assert trusted["trusted_by"] == "ajr"
    wait_for(lambda: scontrol_show(victim)["ExcNodeList"] == "n5", 30, "n3's exclusion taken back")
