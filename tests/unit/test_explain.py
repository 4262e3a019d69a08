"""`ajr explain`'s sentences for every case an operator meets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ajr_agent.views.explain import Facts, explain
from ajr_agent.domain.model import Attempt, ManagedJob, Outcome, Phase, StopCause, UnmanagedJob
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.spec import ResumeMode

LIVE = JobSnapshot(7, "RUNNING", 1000, "alice", 0, 1.0, None, True, True, "node-1", "None", "/runs", "/runs/o.out",
                   "train", '{"APS": {}}')  # fmt: skip
JOB = ManagedJob(job_id=7, name="train", user="alice", user_id=1000, mode=ResumeMode.REQUEUE, requested_limit=None,
                 limit=5, attempt=0, work_dir="/runs")  # fmt: skip


def facts(**changes: object) -> Facts:
    base = Facts(job_id=7, managed=JOB, unmanaged=None, live=LIVE, log_files=(), searched_dirs=(Path("/runs"),),
                 attempts=(), crashloop_threshold=3, agent_seen_recently=True)  # fmt: skip
    return replace(base, **changes)


def text(f: Facts) -> str:
    return "\n".join(explain(f))


def test_no_aps_spec() -> None:
    out = text(facts(managed=None, live=replace(LIVE, comment="nightly")))
    assert "NOT managed: its comment has no APS spec: nightly" in out and '--comment=\'{"APS"' in out


def test_invalid_spec_recorded_by_the_agent() -> None:
    refused = UnmanagedJob(7, "train", "alice", "{APS", "comment mentions APS but is not valid JSON", 1.0)
    assert "NOT managed: its APS spec is invalid: comment mentions APS but is not valid JSON" in text(
        facts(managed=None, unmanaged=refused))


def test_invalid_spec_not_yet_seen_by_the_agent() -> None:
    out = text(facts(managed=None, live=replace(LIVE, comment='{"APS": {"auto_resume_mode": "x"}}')))
    assert "NOT managed: auto_resume_mode" in out


def test_unknown_everywhere() -> None:
    assert "known neither to Slurm nor to AJR" in text(facts(managed=None, live=None))


def test_valid_spec_but_agent_silent() -> None:
    assert "is ajr-agent running" in text(facts(managed=None, agent_seen_recently=False))


def test_no_log_file_names_the_prefix_and_the_directories() -> None:
    out = text(facts())
    assert "no log file found: AJR looks for files named 'train_7_date_<yy-mm-dd>_time_<HH-MM-SS>.log'" in out
    assert "owned by alice, in: /runs" in out


def test_watching_says_what_a_failure_will_do() -> None:
    out = text(facts(log_files=("/runs/train_7_date_x.log",)))
    assert "log files followed: /runs/train_7_date_x.log" in out
    assert "on a failure AJR will requeue it (5 left)" in out


def test_limit_reached_while_watching() -> None:
    assert "will NOT requeue it: limit reached (5/5)" in text(facts(managed=replace(JOB, requeues_used=5)))


def test_site_cap_below_the_request_is_shown() -> None:
    assert "the job asked 99, the site allows fewer" in text(facts(managed=replace(JOB, requested_limit=99)))


def test_crash_looping_lists_the_attempts_that_prove_it() -> None:
    failed = [Attempt(7, n, float(n), float(n) + 1, Outcome.FAILED, "segfault (segfault)", None, None, "n")
              for n in range(4)]  # fmt: skip
    stopped = replace(JOB, phase=Phase.STOPPED, stop_cause=StopCause.CRASH_LOOP,
                      stop_reason="segfault; crash-looping: 3 failed attempts in a row")
    out = text(facts(managed=stopped, attempts=failed))
    assert "crash-looping" in out
    assert "job 7 attempt 1: segfault (segfault), no checkpoint" in out and "attempt 0" not in out


def test_waiting_for_release() -> None:
    out = text(facts(managed=replace(JOB, phase=Phase.HELD, handled_attempt=0)))
    assert "waiting for release: requeued held after the failure of attempt 0" in out


def test_released_and_waiting_for_slurm() -> None:
    out = text(facts(managed=replace(JOB, phase=Phase.RESTARTING), live=replace(LIVE, state="PENDING", reason="Priority")))
    assert "waiting for Slurm to start the next attempt (Slurm's reason: Priority)" in out


def test_singleton_phases() -> None:
    chain = replace(JOB, chain="train@7", successor=9)
    assert "release the next held job of its chain" in text(facts(managed=chain, log_files=("x",)))
    assert "job 9 carries the chain on" in text(facts(managed=replace(chain, phase=Phase.HANDED_OVER)))


def test_forgotten() -> None:
    out = text(facts(managed=replace(JOB, phase=Phase.FORGOTTEN, stop_reason="forgotten by root")))
    assert "forgotten: forgotten by root" in out
