"""Recovery on the real Slurm where it is easy to get wrong: crashes, refusals, broken specs, restarts."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from ajr_agent.domain.model import Action, ActionKind, Phase
from ajr_agent.adapters.store import Store
from tests.conftest import wait_for
from tests.integration.support import AgentProcess, sbatch, scontrol_show

pytestmark = pytest.mark.slurm

SLEEPER = '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 2}}'


def submit_sleeper(agent: AgentProcess, cwd: Path, *args: str) -> int:
    script = cwd / "sleeper.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    job_id = sbatch(script, cwd, "-J", "ajr-sleeper", "--comment", SLEEPER, *args)
    agent.submitted.append(job_id)
    return job_id


def crash_between_decision_and_outcome(agent: AgentProcess, job_id: int) -> None:
    """Leave the store as an agent killed right after journaling a requeuehold would."""
    agent.stop(signal.SIGKILL)
    store = Store(agent.workdir / "ajr.db")
    job = store.job(job_id)
    assert job is not None and job.attempt == 0
    with store.transaction():
        store.save_job(replace(job, phase=Phase.HOLDING, handled_attempt=0, requeues_used=1))
        store.journal(Action(ActionKind.REQUEUE_HOLD, job_id, 0, "segfault (test)"), dry_run=False, now=job.last_seen)
    store.close()


@pytest.mark.parametrize("command_ran_before_crash", [False, True], ids=["crash-before-command", "crash-after-command"])
def test_open_requeue_is_finished_once_after_a_crash(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path, command_ran_before_crash: bool
) -> None:
    first = agent_factory(workdir=tmp_path / "agent")
    job_id = submit_sleeper(first, tmp_path)
    wait_for(lambda: (j := first.job(job_id)) and j["attempt"] == 0, 60, "the job to run under the agent")
    crash_between_decision_and_outcome(first, job_id)
    if command_ran_before_crash:
        subprocess.run(["scontrol", "requeuehold", str(job_id)], check=True)

    second = agent_factory(workdir=tmp_path / "agent")
    second.submitted.append(job_id)
    wait_for(lambda: (j := second.job(job_id)) and j["attempt"] == 1 and j["phase"] == "watching", 60,
             "the next attempt after reconciliation")  # fmt: skip
    assert scontrol_show(job_id)["Restarts"] == "1", "one failure must give exactly one requeue"
    shown = second.show(job_id)
    assert shown is not None
    actions = [(a["kind"], a["status"]) for a in shown["actions"] if a["kind"] != "annotate"]
    assert actions == [("requeue_hold", "done"), ("release", "done")]
    assert shown["job"]["requeues_used"] == 1
    assert "reconciling open requeue_hold" in second.log.read_text()


def test_job_slurm_will_not_requeue_is_recorded_with_slurms_reason(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = agent_factory()
    script = tmp_path / "fails.sh"
    script.write_text("#!/bin/bash\nsleep 2\nexit 3\n")
    job_id = sbatch(script, tmp_path, "--no-requeue", "-J", "ajr-norequeue", "--comment", '{"APS": {}}')
    agent.submitted.append(job_id)
    job = wait_for(lambda: (j := agent.job(job_id)) and j["phase"] == "stopped" and j, 60, "the refusal")
    assert "Slurm refused to requeue" in job["stop_reason"]
    assert "disabled" in job["stop_reason"]  # Slurm's own words: "Requested operation is presently disabled"
    assert job["requeues_used"] == 0
    shown = agent.show(job_id)
    assert shown is not None
    assert [(a["kind"], a["status"]) for a in shown["actions"]] == [("requeue_hold", "failed")]


def test_broken_spec_leaves_the_job_unmanaged_with_the_reason(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = agent_factory()
    script = tmp_path / "quick.sh"
    script.write_text("#!/bin/bash\nexit 1\n")
    bad = sbatch(script, tmp_path, "-J", "ajr-badspec", "--comment", '{"APS": {"auto_resume_mode": "restart"}}')
    good = sbatch(script, tmp_path, "-J", "ajr-goodspec", "--comment", '{"APS": {"max_requeue_times": 0}}')
    agent.submitted += [bad, good]
    shown = wait_for(lambda: agent.show(bad), 30, "the broken spec to be recorded")
    assert shown["managed"] is False and "auto_resume_mode" in shown["problem"]
    human = agent.cli("show", str(bad))
    assert "NOT managed" in human.stdout and "auto_resume_mode" in human.stdout
    # The agent went on with the other job: limit 0, so it is stopped, not requeued.
    job = wait_for(lambda: (j := agent.job(good)) and j["phase"] == "stopped" and j, 60, "the good job's failure")
    assert "requeue limit reached (0/0)" in job["stop_reason"]
    assert agent.process is not None and agent.process.poll() is None


def test_agent_restart_resumes_reading_without_rereading(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    first = agent_factory(workdir=tmp_path / "agent")
    script = tmp_path / "steps.sh"
    # Two checkpoints, a pause (the agent restarts here), a segfault, then the end.
    script.write_text(
        "#!/bin/bash\nlog=\"$PWD/${SLURM_JOB_NAME}_${SLURM_JOB_ID}_$(date +date_%y-%m-%d_time_%H-%M-%S).log\"\n"
        "echo 'Saved checkpoint to /ckpt/1' >> $log\necho 'Saved checkpoint to /ckpt/2' >> $log\n"
        "sleep 12\necho 'Rank0: (1) segmentation fault: artificial segfault' >> $log\nsleep 60\n"
    )
    job_id = sbatch(script, tmp_path, "-J", "ajr-restart", "--comment", '{"APS": {"max_requeue_times": 0}}')
    first.submitted.append(job_id)
    wait_for(lambda: (s := first.show(job_id)) and sum(e["kind"] == "checkpoint" for e in s["events"]) == 2, 30,
             "both checkpoints under the first agent")  # fmt: skip
    assert first.stop() == 0
    assert "ajr-agent stopped" in first.log.read_text()

    second = agent_factory(workdir=tmp_path / "agent")
    second.submitted.append(job_id)
    job = wait_for(lambda: (j := second.job(job_id)) and j["phase"] == "stopped" and j, 60, "the segfault")
    shown = second.show(job_id)
    assert shown is not None
    assert sum(e["kind"] == "checkpoint" for e in shown["events"]) == 2, "lines read before the restart were read again"
    assert sum(e["kind"] == "log" and e["text"].startswith("following") for e in shown["events"]) == 1
    assert "requeue limit reached (0/0)" in job["stop_reason"]
