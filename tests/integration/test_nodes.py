"""Faulty nodes on the real Slurm of five nodes: the right node blamed among four, and a node lost under a job.

Each 4-node job runs one srun step; every task notes where it runs (rank and SLURMD_NODENAME)
in a side file, so the tests know which node is really at fault. A node is made to fail as a
powered-off one would: its slurmd and its job steps killed (local-slurm.sh node-stop).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest

from ajr_agent.domain.hostlist import expand_hostlist
from ajr_agent.domain.model import StopCause
from tests.conftest import wait_for
from tests.integration.support import NODES, AgentProcess, fail_node, sbatch, scontrol_show

pytestmark = pytest.mark.slurm

BATCH = """#!/bin/bash
log="$PWD/${SLURM_JOB_NAME}_${SLURM_JOB_ID}_$(date +date_%y-%m-%d_time_%H-%M-%S).log"
export WHERE="$PWD/where-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"
srun --label bash "$PWD/task.sh" >> "$log" 2>&1
sleep 300
"""
TASK = """#!/bin/bash
echo "$SLURM_PROCID $SLURMD_NODENAME" >> "$WHERE"
echo "rank $SLURM_PROCID of $SLURM_NTASKS up on $SLURMD_NODENAME"
{body}
sleep 300
"""
# Rank 5's GPU falls off the bus in the first attempt; the other ranks then time out in their collective.
XID_ON_RANK_5 = """if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
  sleep 2
  if [ "$SLURM_PROCID" = 5 ]; then
    echo "NVRM: Xid (PCI:0000:3b:00): 79, pid=$$, name=python3, GPU has fallen off the bus."
  else
    sleep 1
    echo "[rank$SLURM_PROCID]:[E1203 07:12:08.408271257 ProcessGroupNCCL.cpp:607] [Rank $SLURM_PROCID] Watchdog caught\
 collective operation timeout: WorkNCCL(SeqNum=1580, OpType=ALLREDUCE, NumelIn=4, NumelOut=4, Timeout(ms)=600000) ran\
 for 600060 milliseconds before timing out."
  fi
fi"""


def submit(agent: AgentProcess, cwd: Path, name: str, body: str, *args: str) -> int:
    (cwd / "task.sh").write_text(TASK.format(body=body))
    (cwd / "batch.sh").write_text(BATCH)
    job_id = sbatch(cwd / "batch.sh", cwd, "-N", "4", "-J", name, "-o", str(cwd / "slurm-%j.out"), *args)
    agent.submitted.append(job_id)
    return job_id


def where(cwd: Path, job_id: int, attempt: int, tasks: int) -> dict[int, str]:
    """Rank -> the node it ran on, as the tasks of an attempt wrote it."""
    path = cwd / f"where-{job_id}-{attempt}"
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == tasks, 60, f"the {tasks} tasks to start")
    return {int(rank): node for rank, node in (line.split() for line in path.read_text().splitlines())}


def nodes_of(job_id: int) -> set[str]:
    return set(expand_hostlist(scontrol_show(job_id)["NodeList"]))


def test_a_node_fault_from_rank_5_blames_its_node_alone_and_the_job_runs_on_the_others_and_a_spare(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = agent_factory()
    job_id = submit(agent, tmp_path, "ajr-rank5", XID_ON_RANK_5, "--ntasks-per-node=2",
                    "--comment", '{"APS": {"max_requeue_times": 2}}')  # fmt: skip
    ranks = where(tmp_path, job_id, 0, 8)
    faulty = ranks[5]
    first = set(ranks.values())
    job = wait_for(lambda: (j := agent.job(job_id)) and j["attempt"] == 1 and j, 90, "the next attempt")
    assert (job["excluded_nodes"], job["requeues_used"]) == (faulty, 1)
    shown = agent.show(job_id)
    assert shown is not None
    [verdict] = shown["verdicts"]
    assert verdict["nodes"] == [faulty], f"rank 5 ran on {faulty}; the healthy ranks' timeouts must blame no one"
    assert any("5: NVRM: Xid" in line for line in verdict["evidence"])
    assert scontrol_show(job_id)["ExcNodeList"] == faulty
    # The next attempt: the three healthy nodes and the spare, never the faulty one.
    again = set(where(tmp_path, job_id, 1, 8).values())
    assert again == set(NODES) - {faulty} and again - first == set(NODES) - first


def lost_under_a_job(agent: AgentProcess, tmp_path: Path, failing_nodes: list[str], *args: str) -> tuple[int, str]:
    """A 4-node job whose third node fails (not the batch host): the job and the node."""
    job_id = submit(agent, tmp_path, "ajr-lost", "", *args)
    ranks = where(tmp_path, job_id, 0, 4)
    lost = ranks[2]
    wait_for(lambda: (j := agent.job(job_id)) and j["attempt"] == 0, 30, "the agent to follow the job")
    failing_nodes.append(lost)
    fail_node(lost)
    return job_id, lost


def test_slurm_requeues_a_job_on_a_lost_node_and_ajr_brings_it_back_at_once_without_that_node(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path, failing_nodes: list[str]
) -> None:
    agent = agent_factory()
    job_id, lost = lost_under_a_job(agent, tmp_path, failing_nodes, "--comment", '{"APS": {"max_requeue_times": 3}}')
    job = wait_for(lambda: (j := agent.job(job_id)) and j["attempt"] == 1 and j, 180, "the next attempt")
    assert (job["excluded_nodes"], job["requeues_used"]) == (lost, 1)
    again = set(where(tmp_path, job_id, 1, 4).values())
    assert lost not in again and len(again) == 4
    shown = agent.show(job_id)
    assert shown is not None
    [verdict] = shown["verdicts"]
    assert (verdict["nodes"], verdict["basis"]) == ([lost], "slurm")
    assert any("Not responding" in line for line in verdict["evidence"])
    # Slurm requeued it: AJR ran no requeuehold (or had it refused), excluded the node, released it once.
    kinds = [(a["kind"], a["status"]) for a in shown["actions"] if a["kind"] != "annotate"]
    assert ("exclude", "done") in kinds and kinds.count(("release", "done")) == 1
    assert ("requeue_hold", "done") not in kinds
    # One failure, once: srun's "Node failure" line and slurmstepd's cancel are the same one.
    assert sum(e["kind"] == "failure" for e in shown["events"]) == 1
    # Within seconds of Slurm marking the node down, not after Slurm's ~120 s requeue wait.
    requeued = next(e["at"] for e in shown["events"] if e["text"].startswith("Slurm requeued attempt 0 itself")
                    or e["text"].startswith("Slurm had requeued the job itself"))  # fmt: skip
    started = next(e["at"] for e in shown["events"] if e["text"].startswith("attempt 1 started"))
    print(f"\nnode {lost} lost: AJR saw Slurm's requeue, the next attempt started {started - requeued:.1f} s later")
    assert started - requeued < 60


def test_a_job_slurm_may_not_requeue_ends_node_fail_with_the_lost_node_blamed(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path, failing_nodes: list[str]
) -> None:
    agent = agent_factory()
    job_id, lost = lost_under_a_job(agent, tmp_path, failing_nodes, "--no-requeue", "--comment", '{"APS": {}}')
    job = wait_for(lambda: (j := agent.job(job_id)) and j["phase"] == "stopped" and j["verdict"] and j, 120,
                   "the refusal and the verdict")  # fmt: skip
    # AJR may see the node lost (its step ended DUE TO NODE FAILURE) before slurmctld ends the job.
    wait_for(lambda: scontrol_show(job_id)["JobState"] == "NODE_FAIL", 60, "Slurm to end the job NODE_FAIL")
    assert job["stop_cause"] == StopCause.SLURM_REFUSED and "disabled" in job["stop_reason"]
    assert (job["verdict"], job["requeues_used"]) == ("node", 0)
    shown = agent.show(job_id)
    assert shown is not None
    [verdict] = shown["verdicts"]
    assert (verdict["nodes"], verdict["basis"]) == ([lost], "slurm")
    assert sum(e["kind"] == "failure" for e in shown["events"]) == 1
    assert subprocess.run(["sinfo", "-h", "-N", "-n", lost, "-o", "%T"], capture_output=True,
                          text=True).stdout.strip() == "down*"  # fmt: skip
