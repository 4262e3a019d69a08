"""The recovery policy: pure functions from (job, event, settings) to decisions.

No I/O and no clock: time comes in with the events. Every (phase, event) pair has an
answer, so the agent never meets a case it cannot decide.
"""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.domain import budgets, lemons, progress, slurm_requeues, verdict_steps
from ajr_agent.domain.events import (
    ActionDone,
    ActionFailed,
    AnomalyFound,
    Attributed,
    AttemptStarted,
    AttemptSucceeded,
    CheckpointFailed,
    CheckpointSaved,
    Event,
    JobEnded,
    JobForgotten,
    JobHeld,
    JobVanished,
    LemonsChanged,
    RequeuedBySlurm,
    StragglerFound,
    VerdictOverdue,
)
from ajr_agent.domain.jobs import FAILED_STATES
from ajr_agent.domain.model import (
    Action,
    ActionKind,
    Awaiting,
    Basis,
    Decision,
    Fault,
    ManagedJob,
    Note,
    NoteKind,
    Outcome,
    Phase,
    StopCause,
)
from ajr_agent.domain.recovery import (
    AWAITING_VERDICT,
    after_exclusion,
    annotate,
    await_verdict,
    end_attempt,
    hand_to_successor,
    on_nodes,
    release_held,
    stop,
)
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode

# Phases in which AJR is between a failure and the next attempt.
RECOVERING = frozenset({Phase.HOLDING, Phase.HELD, Phase.RELEASING, Phase.RESTARTING, Phase.HANDING_OVER})
# Phases in which a job's own story is over; late lines change nothing.
OVER = frozenset({Phase.FINISHED, Phase.GONE, Phase.HANDED_OVER, Phase.FORGOTTEN})


def decide(job: ManagedJob, event: Event, settings: Settings, successor: int | None = None) -> Decision:
    """The policy's answer to one event for one job.

    `successor` is, for a singleton job, the held job of its chain that would carry on.
    """
    match event:
        case AttemptStarted():
            return _attempt_started(job, event)
        case AttemptSucceeded():
            return progress.succeeded(job, event.attempt, f"ran {settings.restart_success_minutes:g} min")
        case JobEnded():
            return _job_ended(job, event, settings, successor)
        case AnomalyFound():
            job = replace(job, last_anomaly=f"{event.category} ({event.rule})")
            cause = f"{event.category} ({event.rule})"
            return _failure(job, event.attempt, event.at, cause, settings, successor, event.fault)
        case CheckpointSaved():
            return progress.saved(job, event, settings)
        case CheckpointFailed():
            return progress.failed(job, event)
        case ActionDone():
            return _action_done(job, event, settings)
        case ActionFailed():
            return _action_failed(job, event, settings)
        case JobHeld():
            return _held(job, event, settings)
        case RequeuedBySlurm():
            return slurm_requeues.seen(job, event)
        case Attributed() if job.awaiting is Awaiting.LOST_NODE and event.attempt == job.attempt:
            return _lost_node(job, event, settings, successor)
        case Attributed() if job.awaiting is Awaiting.NODE_STATES and event.attempt == job.handled_attempt:
            return verdict_steps.looked_again(job, event, settings)
        case Attributed():
            return verdict_steps.attributed(job, event, settings)
        case VerdictOverdue():
            return verdict_steps.verdict_overdue(job, event, settings)
        case StragglerFound():
            return _straggler(job, event, settings, successor)
        case JobForgotten():
            forgotten = replace(job, phase=Phase.FORGOTTEN, stop_cause=StopCause.FORGOTTEN,
                                stop_reason=f"forgotten by {event.by}")  # fmt: skip
            return Decision(forgotten, notes=(Note(NoteKind.FORGOTTEN, f"an operator ({event.by}) told AJR to "
                                                                      "leave it alone"),))  # fmt: skip
        case JobVanished():
            return Decision(replace(job, phase=Phase.GONE), notes=(Note(NoteKind.GONE, "job left slurmctld's memory"),))
        case LemonsChanged():
            return lemons.changed(job, event)
    raise TypeError(f"unknown event {event!r}")  # pragma: no cover - Event is a closed union


def _attempt_started(job: ManagedJob, event: AttemptStarted) -> Decision:
    if event.attempt < job.attempt:
        return Decision(job)
    phase = job.phase
    if phase in RECOVERING or phase in (Phase.STOPPED, Phase.FINISHED):
        # Ours after a release, or someone else's requeue: either way a fresh attempt to watch.
        phase = Phase.WATCHING
    started = replace(
        job,
        phase=phase,
        attempt=event.attempt,
        attempt_started=event.at,
        attempt_ended=None,
        attempt_outcome=Outcome.RUNNING,
        attempt_end_reason="",
        attempt_first_checkpoint=None,
        attempt_last_checkpoint=None,
        attempt_succeeded=False,
        straggler_reported=False,
        verdict="",
        verdict_nodes="",
        nodes=event.nodes or job.nodes,
        stop_reason=None if phase is Phase.WATCHING else job.stop_reason,
        stop_cause=None if phase is Phase.WATCHING else job.stop_cause,
        awaiting=None if job.awaiting is Awaiting.LOST_NODE else job.awaiting,  # Slurm started it meanwhile
    )
    where = f" on {event.nodes}" if event.nodes else ""
    return Decision(started, notes=(Note(NoteKind.ATTEMPT, f"attempt {event.attempt} started{where}"),))


def _job_ended(job: ManagedJob, event: JobEnded, settings: Settings, successor: int | None) -> Decision:
    state = event.slurm_state
    job = replace(job, attempt_ended=event.at, slurm_state=state)
    if state in FAILED_STATES:
        job = replace(job, attempt_outcome=Outcome.FAILED, attempt_end_reason=job.attempt_end_reason or state)
        failed = _failure(job, event.attempt, event.at, f"job ended {state}", settings, successor, budgets.of_end(state))
        if failed.job.awaiting is None and verdict_steps.may_blame_a_lost_node(failed.job):
            # Handled before Slurm ended it NODE_FAIL: its verdict may not have known of the lost node.
            return replace(failed, job=replace(failed.job, awaiting=Awaiting.NODE_STATES))
        return failed
    if state == "CANCELLED":
        # scancel is the user's word, even while AJR is between a failure and the next attempt.
        job = _keep_failed(job, Outcome.CANCELLED, state)
        if job.phase in (Phase.HANDING_OVER, Phase.HANDED_OVER):
            # AJR's own scancel of a failed singleton job: the chain goes on.
            return Decision(job, notes=(Note(NoteKind.ENDED, f"attempt {event.attempt} cancelled for the hand-over"),))
        held = " while AJR was recovering it" if job.phase in RECOVERING else ""
        return Decision(
            replace(job, phase=Phase.FINISHED), notes=(Note(NoteKind.ENDED, f"job cancelled{held}; not requeued"),)
        )
    if job.handled_attempt == event.attempt:
        job = _keep_failed(job, Outcome.FAILED, state)
        return Decision(job, notes=(Note(NoteKind.ENDED, f"attempt {event.attempt} ended {state} (failure already handled)"),))
    if state == "COMPLETED":
        job = replace(job, phase=Phase.FINISHED, attempt_outcome=Outcome.COMPLETED, attempt_end_reason=state)
        return Decision(job, notes=(Note(NoteKind.ENDED, "job completed successfully"),))
    # PREEMPTED, REVOKED, SPECIAL_EXIT: Slurm or the user's own logic decides what comes next.
    job = replace(job, attempt_outcome=Outcome.ENDED, attempt_end_reason=state)
    return Decision(job, notes=(Note(NoteKind.ENDED, f"attempt {event.attempt} ended {state}; left to Slurm"),))


def _keep_failed(job: ManagedJob, outcome: Outcome, state: str) -> ManagedJob:
    """An attempt whose failure AJR handled stays failed whatever Slurm's last word is."""
    if job.handled_attempt == job.attempt and job.attempt_outcome is Outcome.FAILED:
        return job
    return replace(job, attempt_outcome=outcome, attempt_end_reason=state)


def _failure(job: ManagedJob, attempt: int, at: float, cause: str, settings: Settings, successor: int | None,
             fault: Fault = Fault.UNKNOWN, requeued: bool = False) -> Decision:  # fmt: skip
    """A failure of `attempt`: recover, or say why not. One failure gives at most one recovery.

    It is charged to the budget `fault` (the failing line's) points at, until the verdict says.
    `requeued`: Slurm has requeued the attempt itself (so has it when AJR is asking about a lost node).
    """
    if attempt != job.attempt:
        return Decision(job, notes=(Note(NoteKind.IGNORED, f"{cause} in attempt {attempt}, which is over; ignored"),))
    if job.handled_attempt == attempt:
        return Decision(job, notes=(Note(NoteKind.DUPLICATE, f"{cause}: same failure of attempt {attempt}, already handled"),))
    if job.phase in OVER:
        return Decision(job, notes=(Note(NoteKind.IGNORED, f"{cause} after the job had {job.slurm_state or 'ended'}"),))
    budget = budgets.of_fault(fault)
    streak = job.failure_streak + budgets.streak_step(job, budget)
    failed = replace(job, handled_attempt=attempt, failure_streak=streak, attempt_outcome=Outcome.FAILED,
                     attempt_end_reason=job.attempt_end_reason or cause)  # fmt: skip
    used, limit = job.requeues_used, job.limit
    if streak >= settings.crashloop_threshold:
        return stop(
            failed,
            StopCause.CRASH_LOOP,
            f"{cause}; crash-looping: {streak} failed attempts in a row without a new checkpoint "
            f"(threshold {settings.crashloop_threshold})",
            settings,
        )
    spent = budgets.exhausted(job, budget, settings)
    if spent is not None:
        return stop(failed, spent[0], f"{cause}; {spent[1]}", settings)
    failed = budgets.charge(failed, budget)
    if job.mode is ResumeMode.SINGLETON:
        return _hand_over(failed, cause, successor, settings)
    if requeued or job.awaiting is Awaiting.LOST_NODE:
        return slurm_requeues.failed(failed, attempt, cause, settings)
    action = Action(ActionKind.REQUEUE_HOLD, job.job_id, attempt, cause)
    # Held at once, so the failed run gives its nodes back; released once the verdict is in.
    requeued = await_verdict(failed, phase=Phase.HOLDING, requeues_used=used + 1,
                              last_action=f"requeue_hold ({cause})")  # fmt: skip
    return Decision(
        requeued,
        actions=(action,),
        notes=(Note(NoteKind.FAILURE, f"attempt {attempt} failed: {cause}; requeueing held ({used + 1}/{limit})"),),
    )


def _hand_over(job: ManagedJob, cause: str, successor: int | None, settings: Settings) -> Decision:
    """Singleton mode: stop the failing job and release the oldest held job of its chain."""
    if successor is None:
        return Decision(
            replace(job, phase=Phase.FINISHED, stop_cause=StopCause.CHAIN_ENDED,
                    stop_reason=f"{cause}; chain ended: no held job left"),
            actions=annotate(job, f"{cause}{on_nodes(job)}; chain ended: no held job left", settings),
            notes=(Note(NoteKind.CHAIN_ENDED, f"attempt failed: {cause}; chain ended: no held job of {job.name} left"),),
        )
    used = job.requeues_used + 1
    handing = await_verdict(job, phase=Phase.HANDING_OVER, successor=successor, requeues_used=used,
                             last_action=AWAITING_VERDICT)  # fmt: skip
    # The verdict comes first: it may keep a faulty node out of the successor.
    return Decision(handing, notes=(Note(NoteKind.FAILURE, f"attempt failed: {cause}; releasing job {successor} "
                                                          f"({used}/{job.limit})"),))  # fmt: skip


def _action_done(job: ManagedJob, event: ActionDone, settings: Settings) -> Decision:
    action = event.action
    prefix = "dry run: would have " if event.dry_run else ""
    if action.kind is ActionKind.ANNOTATE:
        return Decision(job)
    if action.kind is ActionKind.REQUEUE_HOLD and job.phase is Phase.HOLDING and action.attempt == job.handled_attempt:
        job = end_attempt(job, event.at, Outcome.FAILED, f"requeued by AJR after {action.reason}")
        note = Note(NoteKind.ACTION, f"{prefix}requeued held ({job.requeues_used}/{job.limit})")
        held = replace(job, phase=Phase.HELD, last_action="requeue_hold")
        trail = annotate(held, f"requeued after {action.reason}{on_nodes(job)} ({job.requeues_used}/{job.limit})", settings)
        if event.dry_run and job.awaiting is None:
            # Nothing was held, so Slurm will never show the job pending again: go on at once.
            release = release_held(job, notes=(note,))
            return replace(release, actions=(*release.actions, *trail))
        # Released only once Slurm shows the job pending: a release while the failed attempt
        # is still COMPLETING lets Slurm set its ~120 s requeue wait after our StartTime.
        return Decision(held, actions=trail, notes=(note,))
    if action.kind is ActionKind.RELEASE and job.phase is Phase.RELEASING:
        return Decision(
            replace(job, phase=Phase.RESTARTING, last_action="released"),
            notes=(Note(NoteKind.ACTION, f"{prefix}released; next attempt may start"),),
        )
    if action.kind is ActionKind.RELEASE and job.phase is Phase.HANDING_OVER and action.target is not None:
        return Decision(
            replace(job, phase=Phase.HANDED_OVER, last_action=f"released job {action.target}"),
            notes=(Note(NoteKind.ACTION, f"{prefix}released job {action.target}, the next of the chain"),),
        )
    if action.kind is ActionKind.CANCEL and job.phase is Phase.HANDING_OVER:
        handing = hand_to_successor(job)
        return Decision(handing.job, handing.actions, (Note(NoteKind.ACTION, f"{prefix}cancelled the failing job"),))
    if action.kind is ActionKind.EXCLUDE and job.phase in (Phase.RELEASING, Phase.HANDING_OVER):
        return after_exclusion(job, action, True, "", prefix)
    if action.kind is ActionKind.DRAIN:
        return Decision(job, notes=(Note(NoteKind.ACTION, f"{prefix}drained {action.nodes}: {action.reason}"),))
    if action.kind in lemons.KINDS:
        return lemons.done(job, action, prefix)
    return Decision(job, notes=(Note(NoteKind.ACTION, f"{prefix}{action.kind.value} done"),))


def _held(job: ManagedJob, event: JobHeld, settings: Settings) -> Decision:
    if job.phase is not Phase.HELD or job.awaiting is not None:
        return Decision(job)
    held = Note(NoteKind.HELD, f"job is held pending (restart count {event.attempt})")
    return verdict_steps.release_after_a_look(job, (held,), settings)


def _lost_node(job: ManagedJob, event: Attributed, settings: Settings, successor: int | None) -> Decision:
    """Slurm's own requeue judged: a node it lost makes it one failure, recovered as AJR's own."""
    if event.verdict.fault is not Fault.NODE or event.verdict.basis is not Basis.SLURM:
        return slurm_requeues.not_lost(job, "Slurm lost none of its nodes")
    failed = _failure(replace(job, awaiting=None), event.attempt, event.at, event.verdict.cause, settings, successor,
                      Fault.NODE, requeued=True)  # fmt: skip
    judged = verdict_steps.attributed(failed.job, event, settings)
    return Decision(judged.job, (*failed.actions, *judged.actions), (*failed.notes, *judged.notes), judged.verdict)


def _straggler(job: ManagedJob, event: StragglerFound, settings: Settings, successor: int | None) -> Decision:
    if event.attempt != job.attempt or job.straggler_reported:
        return Decision(job)
    text = progress.straggler_text(event, settings)
    reported = replace(job, straggler_reported=True, last_anomaly="straggler")
    if not settings.straggler_recovery:
        return Decision(reported, notes=(Note(NoteKind.STRAGGLER, text),))
    failure = _failure(reported, event.attempt, event.at, "straggler (throughput drop)", settings, successor)
    return Decision(failure.job, failure.actions, (Note(NoteKind.STRAGGLER, text), *failure.notes))


def _action_failed(job: ManagedJob, event: ActionFailed, settings: Settings) -> Decision:
    action = event.action
    if action.kind is ActionKind.ANNOTATE:
        return Decision(job, notes=(Note(NoteKind.ACTION, f"AdminComment not written: {event.reason}"),))
    if action.kind is ActionKind.EXCLUDE and job.phase in (Phase.RELEASING, Phase.HANDING_OVER):
        return after_exclusion(job, action, False, event.reason, "")
    if action.kind in lemons.KINDS:
        return lemons.failed(job, action, event.reason)
    if action.kind is ActionKind.REQUEUE_HOLD and job.phase is Phase.HOLDING and event.requeued_already:
        return slurm_requeues.already_requeued(job, action, event.at, settings)
    if action.kind is ActionKind.REQUEUE_HOLD and job.phase is Phase.HOLDING:
        refunded = budgets.refund(job)
        stopped = replace(refunded, requeues_used=max(job.requeues_used - 1, 0), last_action="requeue refused",
                          phase=Phase.STOPPED, stop_cause=StopCause.SLURM_REFUSED,
                          stop_reason=f"Slurm refused to requeue: {event.reason}")  # fmt: skip
        return Decision(stopped, notes=(Note(NoteKind.NOT_REQUEUED, f"not requeued: {stopped.stop_reason}"),))
    if action.kind is ActionKind.RELEASE and job.phase is Phase.RELEASING:
        reason = f"release failed: {event.reason}; the job may still be held: `scontrol release {job.job_id}`"
        return Decision(replace(job, phase=Phase.STOPPED, stop_cause=StopCause.RELEASE_FAILED, stop_reason=reason,
                                last_action="release failed"),
                        notes=(Note(NoteKind.NOT_REQUEUED, f"not requeued: {reason}"),))  # fmt: skip
    if action.kind is ActionKind.CANCEL and job.phase is Phase.HANDING_OVER:
        reason = f"could not stop the failing job: {event.reason}; job {job.successor} stays held"
        return Decision(replace(job, phase=Phase.STOPPED, stop_cause=StopCause.CANCEL_FAILED, stop_reason=reason,
                                last_action="cancel failed"),
                        notes=(Note(NoteKind.NOT_REQUEUED, reason),))  # fmt: skip
    if action.kind is ActionKind.RELEASE and job.phase is Phase.HANDING_OVER:
        reason = (f"release of job {action.target} failed: {event.reason}; release it by hand: "
                  f"`scontrol release {action.target}`")  # fmt: skip
        return Decision(replace(job, phase=Phase.STOPPED, stop_cause=StopCause.SUCCESSOR_RELEASE_FAILED,
                                stop_reason=reason, last_action="release failed"),
                        notes=(Note(NoteKind.NOT_REQUEUED, reason),))  # fmt: skip
    return Decision(job, notes=(Note(NoteKind.ACTION, f"{action.kind.value} failed: {event.reason}"),))
