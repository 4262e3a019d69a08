"""The requeue verification case on the real local Slurm, with a real agent process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import wait_for

from tests.integration.support import DEMO, AgentProcess, sbatch, scontrol_show

pytestmark = pytest.mark.slurm

# The step logs the segfault a few seconds in, then would live on for a while: the
# agent must requeue it before it exits on its own.
TIMING = {"AJR_TEST_SLEEP_BEFORE": "3", "AJR_TEST_SLEEP_AFTER": "15"}


def submit_verification_job(agent: AgentProcess, cwd: Path) -> int:
    job_id = sbatch(DEMO / "requeue_test.sh", cwd, "-p", "defq", "-J", "AJR-verification-test", env=TIMING)
    agent.submitted.append(job_id)
    return job_id


def kinds(shown: dict) -> list[str]:
    return [event["kind"] for event in shown["events"]]


def test_failed_job_is_requeued_once_then_stops_at_its_limit(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = agent_factory()
    job_id = submit_verification_job(agent, tmp_path)

    first = wait_for(lambda: (j := agent.job(job_id)) and j["requeues_used"] == 1 and j, 60, "the first requeue")
    assert first["limit"] == 1
    wait_for(lambda: (j := agent.job(job_id)) and j["attempt"] == 1, 60, "the second attempt")
    assert scontrol_show(job_id)["Restarts"] == "1"
    stopped = wait_for(lambda: (j := agent.job(job_id)) and j["phase"] == "stopped" and j, 60, "the stop at the limit")
    assert "requeue limit reached (1/1)" in stopped["stop_reason"]
    wait_for(lambda: scontrol_show(job_id)["JobState"] == "FAILED", 60, "the job to end failed")
    assert scontrol_show(job_id)["Restarts"] == "1"

    shown = agent.show(job_id)
    assert shown is not None
    # Both attempts' stories: seen, requeued, released, restarted, seen again, stopped.
    texts = [e["text"] for e in shown["events"]]
    failures = [e for e in shown["events"] if e["kind"] == "failure"]
    assert len(failures) == 1 and failures[0]["attempt"] == 0
    assert "segmentation fault" in failures[0]["line"]
    assert any("requeued held (1/1)" in t for t in texts)
    assert any(t.startswith("released") for t in texts)
    assert any(t.startswith("attempt 1 started") for t in texts)
    refusals = [e for e in shown["events"] if e["kind"] == "not_requeued"]
    assert len(refusals) == 1 and refusals[0]["attempt"] == 1
    # Exactly one requeuehold and one release, both done, none in dry run; the decision
    # trail went into the AdminComment after the requeue and at the stop.
    actions = [(a["kind"], a["status"], a["dry_run"]) for a in shown["actions"]]
    assert [a for a in actions if a[0] != "annotate"] == [("requeue_hold", "done", False), ("release", "done", False)]
    assert [a for a in actions if a[0] == "annotate"] == [("annotate", "done", False)] * 2
    # The cancel line Slurm wrote when the agent requeued, and the job's own exit, were no new failures.
    assert kinds(shown).count("failure") == 1
    assert len(shown["log_files"]) == 2

    # The restart did not wait out Slurm's ~120 s requeue delay.
    started = [e["at"] for e in shown["events"] if e["text"].startswith("attempt 1 started")][0]
    released = [e["at"] for e in shown["events"] if e["text"].startswith("released")][0]
    assert started - released < 60

    human = agent.cli("show", str(job_id))
    assert human.returncode == 0
    assert "requeue limit reached (1/1)" in human.stdout
    status = agent.cli("status")
    backend = os.environ.get("AJR_TEST_SLURM_BACKEND") or "commands"  # test.sh runs it through each
    assert str(job_id) in status.stdout and "1/1" in status.stdout and f"backend {backend}" in status.stdout


def test_dry_run_records_would_be_actions_and_changes_nothing(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = agent_factory(dry_run=True)
    assert "DRY_RUN mode is active" in agent.log.read_text()
    job_id = submit_verification_job(agent, tmp_path)

    wait_for(lambda: (j := agent.job(job_id)) and j["requeues_used"] == 1, 60, "the would-be requeue")
    wait_for(lambda: scontrol_show(job_id)["JobState"] == "FAILED", 60, "the job to end failed, untouched")
    fields = scontrol_show(job_id)
    assert fields["Restarts"] == "0"
    shown = agent.show(job_id)
    assert shown is not None
    actions = [(a["kind"], a["status"], a["dry_run"]) for a in shown["actions"]]
    # As in a real run: the requeue's AdminComment comes with the hold, the release once the verdict is in.
    assert actions == [("requeue_hold", "dry_run", True), ("annotate", "dry_run", True), ("release", "dry_run", True)]
    assert "AdminComment=ajr" not in subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True,
                                                    text=True).stdout  # fmt: skip
    assert any(e["text"].startswith("dry run: would have requeued held") for e in shown["events"])
