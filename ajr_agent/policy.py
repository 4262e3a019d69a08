"""The recovery policy: pure functions from (job, event, settings, time) to decisions.

No I/O and no clock: time comes in with the event. Every (phase, event) pair has an
answer, so the agent never meets a case it cannot decide.
"""

from __future__ import annotations

from dataclasses import replace

from .config import Settings
from .model import (
    Action,
    ActionDone,
    ActionFailed,
    ActionKind,
    AnomalyFound,
    AttemptStarted,
    CheckpointSaved,
    Decision,
    Event,
    JobEnded,
    JobHeld,
    JobVanished,
    ManagedJob,
    Note,
    Phase,
)
from .slurm import FAILED_STATES, JobSnapshot
from .spec import ApsSpec, ResumeMode

# Phases in which AJR is between a failure and the next attempt.
RECOVERING = frozenset({Phase.HOLDING, Phase.HELD, Phase.RELEASING, Phase.RESTARTING})


def effective_limit(spec: ApsSpec, settings: Settings) -> int:
    """A job may lower the site's requeue cap, never raise it."""
    if spec.max_requeue_times is None:
        return settings.site_requeue_cap
    return min(spec.max_requeue_times, settings.site_requeue_cap)


def adopt(snapshot: JobSnapshot, spec: ApsSpec, settings: Settings, now: float, watching_since: float) -> Decision:
    """The record of a job seen for the first time with a valid spec.

    A job whose attempt already ended before AJR started watching this cluster (a fresh
    state database next to old failed jobs) is recorded but not recovered: acting on
    failures nobody asked AJR to watch would surprise everyone. A job that ended while a
    restarted agent was down is still recovered, since `watching_since` is when the
    state database began, not when this process started.
    """
    limit = effective_limit(spec, settings)
    job = ManagedJob(
        job_id=snapshot.job_id,
        name=snapshot.name,
        user=snapshot.user,
        user_id=snapshot.user_id,
        mode=spec.auto_resume_mode,
        requested_limit=spec.max_requeue_times,
        limit=limit,
        attempt=-1,
        work_dir=snapshot.work_dir,
        stdout_dir=snapshot.stdout_dir,
        first_seen=now,
        last_seen=now,
    )
    asked = f" (job asked {spec.max_requeue_times}, site cap {settings.site_requeue_cap})"
    limit_text = f"{limit}{asked if spec.max_requeue_times not in (None, limit) else ''}"
    note = Note("managed", f"managed in {job.mode.value} mode, requeue limit {limit_text}")
    if snapshot.ended and (snapshot.end_time or now) < watching_since:
        job = replace(
            job,
            phase=Phase.FINISHED,
            attempt=snapshot.restart_count,
            attempt_started=snapshot.start_time,
            attempt_ended=snapshot.end_time,
            slurm_state=snapshot.state,
        )
        note = Note("managed", f"ended {snapshot.state} before AJR started watching; not recovered")
    return Decision(job, notes=(note,))


def observe(job: ManagedJob, snapshot: JobSnapshot, now: float) -> tuple[ManagedJob, list[Event]]:
    """Compare a poll's view of the job with what AJR knew; return the refreshed job and the events."""
    events: list[Event] = []
    attempt = snapshot.restart_count
    started = snapshot.start_time or now
    is_new_attempt = attempt > job.attempt or (attempt == job.attempt and started != job.attempt_started)
    if (snapshot.running or snapshot.ended) and is_new_attempt:
        events.append(AttemptStarted(job.job_id, attempt, started, snapshot.nodes))
    if job.phase is Phase.HELD and snapshot.state == "PENDING":
        events.append(JobHeld(job.job_id, attempt, now))
    if snapshot.ended:
        ended_at = snapshot.end_time or now
        already_seen = attempt == job.attempt and job.attempt_ended == ended_at and not is_new_attempt
        if not already_seen:
            events.append(JobEnded(job.job_id, attempt, ended_at, snapshot.state, snapshot.reason))
    refreshed = replace(
        job,
        slurm_state=snapshot.state,
        nodes=snapshot.nodes or job.nodes,
        last_seen=now,
        work_dir=snapshot.work_dir or job.work_dir,
        stdout_dir=snapshot.stdout_dir or job.stdout_dir,
    )
    return refreshed, events


def vanished(job: ManagedJob, now: float) -> list[Event]:
    """The event for a job the poll no longer lists, once."""
    return [] if job.phase is Phase.GONE else [JobVanished(job.job_id, now)]


def decide(job: ManagedJob, event: Event, settings: Settings) -> Decision:
    """The policy's answer to one event for one job."""
    match event:
        case AttemptStarted():
            return _attempt_started(job, event)
        case JobEnded():
            return _job_ended(job, event, settings)
        case AnomalyFound():
            job = replace(job, last_anomaly=f"{event.category} ({event.rule})")
            cause = f"{event.category} ({event.rule}) in {event.path.rsplit('/', 1)[-1]}"
            return _failure(job, event.attempt, cause, settings)
        case CheckpointSaved():
            return _checkpoint(job, event)
        case ActionDone():
            return _action_done(job, event)
        case ActionFailed():
            return _action_failed(job, event)
        case JobHeld():
            return _held(job, event)
        case JobVanished():
            return Decision(replace(job, phase=Phase.GONE), notes=(Note("gone", "job left slurmctld's memory"),))
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
        attempt_saved=False,
        nodes=event.nodes or job.nodes,
        stop_reason=None if phase is Phase.WATCHING else job.stop_reason,
    )
    where = f" on {event.nodes}" if event.nodes else ""
    return Decision(started, notes=(Note("attempt", f"attempt {event.attempt} started{where}"),))


def _job_ended(job: ManagedJob, event: JobEnded, settings: Settings) -> Decision:
    job = replace(job, attempt_ended=event.at, slurm_state=event.slurm_state)
    state = event.slurm_state
    if state in FAILED_STATES:
        return _failure(job, event.attempt, f"job ended {state}", settings, ended=True)
    if state == "CANCELLED":
        # scancel is the user's word, even while AJR is between a failure and the next attempt.
        held = " while AJR was recovering it" if job.phase in RECOVERING else ""
        return Decision(
            replace(job, phase=Phase.FINISHED), notes=(Note("ended", f"job cancelled{held}; not requeued"),)
        )
    if job.handled_attempt == event.attempt:
        return Decision(job, notes=(Note("ended", f"attempt {event.attempt} ended {state} (failure already handled)"),))
    if state == "COMPLETED":
        return Decision(replace(job, phase=Phase.FINISHED), notes=(Note("ended", "job completed successfully"),))
    # PREEMPTED, REVOKED, SPECIAL_EXIT: Slurm or the user's own logic decides what comes next.
    return Decision(job, notes=(Note("ended", f"attempt {event.attempt} ended {state}; left to Slurm"),))


def _failure(job: ManagedJob, attempt: int, cause: str, settings: Settings, ended: bool = False) -> Decision:
    """A failure of `attempt`: requeue, or say why not. One failure gives at most one requeue."""
    if attempt != job.attempt:
        return Decision(job, notes=(Note("ignored", f"{cause} in attempt {attempt}, which is over; ignored"),))
    if job.handled_attempt == attempt:
        return Decision(job, notes=(Note("duplicate", f"{cause}: same failure of attempt {attempt}, already handled"),))
    if job.phase in (Phase.FINISHED, Phase.GONE):
        return Decision(job, notes=(Note("ignored", f"{cause} after the job had {job.slurm_state or 'ended'}"),))
    streak = job.failure_streak + (0 if job.attempt_saved else 1)
    failed = replace(job, handled_attempt=attempt, failure_streak=streak)
    used, limit = job.requeues_used, job.limit
    if job.mode is ResumeMode.SINGLETON:
        reason = "singleton_dependency mode: recovery releases the chain's next job (not in this version)"
        return _stop(failed, f"{cause}; {reason}")
    if streak >= settings.crashloop_threshold:
        return _stop(
            failed,
            f"{cause}; crash-looping: {streak} failed attempts in a row without a new checkpoint "
            f"(threshold {settings.crashloop_threshold})",
        )
    if used >= limit:
        return _stop(failed, f"{cause}; requeue limit reached ({used}/{limit})")
    action = Action(ActionKind.REQUEUE_HOLD, job.job_id, attempt, cause)
    requeued = replace(failed, phase=Phase.HOLDING, requeues_used=used + 1, last_action=f"requeue_hold ({cause})")
    verb = "ended" if ended else "failed"
    return Decision(
        requeued,
        actions=(action,),
        notes=(Note("failure", f"attempt {attempt} {verb}: {cause}; requeueing held ({used + 1}/{limit})"),),
    )


def _stop(job: ManagedJob, reason: str) -> Decision:
    return Decision(
        replace(job, phase=Phase.STOPPED, stop_reason=reason),
        notes=(Note("not_requeued", f"not requeued: {reason}"),),
    )


def _checkpoint(job: ManagedJob, event: CheckpointSaved) -> Decision:
    if event.attempt != job.attempt:
        return Decision(job)
    first = not job.attempt_saved
    saved = replace(job, last_checkpoint=event.at, attempt_saved=True, failure_streak=0)
    text = f"checkpoint saved ({event.rule})" + ("; restart successful" if first and job.attempt > 0 else "")
    return Decision(saved, notes=(Note("checkpoint", text),))


def _action_done(job: ManagedJob, event: ActionDone) -> Decision:
    action = event.action
    prefix = "dry run: would have " if event.dry_run else ""
    if action.kind is ActionKind.REQUEUE_HOLD and job.phase is Phase.HOLDING and action.attempt == job.handled_attempt:
        note = Note("action", f"{prefix}requeued held ({job.requeues_used}/{job.limit})")
        if event.dry_run:
            # Nothing was held, so Slurm will never show the job pending again: go on at once.
            return _release(job, notes=(note,))
        # Released only once Slurm shows the job pending: a release while the failed attempt
        # is still COMPLETING lets Slurm set its ~120 s requeue wait after our StartTime=now.
        return Decision(replace(job, phase=Phase.HELD, last_action="requeue_hold"), notes=(note,))
    if action.kind is ActionKind.RELEASE and job.phase is Phase.RELEASING:
        return Decision(
            replace(job, phase=Phase.RESTARTING, last_action="released"),
            notes=(Note("action", f"{prefix}released; next attempt may start"),),
        )
    return Decision(job, notes=(Note("action", f"{prefix}{action.kind.value} done"),))


def _held(job: ManagedJob, event: JobHeld) -> Decision:
    if job.phase is not Phase.HELD:
        return Decision(job)
    return _release(job, notes=(Note("held", f"job is held pending (restart count {event.attempt})"),))


def _release(job: ManagedJob, notes: tuple[Note, ...]) -> Decision:
    attempt = job.handled_attempt if job.handled_attempt is not None else job.attempt
    release = Action(ActionKind.RELEASE, job.job_id, attempt, "release after requeue")
    return Decision(replace(job, phase=Phase.RELEASING, last_action="release"), actions=(release,), notes=notes)


def _action_failed(job: ManagedJob, event: ActionFailed) -> Decision:
    action = event.action
    if action.kind is ActionKind.REQUEUE_HOLD and job.phase is Phase.HOLDING:
        return _stop(
            replace(job, requeues_used=max(job.requeues_used - 1, 0), last_action="requeue refused"),
            f"Slurm refused to requeue: {event.reason}",
        )
    if action.kind is ActionKind.RELEASE and job.phase is Phase.RELEASING:
        return _stop(
            replace(job, last_action="release failed"),
            f"release failed: {event.reason}; the job may still be held: `scontrol release {job.job_id}`",
        )
    return Decision(job, notes=(Note("action", f"{action.kind.value} failed: {event.reason}"),))
