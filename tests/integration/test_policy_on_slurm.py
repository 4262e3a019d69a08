"""The full recovery policy on the real Slurm: singleton chains, the AdminComment trail, operators."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import wait_for

from tests.integration.support import DEMO, AgentProcess, sbatch, scontrol_show

pytestmark = pytest.mark.slurm

TIMING = {"AJR_TEST_SLEEP_BEFORE": "3", "AJR_TEST_SLEEP_AFTER": "20"}


def admin_comment(job_id: int) -> str:
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("AdminComment="):
            return line.removeprefix("AdminComment=")
    return ""


def test_singleton_chain_releases_the_next_job(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent = agent_factory()
    args = ("-p", "defq", "-J", "AJR-verification-test-singleton")
    first = sbatch(DEMO / "singleton_test.sh", tmp_path, *args, env=TIMING)
    second = sbatch(DEMO / "singleton_test.sh", tmp_path, "--hold", *args, env=TIMING)
    agent.submitted += [first, second]

    handed = wait_for(lambda: (j := agent.job(first)) and j["phase"] == "handed_over" and j, 60, "the hand-over")
    assert handed["successor"] == second
    wait_for(lambda: scontrol_show(second)["JobState"] == "RUNNING", 60, "the second job to run")
    assert scontrol_show(first)["JobState"] in ("CANCELLED", "COMPLETING", "FAILED")
    shown = agent.show(first)
    assert shown is not None
    kinds = [(a["kind"], a["target"], a["status"]) for a in shown["actions"]]
    assert ("cancel", None, "done") in kinds and ("release", second, "done") in kinds
    assert f"releasing job {second} of the chain (1/50)" in admin_comment(first)
    # The chain's count went on with the second job; its attempts are those of the chain.
    nxt = wait_for(lambda: (j := agent.job(second)) and j["attempt"] == 0 and j, 30, "the second job's attempt")
    assert nxt["requeues_used"] == 1 and nxt["chain"] == handed["chain"]
    chain_attempts = agent.show(second)["attempts"]  # type: ignore[index]
    assert [a["job_id"] for a in chain_attempts] == [first, second]
    # The second fails too, with no held job left: the chain ends.
    ended = wait_for(lambda: (j := agent.job(second)) and j["phase"] == "finished" and j, 60, "the chain's end")
    assert "chain ended: no held job left" in ended["stop_reason"]


def test_decisions_are_written_into_the_admin_comment(agent_factory: Callable[..., AgentProcess],
                                                      tmp_path: Path) -> None:  # fmt: skip
    agent = agent_factory()
    job_id = sbatch(DEMO / "requeue_test.sh", tmp_path, "-J", "ajr-annotate", env=TIMING)
    agent.submitted.append(job_id)
    wait_for(lambda: "requeued after segfault" in admin_comment(job_id), 60, "the requeue's AdminComment")
    assert admin_comment(job_id).startswith("ajr: requeued after segfault (segfault) on ")
    assert admin_comment(job_id).endswith("(1/1)")
    wait_for(lambda: "not requeued" in admin_comment(job_id), 60, "the limit's AdminComment")
    assert "requeue limit reached (1/1)" in admin_comment(job_id)


def test_operators_requeue_and_forget(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent = agent_factory()
    script = tmp_path / "sleeper.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    job_id = sbatch(script, tmp_path, "-J", "ajr-operator", "--comment", '{"APS": {}}')
    agent.submitted.append(job_id)
    wait_for(lambda: (j := agent.job(job_id)) and j["attempt"] == 0, 60, "the job to run")

    done = agent.cli("requeue", str(job_id))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: scontrol_show(job_id)["Restarts"] == "1", 30, "Slurm's restart count after the requeue")
    shown = agent.show(job_id)
    assert shown is not None
    operator = [a for a in shown["actions"] if a["origin"].startswith("operator:")]
    assert [(a["kind"], a["status"], a["origin"]) for a in operator] == [("requeue", "done", "operator:root")]

    explained = agent.cli("explain", str(job_id))
    assert "is managed in requeue mode" in explained.stdout
    assert agent.cli("forget", str(job_id)).returncode == 0
    wait_for(lambda: (j := agent.job(job_id)) and j["phase"] == "forgotten", 30, "the agent to forget the job")
    assert "forgotten: forgotten by root" in agent.cli("explain", str(job_id)).stdout


def test_explain_a_job_without_spec_and_one_without_logs(agent_factory: Callable[..., AgentProcess],
                                                         tmp_path: Path) -> None:  # fmt: skip
    agent = agent_factory()
    script = tmp_path / "sleeper.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    plain = sbatch(script, tmp_path, "-J", "ajr-plain", "--comment", "nightly eval")
    managed = sbatch(script, tmp_path, "-J", "ajr-nologs", "--comment", '{"APS": {}}')
    agent.submitted += [plain, managed]
    out = agent.cli("explain", str(plain)).stdout
    assert "NOT managed: its comment has no APS spec: nightly eval" in out
    wait_for(lambda: (j := agent.job(managed)) and j["attempt"] == 0, 60, "the managed job to run")
    out = agent.cli("explain", str(managed)).stdout
    assert f"no log file found: AJR looks for files named 'ajr-nologs_{managed}_date_" in out
    assert str(tmp_path) in out
