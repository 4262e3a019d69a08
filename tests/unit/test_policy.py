"""The recovery policy over plain data: every phase meets every kind of event."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ajr_agent.domain import adoption
from ajr_agent.domain import policy
from ajr_agent.domain import recovery
from ajr_agent.domain.events import (
    ActionDone,
    ActionFailed,
    AnomalyFound,
    Attributed,
    AttemptStarted,
    AttemptSucceeded,
    CheckpointSaved,
    JobEnded,
    JobHeld,
    JobVanished,
    StragglerFound,
    VerdictOverdue,
    NodeFacts,
)
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import (
    Awaiting,
    Basis,
    StopCause,
    Action,
    ActionKind,
    Decision,
    ManagedJob,
    Outcome,
    Phase,
    Verdict,
    Fault,
)
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ApsSpec, ResumeMode

# AdminComment actions are covered by their own tests; elsewhere they would only add noise.
SETTINGS = Settings(site_requeue_cap=50, crashloop_threshold=3, annotate_jobs=False)


def snapshot(**changes: object) -> JobSnapshot:
    base = JobSnapshot(
        job_id=7, state="RUNNING", user_id=1000, user="alice", restart_count=0, start_time=1000.0, end_time=None,
        batch=True, requeueable=True, nodes="node-1", reason="None", work_dir="/home/alice/run",
        stdout="/home/alice/run/out/slurm-%j.out", name="train", comment='{"APS": {}}',
    )  # fmt: skip
    return replace(base, **changes)


def adopt(snap: JobSnapshot | None = None, spec: ApsSpec | None = None, settings: Settings = SETTINGS,
          watching_since: float = 0.0) -> ManagedJob:  # fmt: skip
    return adoption.adopt(snap or snapshot(), spec or ApsSpec(), settings, 1000.0, watching_since).job


def running_job(limit: int | None = 2, **changes: object) -> ManagedJob:
    job = adopt(spec=ApsSpec(max_requeue_times=limit))
    job = policy.decide(job, AttemptStarted(7, 0, 1000.0, "node-1"), SETTINGS).job
    return replace(job, **changes)


def anomaly(attempt: int = 0, at: float = 1010.0) -> AnomalyFound:
    return AnomalyFound(7, attempt, at, "segfault", "segfault", Fault.APPLICATION, "/x/train_7_date_1.log",
                        "Rank0: (1) segmentation fault: artificial segfault")  # fmt: skip


def test_effective_limit_is_the_smaller_of_job_and_site() -> None:
    site = Settings(site_requeue_cap=5)
    assert adoption.effective_limit(ApsSpec(max_requeue_times=10), site) == 5
    assert adoption.effective_limit(ApsSpec(max_requeue_times=2), site) == 2
    assert adoption.effective_limit(ApsSpec(), site) == 5
    assert adoption.effective_limit(ApsSpec(max_requeue_times=0), site) == 0


def test_new_job_stdout_directory_is_expanded() -> None:
    job = adopt()
    assert job.stdout_dir == "/home/alice/run/out"
    assert job.limit == 50 and job.requested_limit is None and job.mode is ResumeMode.REQUEUE


def test_observe_reports_start_then_end_once() -> None:
    job = adopt()
    job, events = adoption.observe(job, snapshot(), 1001.0, SETTINGS)
    assert events == [AttemptStarted(7, 0, 1000.0, "node-1")]
    job = policy.decide(job, events[0], SETTINGS).job
    _, events = adoption.observe(job, snapshot(), 1002.0, SETTINGS)
    assert events == []
    ended = snapshot(state="FAILED", end_time=1050.0)
    job, events = adoption.observe(job, ended, 1051.0, SETTINGS)
    assert events == [JobEnded(7, 0, 1050.0, "FAILED", "None")]
    job = policy.decide(job, events[0], SETTINGS).job
    _, events = adoption.observe(job, ended, 1052.0, SETTINGS)
    assert events == []


def test_observe_short_job_seen_only_after_it_ended_gives_start_and_end() -> None:
    job = adopt()
    _, events = adoption.observe(job, snapshot(state="FAILED", end_time=1003.0), 1004.0, SETTINGS)
    assert [type(e) for e in events] == [AttemptStarted, JobEnded]


def test_observe_pending_job_gives_no_event() -> None:
    job = adopt()
    _, events = adoption.observe(job, snapshot(state="PENDING", start_time=None), 2.0, SETTINGS)
    assert events == []


def test_anomaly_requeues_held_and_counts_the_requeue() -> None:
    decision = policy.decide(running_job(), anomaly(), SETTINGS)
    assert decision.job.phase is Phase.HOLDING
    assert decision.job.requeues_used == 1
    assert decision.job.handled_attempt == 0
    assert decision.actions == (Action(ActionKind.REQUEUE_HOLD, 7, 0, decision.actions[0].reason),)
    assert "segfault" in decision.actions[0].reason
    assert "(1/2)" in decision.notes[0].text


def app_verdict(attempt: int = 0) -> Attributed:
    return Attributed(7, attempt, 1010.5, Verdict(Fault.APPLICATION, (), "segfault (segfault)", ("l",)))


def none_lost(attempt: int = 0) -> Attributed:
    """Slurm's states of the failed attempt's nodes read again: none lost."""
    return Attributed(7, attempt, 1012.5, Verdict(Fault.UNKNOWN, (), "no anomaly line", ()))


def lost_since(attempt: int = 0) -> Attributed:
    """Slurm's states of the failed attempt's nodes read again: Slurm has lost node-1 since the failure."""
    found = Verdict(Fault.NODE, ("node-1",), "node lost (Slurm: Not responding)",
                    ("slurm: node-1 down, not responding: Not responding",), Basis.SLURM)  # fmt: skip
    return Attributed(7, attempt, 1012.5, found, exclude=("node-1",))


def hold_then_release(job: ManagedJob) -> tuple[Decision, Decision]:
    """Failure, verdict in, requeuehold done, Slurm shows the job pending, its nodes looked at again:
    the release decision."""
    holding = policy.decide(job, anomaly(), SETTINGS)
    attributed = policy.decide(holding.job, app_verdict(), SETTINGS)
    assert attributed.actions == () and attributed.job.awaiting is None
    held = policy.decide(attributed.job, ActionDone(holding.actions[0], 1011.0), SETTINGS)
    assert held.actions == () and held.job.phase is Phase.HELD
    pending = policy.decide(held.job, JobHeld(7, 1, 1012.0), SETTINGS)
    assert pending.actions == () and pending.job.awaiting is Awaiting.NODE_STATES
    return holding, policy.decide(pending.job, none_lost(), SETTINGS)


def test_a_node_slurm_lost_since_the_verdict_takes_it_and_is_kept_out() -> None:
    holding = policy.decide(running_job(), anomaly(), SETTINGS)
    attributed = policy.decide(holding.job, app_verdict(), SETTINGS)
    held = policy.decide(attributed.job, ActionDone(holding.actions[0], 1011.0), SETTINGS)
    pending = policy.decide(held.job, JobHeld(7, 1, 1012.0), SETTINGS)
    looked = policy.decide(pending.job, lost_since(), SETTINGS)
    assert [(a.kind, a.nodes) for a in looked.actions] == [(ActionKind.EXCLUDE, "node-1")]
    assert (looked.job.verdict, looked.job.awaiting, looked.verdict) == (Fault.NODE, None, lost_since().verdict)
    assert "Slurm has lost node-1 of the failed attempt since the verdict (application)" in looked.notes[0].text


def test_a_look_that_finds_no_node_lost_keeps_the_verdict_on_record() -> None:
    released = hold_then_release(running_job())[1]
    assert released.verdict is None and released.job.verdict == Fault.APPLICATION


def test_a_look_at_the_nodes_that_does_not_come_releases_all_the_same() -> None:
    holding = policy.decide(running_job(), anomaly(), SETTINGS)
    attributed = policy.decide(holding.job, app_verdict(), SETTINGS)
    held = policy.decide(attributed.job, ActionDone(holding.actions[0], 1011.0), SETTINGS)
    pending = policy.decide(held.job, JobHeld(7, 1, 1012.0), SETTINGS)
    overdue = policy.decide(pending.job, VerdictOverdue(7, 0, 1030.0, 17.0), SETTINGS)
    assert [a.kind for a in overdue.actions] == [ActionKind.RELEASE] and overdue.job.awaiting is None
    assert "node states did not come within 17 s" in overdue.notes[0].text


def test_a_handled_failure_that_slurm_ends_node_fail_looks_at_the_nodes_again() -> None:
    holding = policy.decide(running_job(), anomaly(), SETTINGS)
    refused = policy.decide(holding.job, ActionFailed(holding.actions[0], 1011.0, "presently disabled"), SETTINGS)
    judged = policy.decide(refused.job, app_verdict(), SETTINGS).job
    ended = policy.decide(judged, JobEnded(7, 0, 1020.0, "NODE_FAIL"), SETTINGS)
    assert ended.actions == () and ended.job.awaiting is Awaiting.NODE_STATES
    looked = policy.decide(ended.job, lost_since(), SETTINGS)
    assert (looked.job.phase, looked.job.verdict, looked.actions) == (Phase.STOPPED, Fault.NODE, ())


def test_held_job_is_released_only_once_slurm_shows_it_pending() -> None:
    holding = policy.decide(running_job(), anomaly(), SETTINGS)
    held = policy.decide(holding.job, ActionDone(holding.actions[0], 1011.0), SETTINGS).job
    completing = snapshot(state="COMPLETING", restart_count=1)
    assert adoption.observe(held, completing, 1012.0, SETTINGS)[1] == []
    pending = snapshot(state="PENDING", restart_count=1, start_time=None, reason="JobHeldAdmin")
    assert adoption.observe(held, pending, 1013.0, SETTINGS)[1] == [JobHeld(7, 1, 1013.0)]
    # A job that is not held by AJR gives no such event.
    assert not any(isinstance(e, JobHeld) for e in adoption.observe(running_job(), pending, 1013.0, SETTINGS)[1])


def test_hold_done_releases_and_release_done_waits_for_next_attempt() -> None:
    _, releasing = hold_then_release(running_job())
    assert releasing.job.phase is Phase.RELEASING
    assert [a.kind for a in releasing.actions] == [ActionKind.RELEASE]
    restarting = policy.decide(releasing.job, ActionDone(releasing.actions[0], 1012.0), SETTINGS)
    assert restarting.job.phase is Phase.RESTARTING and restarting.actions == ()
    watching = policy.decide(restarting.job, AttemptStarted(7, 1, 1015.0, "node-2"), SETTINGS)
    assert watching.job.phase is Phase.WATCHING
    assert watching.job.attempt == 1 and watching.job.nodes == "node-2"


def test_one_failure_gives_one_requeue() -> None:
    """The segfault line, the cancel line Slurm writes, then the non-zero exit: one requeue."""
    held = policy.decide(running_job(), anomaly(), SETTINGS)
    again = policy.decide(held.job, anomaly(at=1011.0), SETTINGS)
    assert again.actions == () and again.job.requeues_used == 1
    ended = policy.decide(again.job, JobEnded(7, 0, 1012.0, "FAILED"), SETTINGS)
    assert ended.actions == () and ended.job.requeues_used == 1


def test_two_anomalies_in_one_second_give_one_requeue() -> None:
    first = policy.decide(running_job(), anomaly(at=1010.0), SETTINGS)
    second = policy.decide(first.job, replace(anomaly(at=1010.0), rule="nccl_error", category="nccl"), SETTINGS)
    assert len(first.actions) == 1 and second.actions == ()


def test_failed_end_without_log_line_requeues() -> None:
    decision = policy.decide(running_job(), JobEnded(7, 0, 1020.0, "NODE_FAIL"), SETTINGS)
    assert [a.kind for a in decision.actions] == [ActionKind.REQUEUE_HOLD]
    assert "NODE_FAIL" in decision.actions[0].reason


@pytest.mark.parametrize("state", ["FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"])
def test_every_failed_end_state_requeues(state: str) -> None:
    assert policy.decide(running_job(), JobEnded(7, 0, 1020.0, state), SETTINGS).actions


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELLED"])
def test_success_and_user_cancel_are_left_alone(state: str) -> None:
    decision = policy.decide(running_job(), JobEnded(7, 0, 1020.0, state), SETTINGS)
    assert decision.actions == () and decision.job.phase is Phase.FINISHED


@pytest.mark.parametrize("state", ["PREEMPTED", "SPECIAL_EXIT", "REVOKED"])
def test_slurm_driven_ends_are_left_to_slurm(state: str) -> None:
    decision = policy.decide(running_job(), JobEnded(7, 0, 1020.0, state), SETTINGS)
    assert decision.actions == () and decision.job.phase is Phase.WATCHING


def test_limit_reached_stops_and_says_so() -> None:
    job = running_job(limit=1, requeues_used=1, attempt=1)
    decision = policy.decide(job, anomaly(attempt=1), SETTINGS)
    assert decision.actions == ()
    assert decision.job.phase is Phase.STOPPED
    assert "limit reached (1/1)" in (decision.job.stop_reason or "")
    # The job's own exit afterwards is the same failure.
    assert policy.decide(decision.job, JobEnded(7, 1, 1030.0, "FAILED"), SETTINGS).actions == ()


def test_site_cap_is_shown_beside_the_job_request() -> None:
    decision = adoption.adopt(snapshot(), ApsSpec(max_requeue_times=99), Settings(site_requeue_cap=3), 1.0, 0.0)
    assert "requeue limit 3 (job asked 99, site cap 3)" in decision.notes[0].text


def test_job_that_ended_before_ajr_watched_is_recorded_not_recovered() -> None:
    old = snapshot(state="FAILED", end_time=900.0)
    job = adopt(old, watching_since=950.0)
    assert job.phase is Phase.FINISHED
    _, events = adoption.observe(job, old, 1000.0, SETTINGS)
    assert events == []


def test_job_that_ended_while_a_restarted_agent_was_down_is_recovered() -> None:
    failed = snapshot(state="FAILED", end_time=900.0)
    job = adopt(failed, watching_since=100.0)
    job, events = adoption.observe(job, failed, 1000.0, SETTINGS)
    for event in events:
        decision = policy.decide(job, event, SETTINGS)
        job = decision.job
    assert job.phase is Phase.HOLDING


def test_limit_zero_never_requeues() -> None:
    decision = policy.decide(running_job(limit=0), anomaly(), SETTINGS)
    assert decision.actions == () and decision.job.phase is Phase.STOPPED


def test_site_cap_bounds_the_job_limit() -> None:
    job = adopt(spec=ApsSpec(max_requeue_times=99), settings=Settings(site_requeue_cap=3, annotate_jobs=False))
    assert job.limit == 3 and job.requested_limit == 99


def test_failure_line_from_an_earlier_attempt_is_ignored() -> None:
    job = running_job(attempt=2)
    decision = policy.decide(job, anomaly(attempt=1), SETTINGS)
    assert decision.actions == () and decision.notes[0].kind == "ignored"


def test_failure_line_after_the_job_completed_changes_nothing() -> None:
    done = policy.decide(running_job(), JobEnded(7, 0, 1020.0, "COMPLETED"), SETTINGS).job
    decision = policy.decide(done, anomaly(at=1021.0), SETTINGS)
    assert decision.actions == () and decision.job.phase is Phase.FINISHED


def test_failure_line_read_after_a_failed_end_is_the_same_failure() -> None:
    ended = policy.decide(running_job(), JobEnded(7, 0, 1020.0, "FAILED"), SETTINGS)
    late = policy.decide(ended.job, anomaly(at=1021.0), SETTINGS)
    assert len(ended.actions) == 1 and late.actions == ()


def test_user_cancels_while_held() -> None:
    releasing = hold_then_release(running_job())[1].job
    cancelled = policy.decide(releasing, JobEnded(7, 0, 1012.0, "CANCELLED"), SETTINGS)
    assert cancelled.actions == ()
    assert cancelled.job.phase is Phase.FINISHED
    assert "while AJR was recovering it" in cancelled.notes[0].text
    # The release that was already on its way then fails: recorded, nothing more.
    late = policy.decide(cancelled.job, ActionFailed(Action(ActionKind.RELEASE, 7, 0, "r"), 1013.0, "gone"), SETTINGS)
    assert late.job.phase is Phase.FINISHED and late.actions == ()


def test_requeue_by_someone_else_is_a_new_attempt_not_ours() -> None:
    job = running_job()
    decision = policy.decide(job, AttemptStarted(7, 1, 1100.0, "node-3"), SETTINGS)
    assert decision.job.attempt == 1 and decision.job.requeues_used == 0
    assert decision.job.phase is Phase.WATCHING


def test_slurm_refusal_stops_and_gives_the_requeue_back() -> None:
    held = policy.decide(running_job(), anomaly(), SETTINGS)
    refused = policy.decide(held.job, ActionFailed(held.actions[0], 1011.0, "Requested operation is presently disabled"), SETTINGS)
    assert refused.job.phase is Phase.STOPPED
    assert refused.job.requeues_used == 0
    assert "presently disabled" in (refused.job.stop_reason or "")


def test_failed_release_stops_and_tells_how_to_release() -> None:
    releasing = hold_then_release(running_job())[1]
    failed = policy.decide(releasing.job, ActionFailed(releasing.actions[0], 1012.0, "timeout"), SETTINGS)
    assert failed.job.phase is Phase.STOPPED
    assert "scontrol release 7" in (failed.job.stop_reason or "")


def test_dry_run_releases_at_once_since_nothing_was_held() -> None:
    held = policy.decide(running_job(), anomaly(), SETTINGS)
    attributed = policy.decide(held.job, app_verdict(), SETTINGS).job
    releasing = policy.decide(attributed, ActionDone(held.actions[0], 1011.0, dry_run=True), SETTINGS)
    assert releasing.notes[0].text.startswith("dry run: would have")
    assert releasing.actions[0].kind is ActionKind.RELEASE
    done = policy.decide(releasing.job, ActionDone(releasing.actions[0], 1012.0, dry_run=True), SETTINGS)
    assert done.job.phase is Phase.RESTARTING


def test_stale_outcome_is_recorded_without_changing_phase() -> None:
    job = running_job()
    stale = Action(ActionKind.RELEASE, 7, 0, "old")
    assert policy.decide(job, ActionDone(stale, 1.0), SETTINGS).job.phase is Phase.WATCHING
    assert policy.decide(job, ActionFailed(stale, 1.0, "x"), SETTINGS).job.phase is Phase.WATCHING


def test_vanished_job_is_gone_once() -> None:
    job = running_job()
    gone = policy.decide(job, JobVanished(7, 2000.0), SETTINGS).job
    assert gone.phase is Phase.GONE
    assert adoption.vanished(gone, 2001.0) == []
    assert adoption.vanished(job, 2001.0) == [JobVanished(7, 2001.0)]


def test_crash_loop_stops_after_threshold_failures_without_checkpoint() -> None:
    settings = Settings(crashloop_threshold=2, annotate_jobs=False)
    job = running_job(limit=10)
    first = policy.decide(job, anomaly(attempt=0), settings)
    assert first.actions and first.job.failure_streak == 1
    job = policy.decide(replace(first.job, phase=Phase.RESTARTING), AttemptStarted(7, 1, 1100.0, "n"), settings).job
    second = policy.decide(job, anomaly(attempt=1), settings)
    assert second.actions == () and "crash-looping" in (second.job.stop_reason or "")
    assert second.job.stop_cause is StopCause.CRASH_LOOP


def test_each_way_of_stopping_names_its_cause() -> None:
    settings = Settings(annotate_jobs=False)
    limit = policy.decide(running_job(limit=1, requeues_used=1), anomaly(attempt=0), settings)
    assert limit.job.stop_cause is StopCause.LIMIT
    holding = policy.decide(running_job(limit=3), anomaly(attempt=0), settings)
    [hold] = holding.actions
    refused = policy.decide(holding.job, ActionFailed(hold, 1.0, "Requested operation is presently disabled"), settings)
    assert refused.job.phase is Phase.STOPPED and refused.job.stop_cause is StopCause.SLURM_REFUSED
    # A new attempt clears the cause with the reason.
    restarted = policy.decide(replace(refused.job, phase=Phase.WATCHING), AttemptStarted(7, 1, 1100.0, "n"), settings)
    assert restarted.job.stop_cause is None and restarted.job.stop_reason is None


def test_checkpoint_resets_the_crash_loop_count_and_marks_restart_success() -> None:
    settings = Settings(crashloop_threshold=2, annotate_jobs=False)
    job = running_job(limit=10, attempt=1, failure_streak=1)
    saved = policy.decide(job, CheckpointSaved(7, 1, 1200.0, "saved_checkpoint_to", "/x", "Saved checkpoint to /c"), settings)
    assert saved.job.failure_streak == 0 and saved.job.attempt_saved and saved.job.attempt_succeeded
    assert "restart successful (first checkpoint saved)" in saved.notes[-1].text
    assert policy.decide(saved.job, anomaly(attempt=1), settings).actions


def test_checkpoint_of_another_attempt_is_not_counted() -> None:
    job = running_job(attempt=2)
    decision = policy.decide(job, CheckpointSaved(7, 1, 1.0, "r", "/x", "l"), SETTINGS)
    assert decision.job == job


def test_every_phase_answers_every_event() -> None:
    """Totality: no (phase, event) pair raises."""
    action = Action(ActionKind.REQUEUE_HOLD, 7, 0, "r")
    events = [
        AttemptStarted(7, 0, 1.0, "n"), AttemptStarted(7, 1, 2.0, "n"), JobEnded(7, 0, 3.0, "FAILED"),
        JobEnded(7, 0, 3.0, "COMPLETED"), JobEnded(7, 0, 3.0, "CANCELLED"), JobEnded(7, 0, 3.0, "PREEMPTED"),
        JobVanished(7, 4.0), JobHeld(7, 1, 4.0), AttemptSucceeded(7, 0, 4.5), anomaly(),
        Attributed(7, 0, 4.6, Verdict("node", ("node-1",), "c", ()), ("node-1",)),
        StragglerFound(7, 0, 4.7, 400.0, (1.0,)),
        ActionDone(Action(ActionKind.EXCLUDE, 7, 0, "r", nodes="node-1"), 6.0),
        ActionFailed(Action(ActionKind.EXCLUDE, 7, 0, "r", nodes="node-1"), 6.0, "no"),
        ActionDone(Action(ActionKind.CANCEL, 7, 0, "r"), 6.0), ActionFailed(Action(ActionKind.CANCEL, 7, 0, "r"), 6.0, "no"),
        ActionDone(Action(ActionKind.DRAIN, 7, 0, "r", nodes="node-1"), 6.0), CheckpointSaved(7, 0, 5.0, "r", "/p", "l"), ActionDone(action, 6.0),
        ActionFailed(action, 6.0, "no"), ActionDone(replace(action, kind=ActionKind.RELEASE), 6.0),
        ActionFailed(replace(action, kind=ActionKind.RELEASE), 6.0, "no"),
    ]  # fmt: skip
    for mode in ResumeMode:
        for phase in Phase:
            for event in events:
                for successor in (None, 9):
                    job = running_job(phase=phase, mode=mode, chain="train@7" if mode is ResumeMode.SINGLETON else "")
                    decision = policy.decide(job, event, SETTINGS, successor)
                    assert decision.job.job_id == 7


# ---- the decision trail in AdminComment ----------------------------------------------------


def test_each_decision_is_summarised_in_the_admin_comment() -> None:
    settings = Settings(annotate_jobs=True)
    holding = policy.decide(running_job(limit=10), anomaly(), settings)
    assert [a.kind for a in holding.actions] == [ActionKind.REQUEUE_HOLD]
    # Written once Slurm has done it, never before.
    requeued = policy.decide(holding.job, ActionDone(holding.actions[0], 1011.0), settings)
    assert [a.reason for a in requeued.actions] == ["ajr: requeued after segfault (segfault) on node-1 (1/10)"]
    stopped = policy.decide(running_job(limit=0), anomaly(), settings)
    assert [a.reason for a in stopped.actions] == ["ajr: not requeued: segfault (segfault); requeue limit reached (0/0)"]
    # Writing the comment is bookkeeping: its outcome changes nothing, its failure is only noted.
    annotate = requeued.actions[0]
    assert policy.decide(requeued.job, ActionDone(annotate, 1.0), settings).job == requeued.job
    failed = policy.decide(requeued.job, ActionFailed(annotate, 1.0, "Access denied"), settings)
    assert failed.job == requeued.job and "AdminComment not written" in failed.notes[0].text


def test_no_admin_comment_for_a_job_slurm_has_finished() -> None:
    """Slurm refuses AdminComment on finished jobs: the policy does not ask."""
    settings = Settings(annotate_jobs=True)
    ended = policy.decide(running_job(limit=0), JobEnded(7, 0, 1020.0, "FAILED"), settings)
    assert ended.job.phase is Phase.STOPPED and ended.actions == ()


def test_singleton_comment_is_written_before_the_cancel() -> None:
    settings = Settings(annotate_jobs=True)
    failed = policy.decide(singleton_job(), anomaly(), settings, successor=9)
    decision = policy.decide(failed.job, app_verdict(), settings)
    assert [a.kind for a in decision.actions] == [ActionKind.ANNOTATE, ActionKind.CANCEL]
    assert decision.actions[0].reason == "ajr: failed: segfault (segfault) on node-1; releasing job 9 of the chain (1/3)"


# ---- attempts ------------------------------------------------------------------------------


def test_requeued_attempt_is_recorded_as_failed_at_the_requeue() -> None:
    holding = policy.decide(running_job(), anomaly(at=1010.0), SETTINGS)
    held = policy.decide(holding.job, ActionDone(holding.actions[0], 1011.0), SETTINGS).job
    attempt = held.current_attempt()
    assert attempt is not None
    assert (attempt.started, attempt.ended, attempt.outcome) == (1000.0, 1011.0, Outcome.FAILED)
    assert attempt.end_reason == "segfault (segfault)"
    nxt = policy.decide(held, AttemptStarted(7, 1, 1015.0, "node-2"), SETTINGS).job.current_attempt()
    assert nxt is not None and nxt.attempt == 1 and nxt.outcome is Outcome.RUNNING and nxt.ended is None


def test_checkpoint_times_of_the_attempt() -> None:
    job = running_job()
    for at in (1100.0, 1200.0):
        job = policy.decide(job, CheckpointSaved(7, 0, at, "r", "/p", "l"), SETTINGS).job
    attempt = job.current_attempt()
    assert attempt is not None and (attempt.first_checkpoint, attempt.last_checkpoint) == (1100.0, 1200.0)


@pytest.mark.parametrize(("state", "outcome"), [("COMPLETED", Outcome.COMPLETED), ("CANCELLED", Outcome.CANCELLED),
                                                ("FAILED", Outcome.FAILED), ("PREEMPTED", Outcome.ENDED)])  # fmt: skip
def test_attempt_outcome_follows_how_it_ended(state: str, outcome: Outcome) -> None:
    ended = policy.decide(running_job(), JobEnded(7, 0, 1020.0, state), SETTINGS).job
    assert ended.attempt_outcome is outcome and ended.attempt_ended == 1020.0


def test_limit_reached_attempt_stays_failed_when_it_exits() -> None:
    stopped = policy.decide(running_job(limit=0), anomaly(), SETTINGS).job
    ended = policy.decide(stopped, JobEnded(7, 0, 1030.0, "FAILED"), SETTINGS).job
    assert ended.attempt_outcome is Outcome.FAILED and ended.attempt_end_reason == "segfault (segfault)"


# ---- restart success -----------------------------------------------------------------------


def test_runtime_criterion_marks_success_after_n_minutes() -> None:
    settings = Settings(restart_success="runtime", restart_success_minutes=10, annotate_jobs=False)
    job = replace(running_job(), attempt=1, failure_streak=2)
    assert adoption.observe(job, snapshot(restart_count=1), 1000.0 + 599, settings)[1] == []
    events = adoption.observe(job, snapshot(restart_count=1), 1000.0 + 600, settings)[1]
    assert events == [AttemptSucceeded(7, 1, 1600.0)]
    succeeded = policy.decide(job, events[0], settings)
    assert succeeded.job.attempt_succeeded and succeeded.job.failure_streak == 0
    assert "restart successful (ran 10 min)" in succeeded.notes[0].text
    # With this criterion a checkpoint is recorded but is not what counts.
    saved = policy.decide(job, CheckpointSaved(7, 1, 1100.0, "r", "/p", "l"), settings).job
    assert saved.attempt_saved and not saved.attempt_succeeded and saved.failure_streak == 2


def test_checkpoint_criterion_gives_no_runtime_event() -> None:
    job = replace(running_job(), attempt=1)
    assert adoption.observe(job, snapshot(restart_count=1), 1000.0 + 10**6, SETTINGS)[1] == []


def test_crash_loop_counts_only_attempts_without_success() -> None:
    settings = Settings(crashloop_threshold=2, annotate_jobs=False)
    job = running_job(limit=10)
    job = policy.decide(job, CheckpointSaved(7, 0, 1005.0, "r", "/p", "l"), settings).job
    first = policy.decide(job, anomaly(), settings)  # failed after saving: not part of a crash-loop
    assert first.actions and first.job.failure_streak == 0


# ---- singleton chains ----------------------------------------------------------------------


def singleton_job(**changes: object) -> ManagedJob:
    spec = ApsSpec(auto_resume_mode=ResumeMode.SINGLETON, max_requeue_times=3)
    job = adopt(snapshot(comment='{"APS": {"auto_resume_mode": "singleton_dependency"}}'), spec=spec)
    job = policy.decide(job, AttemptStarted(7, 0, 1000.0, "node-1"), SETTINGS).job
    return replace(job, **changes)


def held_snapshot(job_id: int, user_id: int = 1000, name: str = "train", reason: str = "JobHeldUser") -> JobSnapshot:
    return snapshot(job_id=job_id, user_id=user_id, name=name, state="PENDING", start_time=None, reason=reason)


def test_chain_is_named_after_its_first_job_and_passed_on() -> None:
    first = singleton_job()
    assert first.chain == "train@7" and running_job().chain == ""
    assert adoption.inherit(singleton_job(job_id=9, chain="train@9"), first).chain == "train@7"


def test_next_in_chain_is_the_oldest_held_job_of_the_same_user_and_name() -> None:
    job = singleton_job()
    candidates = [
        held_snapshot(12), held_snapshot(9), held_snapshot(8, user_id=2000), held_snapshot(5, name="other"),
        held_snapshot(6, reason="Dependency"), snapshot(job_id=4, state="RUNNING"), held_snapshot(7),
    ]  # fmt: skip
    assert adoption.next_in_chain(job, candidates) == 9
    assert adoption.next_in_chain(job, [held_snapshot(8, user_id=2000)]) is None


def test_singleton_failure_stops_the_job_and_releases_the_next() -> None:
    failed = policy.decide(singleton_job(), anomaly(), SETTINGS, successor=9)
    # The verdict comes first: it may keep a faulty node out of the successor.
    assert failed.actions == () and failed.job.awaiting is Awaiting.VERDICT
    assert failed.job.phase is Phase.HANDING_OVER and failed.job.successor == 9
    assert failed.job.requeues_used == 1
    decision = policy.decide(failed.job, app_verdict(), SETTINGS)
    assert [(a.kind, a.acts_on) for a in decision.actions] == [(ActionKind.CANCEL, 7)]
    cancelled = policy.decide(decision.job, ActionDone(decision.actions[0], 1011.0), SETTINGS)
    assert [(a.kind, a.acts_on) for a in cancelled.actions] == [(ActionKind.RELEASE, 9)]
    done = policy.decide(cancelled.job, ActionDone(cancelled.actions[0], 1012.0), SETTINGS)
    assert done.job.phase is Phase.HANDED_OVER
    # The cancel AJR itself made is no user's scancel and no new failure.
    after = policy.decide(done.job, JobEnded(7, 0, 1013.0, "CANCELLED"), SETTINGS)
    assert after.job.phase is Phase.HANDED_OVER and after.actions == ()
    assert after.job.attempt_outcome is Outcome.FAILED


def test_singleton_job_that_already_ended_is_not_cancelled_and_hands_over_after_the_verdict() -> None:
    decision = policy.decide(singleton_job(), JobEnded(7, 0, 1020.0, "FAILED"), SETTINGS, successor=9)
    assert decision.actions == () and decision.job.phase is Phase.HANDING_OVER
    released = policy.decide(decision.job, node_verdict(), SETTINGS)
    assert [(a.kind, a.acts_on, a.nodes) for a in released.actions] == [(ActionKind.EXCLUDE, 9, "node-1")]


def test_singleton_chain_without_held_job_ends() -> None:
    decision = policy.decide(singleton_job(), anomaly(), SETTINGS, successor=None)
    assert decision.actions == () and decision.job.phase is Phase.FINISHED
    assert "chain ended: no held job left" in (decision.job.stop_reason or "")


def test_singleton_success_releases_nothing() -> None:
    decision = policy.decide(singleton_job(), JobEnded(7, 0, 1020.0, "COMPLETED"), SETTINGS, successor=9)
    assert decision.actions == () and decision.job.phase is Phase.FINISHED


def test_singleton_limit_and_crash_loop_count_across_the_chain() -> None:
    predecessor = singleton_job(requeues_used=3, failure_streak=1)
    successor = adoption.inherit(singleton_job(job_id=9, requeues_used=0), predecessor)
    assert successor.requeues_used == 3 and successor.failure_streak == 1
    stopped = policy.decide(successor, replace(anomaly(), job_id=9), SETTINGS, successor=12)
    assert stopped.actions == () and "requeue limit reached (3/3)" in (stopped.job.stop_reason or "")


def test_failed_cancel_keeps_the_successor_held() -> None:
    failed = policy.decide(singleton_job(), anomaly(), SETTINGS, successor=9)
    decision = policy.decide(failed.job, app_verdict(), SETTINGS)
    failed = policy.decide(decision.job, ActionFailed(decision.actions[0], 1011.0, "gave up after 10 tries"), SETTINGS)
    assert failed.actions == () and failed.job.phase is Phase.STOPPED
    assert "job 9 stays held" in (failed.job.stop_reason or "")
    assert failed.job.stop_cause is StopCause.CANCEL_FAILED


def test_failed_release_of_the_next_job_says_how_to_release_it() -> None:
    decision = policy.decide(singleton_job(), JobEnded(7, 0, 1010.0, "FAILED"), SETTINGS, successor=9)
    assert decision.job.awaiting is Awaiting.VERDICT and decision.actions == ()
    unknown = Attributed(7, 0, 1011.0, Verdict("unknown", (), "job ended FAILED", ()))
    # What waits is a typed field, not the words shown for the last action.
    release = policy.decide(replace(decision.job, last_action="reworded"), unknown, SETTINGS)
    assert [(a.kind, a.acts_on) for a in release.actions] == [(ActionKind.RELEASE, 9)]
    assert release.job.awaiting is None
    failed = policy.decide(release.job, ActionFailed(release.actions[0], 1012.0, "Invalid job id"), SETTINGS)
    assert failed.job.phase is Phase.STOPPED and "scontrol release 9" in (failed.job.stop_reason or "")
    assert failed.job.stop_cause is StopCause.SUCCESSOR_RELEASE_FAILED


# ---- verdicts, exclusion, stragglers ------------------------------------------------------------


def node_verdict(attempt: int = 0, exclude: tuple[str, ...] = ("node-1",)) -> Attributed:
    return Attributed(7, attempt, 1010.5, Verdict(Fault.NODE, ("node-1",), "gpu_hardware (xid_79)", ("l",)), exclude)


def test_node_verdict_excludes_the_node_before_the_release() -> None:
    holding = policy.decide(running_job(), anomaly(), SETTINGS)
    attributed = policy.decide(holding.job, node_verdict(), SETTINGS)
    assert attributed.job.verdict == "node" and attributed.job.verdict_nodes == "node-1"
    assert "fault lies with node node-1" in attributed.notes[0].text
    held = policy.decide(attributed.job, ActionDone(holding.actions[0], 1011.0), SETTINGS).job
    exclude = policy.decide(held, JobHeld(7, 1, 1012.0), SETTINGS)
    assert [(a.kind, a.nodes) for a in exclude.actions] == [(ActionKind.EXCLUDE, "node-1")]
    release = policy.decide(exclude.job, ActionDone(exclude.actions[0], 1013.0), SETTINGS)
    assert [a.kind for a in release.actions] == [ActionKind.RELEASE]
    assert release.job.excluded_nodes == "node-1"
    # A later failure blaming the same node excludes nothing more.
    assert recovery.to_exclude(replace(release.job, verdict="node", verdict_nodes="node-1")) == ""


def test_failed_exclusion_still_releases() -> None:
    holding = policy.decide(running_job(), anomaly(), SETTINGS)
    job = policy.decide(holding.job, node_verdict(), SETTINGS).job
    held = policy.decide(job, ActionDone(holding.actions[0], 1011.0), SETTINGS).job
    exclude = policy.decide(held, JobHeld(7, 1, 1012.0), SETTINGS)
    failed = policy.decide(exclude.job, ActionFailed(exclude.actions[0], 1013.0, "Invalid node name"), SETTINGS)
    assert [a.kind for a in failed.actions] == [ActionKind.RELEASE] and failed.job.excluded_nodes == ""
    assert "could not exclude node-1" in failed.notes[0].text


def test_verdict_without_excludable_nodes_just_releases() -> None:
    holding = policy.decide(running_job(), anomaly(), SETTINGS)
    job = policy.decide(holding.job, node_verdict(exclude=()), SETTINGS).job
    held = policy.decide(job, ActionDone(holding.actions[0], 1011.0), SETTINGS).job
    assert [a.kind for a in policy.decide(held, JobHeld(7, 1, 1012.0), SETTINGS).actions] == [ActionKind.RELEASE]


def test_verdict_for_another_attempt_is_ignored() -> None:
    job = policy.decide(running_job(), anomaly(), SETTINGS).job
    assert policy.decide(job, node_verdict(attempt=5), SETTINGS).job == job


def test_singleton_successor_keeps_the_faulty_node_out() -> None:
    failed = policy.decide(singleton_job(), anomaly(), SETTINGS, successor=9)
    decision = policy.decide(failed.job, node_verdict(), SETTINGS)
    assert [a.kind for a in decision.actions] == [ActionKind.CANCEL]
    cancelled = policy.decide(decision.job, ActionDone(decision.actions[0], 1011.0), SETTINGS)
    assert [(a.kind, a.acts_on, a.nodes) for a in cancelled.actions] == [(ActionKind.EXCLUDE, 9, "node-1")]
    released = policy.decide(cancelled.job, ActionDone(cancelled.actions[0], 1012.0), SETTINGS)
    assert [(a.kind, a.acts_on) for a in released.actions] == [(ActionKind.RELEASE, 9)]
    successor = adoption.inherit(singleton_job(job_id=9), released.job)
    assert successor.excluded_nodes == "node-1"


def test_straggler_is_recorded_once_and_recovers_only_when_asked() -> None:
    found = StragglerFound(7, 0, 1100.0, 400.0, (200.0, 210.0))
    recorded = policy.decide(running_job(), found, SETTINGS)
    assert recorded.actions == () and recorded.job.straggler_reported and "straggler" in recorded.notes[0].text
    assert policy.decide(recorded.job, found, SETTINGS).notes == ()
    recover = Settings(straggler_recovery=True, annotate_jobs=False)
    acted = policy.decide(running_job(), found, recover)
    assert [a.kind for a in acted.actions] == [ActionKind.REQUEUE_HOLD]
    assert "straggler" in acted.actions[0].reason


# ---- the release waits for the verdict, worked out off the loop -----------------------------------


def held_pending(job: ManagedJob) -> ManagedJob:
    """Failed, held by Slurm and shown pending, the verdict not yet in."""
    holding = policy.decide(job, anomaly(), SETTINGS)
    held = policy.decide(holding.job, ActionDone(holding.actions[0], 1011.0), SETTINGS).job
    return replace(held, slurm_state="PENDING")


def test_a_held_job_waits_for_its_verdict_then_is_released_at_once() -> None:
    held = held_pending(running_job())
    assert held.awaiting is Awaiting.VERDICT
    assert policy.decide(held, JobHeld(7, 1, 1012.0), SETTINGS).actions == ()
    judged = policy.decide(held, app_verdict(), SETTINGS)
    assert judged.actions == () and judged.job.awaiting is Awaiting.NODE_STATES
    assert "fault lies with the application" in judged.notes[0].text
    released = policy.decide(judged.job, none_lost(), SETTINGS)
    assert [a.kind for a in released.actions] == [ActionKind.RELEASE] and released.job.awaiting is None


def test_a_node_verdict_that_comes_late_still_keeps_the_node_out() -> None:
    released = policy.decide(held_pending(running_job()), node_verdict(), SETTINGS)
    assert [(a.kind, a.nodes) for a in released.actions] == [(ActionKind.EXCLUDE, "node-1")]


def test_an_overdue_verdict_releases_without_it_and_says_so() -> None:
    held = held_pending(running_job())
    overdue = policy.decide(held, VerdictOverdue(7, 0, 1030.0, 17.0), SETTINGS)
    assert [a.kind for a in overdue.actions] == [ActionKind.RELEASE]
    assert "no verdict after 17 s" in overdue.notes[0].text
    # The verdict that comes after all is recorded, and changes nothing more.
    late = policy.decide(overdue.job, node_verdict(), SETTINGS)
    assert late.actions == () and late.job.verdict == "node"
    assert policy.decide(overdue.job, VerdictOverdue(7, 0, 1031.0, 18.0), SETTINGS).actions == ()


def test_a_dry_run_hold_done_before_the_verdict_releases_when_it_comes() -> None:
    dry = Settings(annotate_jobs=False, dry_run=True)
    holding = policy.decide(running_job(), anomaly(), dry)
    held = policy.decide(holding.job, ActionDone(holding.actions[0], 1011.0, dry_run=True), dry)
    assert held.actions == () and held.job.phase is Phase.HELD
    assert [a.kind for a in policy.decide(held.job, app_verdict(), dry).actions] == [ActionKind.RELEASE]


def test_a_singleton_verdict_overdue_still_hands_over() -> None:
    failed = policy.decide(singleton_job(), anomaly(), SETTINGS, successor=9)
    overdue = policy.decide(failed.job, VerdictOverdue(7, 0, 1030.0, 17.0), SETTINGS)
    assert [(a.kind, a.acts_on) for a in overdue.actions] == [(ActionKind.CANCEL, 7)]


DRAINING = Settings(annotate_jobs=False, drain_faulty_nodes=True, drain_keep_nodes=1, max_drains_per_hour=2)


def drain_verdict(cluster: NodeFacts | None, drains_last_hour: int = 0, error: str = "") -> Attributed:
    # On the node's own log: a job's log alone never drains (tests/unit/test_ledger.py).
    trusted = replace(node_verdict().verdict, basis=Basis.NODE_LOG)
    return replace(node_verdict(), verdict=trusted, cluster=cluster, cluster_error=error,
                   drains_last_hour=drains_last_hour)  # fmt: skip


def test_a_node_verdict_drains_the_node_by_the_policy() -> None:
    holding = policy.decide(running_job(), anomaly(), DRAINING)
    facts = NodeFacts((("gpu", ("node-1", "node-2", "node-3")),), frozenset())
    decided = policy.decide(holding.job, drain_verdict(facts), DRAINING)
    assert [(a.kind, a.nodes) for a in decided.actions] == [(ActionKind.DRAIN, "node-1")]
    assert decided.actions[0].reason.startswith("ajr: job 7 gpu_hardware (xid_79): l")


def test_drains_keep_the_hourly_budget_and_the_partition_s_last_nodes() -> None:
    holding = policy.decide(running_job(), anomaly(), DRAINING).job
    facts = NodeFacts((("gpu", ("node-1", "node-2", "node-3")),), frozenset())
    over_budget = policy.decide(holding, drain_verdict(facts, drains_last_hour=2), DRAINING)
    assert over_budget.actions == () and any("already 2 drains" in n.text for n in over_budget.notes)
    last = NodeFacts((("gpu", ("node-1", "node-2")),), frozenset({"node-2"}))
    spared = policy.decide(holding, drain_verdict(last), DRAINING)
    assert spared.actions == () and any("last nodes in service" in n.text for n in spared.notes)
    unknown = policy.decide(holding, drain_verdict(None, error="Socket timed out"), DRAINING)
    assert unknown.actions == () and any("cannot read the partitions: Socket timed out" in n.text
                                         for n in unknown.notes)  # fmt: skip


def test_an_attempts_nodes_stay_those_it_started_on_while_slurm_shrinks_its_node_list() -> None:
    # A job ending NODE_FAIL or completing is listed by squeue on the nodes it still holds
    # (on 26.05 the batch host alone): the verdict must see every node the attempt ran on.
    job, _ = adoption.observe(running_job(nodes="n[1-4]"), snapshot(nodes="n[1-4]"), 1001.0, SETTINGS)
    for state in ("COMPLETING", "NODE_FAIL"):
        shrunk, _ = adoption.observe(job, snapshot(state=state, nodes="n1", end_time=1003.0), 1004.0, SETTINGS)
        assert shrunk.nodes == "n[1-4]"
    # Requeued by Slurm after it lost n3: the restart count is up while the job still completes
    # on the nodes it holds (22.05), and the nodes are still the failed attempt's.
    requeued, _ = adoption.observe(job, snapshot(state="COMPLETING", restart_count=1, nodes="n[1-2,4]"), 1004.0,
                                   SETTINGS)  # fmt: skip
    assert requeued.nodes == "n[1-4]"
    # The next attempt runs where Slurm puts it.
    again, events = adoption.observe(job, snapshot(restart_count=1, start_time=1100.0, nodes="n[1-2,4-5]"), 1101.0,
                                     SETTINGS)  # fmt: skip
    assert again.nodes == "n[1-2,4-5]" and any(isinstance(e, AttemptStarted) for e in events)
    # A job first seen pending has no nodes until it runs.
    pending, _ = adoption.observe(replace(job, nodes=""), snapshot(state="PENDING", nodes=""), 1102.0, SETTINGS)
    assert pending.nodes == ""
