"""A checkpoint save begun is not a save: only a completed one counts for restart success and
efficiency, and a save that started and never completed before the attempt failed is a failed
save in the job's story. Through the agent, with real files and site rules, and the policy alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.domain import efficiency, policy
from ajr_agent.domain.events import CheckpointFailed
from ajr_agent.domain.model import ManagedJob, NoteKind, Outcome, Phase
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.runtime.agent import Agent
from ajr_agent.views import queries
from tests.unit.support import LOG_NAME, running, site_agent

SITE_RULES = """
[[rule]]
name = "snapshot_begin"
kind = "checkpoint"
stage = "started"
pattern = 'ckpt-writer: writing snapshot'

[[rule]]
name = "snapshot_durable"
kind = "checkpoint"
pattern = 'ckpt-writer: snapshot \\S+ durable'
"""
START = "2026-01-01 00:10:00 ckpt-writer: writing snapshot step-100"
DONE = "2026-01-01 00:10:30 ckpt-writer: snapshot step-100 durable"
SEGFAULT = "Rank0: (1) segmentation fault: artificial segfault"


@pytest.fixture
def staged(tmp_path: Path, queue: MemorySlurm) -> Agent:
    """An agent whose site rules tell a save's start from its completion."""
    return site_agent(tmp_path, queue, SITE_RULES)


def run_log(agent: Agent, queue: MemorySlurm, tmp_path: Path, *lines: str) -> None:
    """Job 7 running; each of `lines` written and read 10 s after the one before, then a poll and a
    read (the loop's next steps)."""
    queue.jobs[7] = running(tmp_path)
    (tmp_path / LOG_NAME).write_text("step 1\n")
    agent.poll(200.0)
    for n, line in enumerate(lines, start=1):
        with (tmp_path / LOG_NAME).open("a") as handle:
            handle.write(f"{line}\n")
        agent.read_logs(200.0 + 10 * n)
    agent.poll(201.0 + 10 * len(lines))
    agent.read_logs(202.0 + 10 * len(lines))


def kinds(agent: Agent) -> list[str]:
    return [e.kind for e in agent.store.events(7)]


def test_the_site_rules_lines_match_no_shipped_rule_but_theirs(staged: Agent) -> None:
    assert [m.rule.name for m in staged.rules.match(START)] == ["snapshot_begin"]
    assert [m.rule.name for m in staged.rules.match(DONE)] == ["snapshot_durable"]


def test_a_started_save_alone_is_not_saved(staged: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    run_log(staged, queue, tmp_path, START)
    job = staged.jobs[7]
    assert job.attempt_first_checkpoint is None and job.last_checkpoint is None and not job.attempt_succeeded
    assert NoteKind.CHECKPOINT not in kinds(staged) and NoteKind.CHECKPOINT_FAILED not in kinds(staged)


def test_a_completed_save_counts_and_fails_nothing(staged: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    run_log(staged, queue, tmp_path, START, DONE, SEGFAULT)
    job = staged.jobs[7]
    assert job.attempt_first_checkpoint is not None and job.attempt_succeeded
    assert NoteKind.CHECKPOINT_FAILED not in kinds(staged)


def test_a_start_then_a_failure_line_is_a_failed_save(staged: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    run_log(staged, queue, tmp_path, DONE, START, SEGFAULT)
    job = staged.jobs[7]
    assert job.handled_attempt == 0
    # Saved once (the first completed save), not by the start that came after it.
    assert job.attempt_first_checkpoint == job.attempt_last_checkpoint
    (failed,) = [e for e in staged.store.events(7) if e.kind == NoteKind.CHECKPOINT_FAILED]
    assert failed.attempt == 0 and failed.line == START and failed.path == str(tmp_path / LOG_NAME)
    assert "snapshot_begin" in failed.text and "not counted as saved" in failed.text
    detail = queries.job_detail(staged.store, 7, 300.0)
    assert detail.attempts[0].failed_checkpoints == [failed.at] and len(detail.attempts[0].checkpoints) == 1


def test_a_start_then_the_job_ending_failed_is_a_failed_save(staged: Agent, queue: MemorySlurm,
                                                             tmp_path: Path) -> None:  # fmt: skip
    run_log(staged, queue, tmp_path, START)
    queue.jobs[7] = running(tmp_path, state="FAILED", end_time=250.0)
    staged.poll(251.0)
    staged.read_logs(251.5)
    staged.poll(252.0)
    staged.read_logs(252.5)
    assert kinds(staged).count(NoteKind.CHECKPOINT_FAILED) == 1


def test_a_completion_read_after_the_failure_line_still_counts(staged: Agent, queue: MemorySlurm,
                                                               tmp_path: Path) -> None:  # fmt: skip
    # Rank 0 finishes writing while another rank crashes: the save is there to restart from.
    run_log(staged, queue, tmp_path, START, f"{SEGFAULT}\n{DONE}")
    assert NoteKind.CHECKPOINT_FAILED not in kinds(staged)
    assert staged.jobs[7].attempt_last_checkpoint is not None


def test_the_policy_records_a_failed_save_and_changes_nothing_else() -> None:
    job = ManagedJob(job_id=7, name="train", user="alice", user_id=1000, mode=ResumeMode.REQUEUE,
                     requested_limit=None, limit=3, attempt=1, attempt_started=1000.0, handled_attempt=1,
                     phase=Phase.HOLDING, attempt_outcome=Outcome.FAILED)  # fmt: skip
    event = CheckpointFailed(7, 1, 1090.0, "snapshot_begin", "/runs/x.log", START)
    decision = policy.decide(job, event, Settings())
    assert decision.job == job and decision.actions == ()
    (note,) = decision.notes
    assert note.kind is NoteKind.CHECKPOINT_FAILED
    assert "did not complete before attempt 1 failed" in note.text
    # Of an earlier attempt: told all the same, it is that attempt's story.
    assert policy.decide(job, CheckpointFailed(7, 0, 900.0, "r", "/p", "l"), Settings()).notes


def test_a_failed_save_leaves_the_work_since_the_last_completed_one_lost(staged: Agent, queue: MemorySlurm,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    run_log(staged, queue, tmp_path, DONE, START, SEGFAULT)  # read at 210, 220, 230
    (attempt,) = staged.store.attempts([7])
    assert attempt.last_checkpoint == 210.0 and attempt.outcome is Outcome.FAILED
    figures = efficiency.of_attempts([attempt], now=300.0)
    assert figures.productive == pytest.approx(210.0 - attempt.started)
    assert figures.lost_unsaved == pytest.approx((attempt.ended or 300.0) - 210.0)
