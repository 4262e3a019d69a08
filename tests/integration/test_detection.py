"""Detection and attribution on the real Slurm: hangs, stragglers, and a faulty node kept out."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import wait_for

from tests.integration.support import NODES, AgentProcess, sbatch, scontrol_show, slurm_reconfigured

pytestmark = pytest.mark.slurm

LOGGING_JOB = """#!/bin/bash
log="$PWD/${SLURM_JOB_NAME}_${SLURM_JOB_ID}_$(date +date_%y-%m-%d_time_%H-%M-%S).log"
"""


def write_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "job.sh"
    script.write_text(LOGGING_JOB + body)
    return script


def test_silent_job_is_hung_and_recovered(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent = agent_factory(extra_config="hang_startup_grace = 0\n")
    script = write_script(tmp_path, "echo 'iteration 1' >> $log\nsleep 300\n")
    spec = '{"APS": {"max_requeue_times": 1, "heartbeat_timeout": 8}}'
    job_id = sbatch(script, tmp_path, "-J", "ajr-hang", "--comment", spec)
    agent.submitted.append(job_id)
    job = wait_for(lambda: (j := agent.job(job_id)) and j["requeues_used"] == 1 and j, 60, "the hang's requeue")
    assert job["last_anomaly"] == "hang (heartbeat)"
    shown = agent.show(job_id)
    assert shown is not None
    failure = next(e for e in shown["events"] if e["kind"] == "failure")
    assert "hang (heartbeat)" in failure["text"] and "no log line for" in failure["line"]
    wait_for(lambda: scontrol_show(job_id)["Restarts"] == "1", 30, "Slurm's restart count")


def test_a_job_still_pending_is_never_hung(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent = agent_factory(extra_config="hang_startup_grace = 0\nheartbeat_timeout = 2\n")
    script = write_script(tmp_path, "sleep 300\n")
    job_id = sbatch(script, tmp_path, "--hold", "-J", "ajr-pending", "--comment", '{"APS": {}}')
    agent.submitted.append(job_id)
    wait_for(lambda: agent.job(job_id), 30, "the job to be managed")
    subprocess.run(["sleep", "6"], check=True)
    job = agent.job(job_id)
    assert job is not None and job["requeues_used"] == 0 and job["last_anomaly"] is None


def test_throughput_drop_is_a_recorded_straggler(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent = agent_factory(extra_config="straggler_reports = 3\n")
    reports = [402.1, 401.0, 399.5, 403.2, 400.8, 210.0, 205.5, 199.9]
    body = "".join(f"echo ' iteration {i} | throughput per GPU (TFLOP/s/GPU): {v}' >> $log\n" for i, v in enumerate(reports))
    job_id = sbatch(write_script(tmp_path, body + "sleep 300\n"), tmp_path, "-J", "ajr-straggler", "--comment",
                    '{"APS": {}}')  # fmt: skip
    agent.submitted.append(job_id)
    job = wait_for(lambda: (j := agent.job(job_id)) and j["straggler_reported"] and j, 60, "the straggler")
    assert job["requeues_used"] == 0 and job["phase"] == "watching"  # recorded, not acted on
    shown = agent.show(job_id)
    assert shown is not None
    assert [t["value"] for t in shown["throughput"]] == reports
    assert any(e["kind"] == "straggler" and "baseline 401 TFLOP/s for 3 reports (210, 205.5, 199.9)" in e["text"] for e in shown["events"])
    human = agent.cli("show", str(job_id)).stdout
    assert "attempt 0: 8 reports, median 400.15, min 199.9, max 403.2" in human


@pytest.fixture(scope="module")
def two_node_partition(slurm: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A partition of one node of the cluster and a node that never comes up: room to exclude the real one."""
    host = NODES[-1]
    lines = f"NodeName=ajrghost1 CPUs=1 State=FUTURE\nPartitionName=ajrpair Nodes={host},ajrghost1 MaxTime=INFINITE State=UP OverSubscribe=FORCE:4\n"
    with slurm_reconfigured(lines, tmp_path_factory.mktemp("pair")):
        yield host


def test_node_verdict_keeps_the_faulty_node_out(two_node_partition: str, agent_factory: Callable[..., AgentProcess],
                                                tmp_path: Path) -> None:  # fmt: skip
    host = two_node_partition
    node_logs = tmp_path / "syslog"
    (node_logs / host).mkdir(parents=True)
    # Draining is on, but the site keeps every node of the cluster in service (ajrghost1 never
    # comes up, and sinfo does not count a FUTURE node out of service).
    agent = agent_factory(extra_config=f'node_log_dir = "{node_logs}/{{node}}"\ndrain_faulty_nodes = true\n'
                                       f"drain_keep_nodes = {len(NODES)}\n")
    body = ("echo 'step 1' >> $log\nsleep 3\n"
            "echo '[rank0]:[E ProcessGroupNCCL.cpp:563] [Rank 0] Watchdog caught collective operation timeout: "
            "WorkNCCL(SeqNum=9, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600004 "
            "milliseconds before timing out.' >> $log\nsleep 300\n")  # fmt: skip
    job_id = sbatch(write_script(tmp_path, body), tmp_path, "-p", "ajrpair", "-J", "ajr-xid", "--comment",
                    '{"APS": {"max_requeue_times": 2}}')  # fmt: skip
    agent.submitted.append(job_id)
    wait_for(lambda: (j := agent.job(job_id)) and j["attempt"] == 0, 60, "the job to run")
    stamp = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    (node_logs / host / "kern.log").write_text(
        f"{stamp} {host} kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, GPU has fallen off the bus.\n")

    job = wait_for(lambda: (j := agent.job(job_id)) and j["excluded_nodes"] == host and j, 60, "the exclusion")
    assert job["verdict"] == "node"
    assert scontrol_show(job_id)["ExcNodeList"] == host
    shown = agent.show(job_id)
    assert shown is not None
    [verdict] = shown["verdicts"]
    assert verdict["fault"] == "node" and verdict["nodes"] == [host]
    assert any("GPU has fallen off the bus" in line for line in verdict["evidence"])
    kinds = [a["kind"] for a in shown["actions"] if a["kind"] != "annotate"]
    assert kinds == ["requeue_hold", "exclude", "release"]
    # The only other node never comes up: the job waits rather than run on the faulty one.
    assert scontrol_show(job_id)["JobState"] == "PENDING"
    assert any(e["text"].startswith(f"not drained: {host}: one of the last nodes in service in partition")
               for e in shown["events"])  # fmt: skip
    assert "drain" not in kinds
    node_state = subprocess.run(["sinfo", "-h", "-n", host, "-o", "%T"], capture_output=True, text=True).stdout
    assert "drain" not in node_state
