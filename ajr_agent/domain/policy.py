"""The recovery policy: pure functions from (job, event, settings) to decisions.

No I/O and no clock: time comes in with the events. Every (phase, event) pair has an
answer, so the agent never meets a case it cannot decide.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Sequence

from ajr_agent.domain.settings import RestartSuccess, Settings
from ajr_agent.domain.model import (
    Action,
    ActionDone,
    ActionFailed,
    ActionKind,
    AnomalyFound,
    Attributed,
    AttemptStarted,
    Awaiting,
    AttemptSucceeded,
    CheckpointSaved,
    Decision,
    Event,
    Fault,
    JobEnded,
    JobHeld,
    JobVanished,
    ManagedJob,
    Note,
    NoteKind,
    Outcome,
    Phase,
    StopCause,
    StragglerFound,
    VerdictOverdue,
)
from ajr_agent.domain.jobs import FAILED_STATES, JobSnapshot
from ajr_agent.domain.spec import ApsSpec, ResumeMode
from ajr_agent.domain.text import printable

# Phases in which AJR is between a failure and the next attempt.
RECOVERING = frozenset({Phase.HOLDING, Phase.HELD, Phase.RELEASING, Phase.RESTARTING, Phase.HANDING_OVER})
# Phases in which a job's own story is over; late lines change nothing.
OVER = frozenset({Phase.FINISHED, Phase.GONE, Phase.HANDED_OVER, Phase.FORGOTTEN})
# A singleton job that had already ended when it failed: its successor is released
# once the verdict is in.
AWAITING_VERDICT = "awaiting the verdict"
# Slurm's reasons for a job that waits for a release.
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})


def effective_limit(spec: ApsSpec, settings: Settings) -> int:
    """A job may lower the site's requeue cap, never raise it."""
    if spec.max_requeue_times is None:
        return settings.site_requeue_cap
    return min(spec.max_requeue_times, settings.site_requeue_cap)


def chain_key(name: str, root_job_id: int) -> str:
    """A singleton chain's id: its name and its first job.

    Slurm chains the jobs of one user and one name; but users reuse names for new
    experiments, so AJR's chain is what it saw hand over from one job to the next.
    """
    return f"{name}@{root_job_id}"


def adopt(snapshot: JobSnapshot, spec: ApsSpec, settings: Settings, now: float, watching_since: float) -> Decision:
    """The record of a job seen for the first time with a valid spec.

    A job whose attempt already ended before AJR started watching this cluster (a fresh
    state database next to old failed jobs) is recorded but not recovered: acting on
    failures nobody asked AJR to watch would surprise everyone. A job that ended while a
    restarted agent was down is still recovered, since `watching_since` is when the
    state database began, not when this process started.
    """
    limit = effective_limit(spec, settings)
    singleton = spec.auto_resume_mode is ResumeMode.SINGLETON
    job = ManagedJob(
        job_id=snapshot.job_id,
        name=snapshot.name,
        user=snapshot.user,
        user_id=snapshot.user_id,
        mode=spec.auto_resume_mode,
        requested_limit=spec.max_requeue_times,
        limit=limit,
        attempt=-1,
        chain=chain_key(snapshot.name, snapshot.job_id) if singleton else "",
        heartbeat_timeout=spec.heartbeat_timeout,
        partition=snapshot.partition,
        work_dir=snapshot.work_dir,
        stdout_dir=snapshot.stdout_dir,
        first_seen=now,
        last_seen=now,
    )
    asked = f" (job asked {spec.max_requeue_times}, site cap {settings.site_requeue_cap})"
    limit_text = f"{limit}{asked if spec.max_requeue_times not in (None, limit) else ''}"
    note = Note(NoteKind.MANAGED, f"managed in {job.mode.value} mode, requeue limit {limit_text}")
    if snapshot.ended and (snapshot.end_time or now) < watching_since:
        job = replace(
            job,
            phase=Phase.FINISHED,
            attempt=snapshot.restart_count,
            attempt_started=snapshot.start_time,
            attempt_ended=snapshot.end_time,
            attempt_outcome=Outcome.ENDED,
            attempt_end_reason=f"{snapshot.state} before AJR watched",
            slurm_state=snapshot.state,
        )
        note = Note(NoteKind.MANAGED, f"ended {snapshot.state} before AJR started watching; not recovered")
    return Decision(job, notes=(note,))


def inherit(successor: ManagedJob, predecessor: ManagedJob) -> ManagedJob:
    """The next job of a singleton chain joins its chain and carries its count of releases and failures."""
    return replace(
        successor,
        chain=predecessor.chain,
        excluded_nodes=",".join(filter(None, [predecessor.excluded_nodes, successor.excluded_nodes])),
        requeues_used=max(successor.requeues_used, predecessor.requeues_used),
        failure_streak=predecessor.failure_streak,
        limit=min(successor.limit, predecessor.limit),
    )


def next_in_chain(job: ManagedJob, candidates: Iterable[JobSnapshot]) -> int | None:
    """The oldest held job of the same chain (same user, same name), if any.

    Jobs of another user never count, even with the same name.
    """
    held = [
        c.job_id
        for c in candidates
        if c.job_id != job.job_id and c.user_id == job.user_id and c.name == job.name
        and c.state == "PENDING" and c.reason in HELD_REASONS
    ]  # fmt: skip
    return min(held) if held else None


def observe(job: ManagedJob, snapshot: JobSnapshot, now: float, settings: Settings) -> tuple[ManagedJob, list[Event]]:
    """Compare a poll's view of the job with what AJR knew; return the refreshed job and the events."""
    events: list[Event] = []
    attempt = snapshot.restart_count
    started = snapshot.start_time or now
    is_new_attempt = attempt > job.attempt or (attempt == job.attempt and started != job.attempt_started)
    if (snapshot.running or snapshot.ended) and is_new_attempt:
        events.append(AttemptStarted(job.job_id, attempt, started, snapshot.nodes))
    if job.phase is Phase.HELD and snapshot.state == "PENDING":
        events.append(JobHeld(job.job_id, attempt, now))
    if (
        settings.restart_success is RestartSuccess.RUNTIME
        and snapshot.running
        and not is_new_attempt
        and not job.attempt_succeeded
        and now - started >= settings.restart_success_minutes * 60
    ):
        events.append(AttemptSucceeded(job.job_id, attempt, now))
    if snapshot.ended:
        ended_at = snapshot.end_time or now
        already_seen = attempt == job.attempt and job.attempt_ended is not None and not is_new_attempt
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


def decide(job: ManagedJob, event: Event, settings: Settings, successor: int | None = None) -> Decision:
    """The policy's answer to one event for one job.

    `successor` is, for a singleton job, the held job of its chain that would carry on.
    """
    match event:
        case AttemptStarted():
            return _attempt_started(job, event)
        case AttemptSucceeded():
            return _succeeded(job, event.attempt, f"ran {settings.restart_success_minutes:g} min")
        case JobEnded():
            return _job_ended(job, event, settings, successor)
        case AnomalyFound():
            job = replace(job, last_anomaly=f"{event.category} ({event.rule})")
            cause = f"{event.category} ({event.rule})"
            return _failure(job, event.attempt, event.at, cause, settings, successor)
        case CheckpointSaved():
            return _checkpoint(job, event, settings)
        case ActionDone():
            return _action_done(job, event, settings)
        case ActionFailed():
            return _action_failed(job, event)
        case JobHeld():
            return _held(job, event)
        case Attributed():
            return _attributed(job, event, settings)
        case VerdictOverdue():
            return _verdict_overdue(job, event, settings)
        case StragglerFound():
            return _straggler(job, event, settings, successor)
        case JobVanished():
            return Decision(replace(job, phase=Phase.GONE), notes=(Note(NoteKind.GONE, "job left slurmctld's memory"),))
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
    )
    where = f" on {event.nodes}" if event.nodes else ""
    return Decision(started, notes=(Note(NoteKind.ATTEMPT, f"attempt {event.attempt} started{where}"),))


def _end_attempt(job: ManagedJob, at: float, outcome: Outcome, reason: str) -> ManagedJob:
    """Close the current attempt; what was already known of its end (an exit, a cause) is kept."""
    return replace(
        job,
        attempt_ended=job.attempt_ended or at,
        attempt_outcome=outcome if job.attempt_outcome is Outcome.RUNNING else job.attempt_outcome,
        attempt_end_reason=job.attempt_end_reason or reason,
    )


def _job_ended(job: ManagedJob, event: JobEnded, settings: Settings, successor: int | None) -> Decision:
    state = event.slurm_state
    job = replace(job, attempt_ended=event.at, slurm_state=state)
    if state in FAILED_STATES:
        job = replace(job, attempt_outcome=Outcome.FAILED, attempt_end_reason=job.attempt_end_reason or state)
        return _failure(job, event.attempt, event.at, f"job ended {state}", settings, successor)
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


def _failure(job: ManagedJob, attempt: int, at: float, cause: str, settings: Settings,
             successor: int | None) -> Decision:  # fmt: skip
    """A failure of `attempt`: recover, or say why not. One failure gives at most one recovery."""
    if attempt != job.attempt:
        return Decision(job, notes=(Note(NoteKind.IGNORED, f"{cause} in attempt {attempt}, which is over; ignored"),))
    if job.handled_attempt == attempt:
        return Decision(job, notes=(Note(NoteKind.DUPLICATE, f"{cause}: same failure of attempt {attempt}, already handled"),))
    if job.phase in OVER:
        return Decision(job, notes=(Note(NoteKind.IGNORED, f"{cause} after the job had {job.slurm_state or 'ended'}"),))
    streak = job.failure_streak + (0 if job.attempt_succeeded else 1)
    failed = replace(job, handled_attempt=attempt, failure_streak=streak, attempt_outcome=Outcome.FAILED,
                     attempt_end_reason=job.attempt_end_reason or cause)  # fmt: skip
    used, limit = job.requeues_used, job.limit
    if streak >= settings.crashloop_threshold:
        return _stop(
            failed,
            StopCause.CRASH_LOOP,
            f"{cause}; crash-looping: {streak} failed attempts in a row without a new checkpoint "
            f"(threshold {settings.crashloop_threshold})",
            settings,
        )
    if used >= limit:
        return _stop(failed, StopCause.LIMIT, f"{cause}; requeue limit reached ({used}/{limit})", settings)
    if job.mode is ResumeMode.SINGLETON:
        return _hand_over(failed, cause, successor, settings)
    action = Action(ActionKind.REQUEUE_HOLD, job.job_id, attempt, cause)
    # Held at once, so the failed run gives its nodes back; released once the verdict is in.
    requeued = _await_verdict(failed, phase=Phase.HOLDING, requeues_used=used + 1,
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
            actions=_annotate(job, f"{cause}{_on(job)}; chain ended: no held job left", settings),
            notes=(Note(NoteKind.CHAIN_ENDED, f"attempt failed: {cause}; chain ended: no held job of {job.name} left"),),
        )
    used = job.requeues_used + 1
    handing = _await_verdict(job, phase=Phase.HANDING_OVER, successor=successor, requeues_used=used,
                             last_action=AWAITING_VERDICT)  # fmt: skip
    # The verdict comes first: it may keep a faulty node out of the successor.
    return Decision(handing, notes=(Note(NoteKind.FAILURE, f"attempt failed: {cause}; releasing job {successor} "
                                                          f"({used}/{job.limit})"),))  # fmt: skip


def _stop_and_hand_over(job: ManagedJob, settings: Settings) -> Decision:
    """Singleton mode, the verdict in: stop the failing job, then release its successor."""
    if job.attempt_ended is not None:
        return _hand_to_successor(job)
    cause = job.attempt_end_reason or "the failure"
    # The successor is released only once this job is stopped: two jobs of one chain
    # must never run at once, and a cancel that fails must not be overtaken.
    cancel = Action(ActionKind.CANCEL, job.job_id, job.attempt, f"{cause}; hand over to job {job.successor}")
    # Written before the cancel: Slurm takes no AdminComment once the job has finished.
    text = f"failed: {cause}{_on(job)}; releasing job {job.successor} of the chain ({job.requeues_used}/{job.limit})"
    return Decision(replace(job, last_action=f"cancel ({cause})"), actions=(*_annotate(job, text, settings), cancel))


def _await_verdict(job: ManagedJob, **changes: object) -> ManagedJob:
    """The job with `changes`, waiting for the verdict on its failure (the last failure's cleared)."""
    return replace(job, awaiting=Awaiting.VERDICT, verdict="", verdict_nodes="", **changes)  # type: ignore[arg-type]


def _hand_to_successor(job: ManagedJob) -> Decision:
    """Release the chain's next job, first keeping the nodes a node verdict blamed out of it."""
    exclude = _to_exclude(job)
    if exclude and job.successor is not None:
        action = Action(ActionKind.EXCLUDE, job.job_id, job.attempt, f"node verdict: {job.verdict_nodes}",
                        target=job.successor, nodes=exclude)  # fmt: skip
        return Decision(replace(job, last_action=f"exclude {exclude} from job {job.successor}"), actions=(action,))
    release = _release_successor(job, job.attempt_end_reason or "the failure")
    return Decision(replace(job, last_action=f"release job {job.successor}"), actions=(release,))


def _release_successor(job: ManagedJob, cause: str) -> Action:
    return Action(ActionKind.RELEASE, job.job_id, job.attempt, f"next job of the chain after {cause}", job.successor)


def _stop(job: ManagedJob, cause: StopCause, reason: str, settings: Settings) -> Decision:
    stopped = replace(job, phase=Phase.STOPPED, stop_cause=cause, stop_reason=reason)
    return Decision(
        stopped,
        actions=_annotate(stopped, f"not requeued: {reason}", settings),
        notes=(Note(NoteKind.NOT_REQUEUED, f"not requeued: {reason}"),),
    )


def _annotate(job: ManagedJob, text: str, settings: Settings) -> tuple[Action, ...]:
    """The one-line summary users see in `scontrol show job` (AdminComment).

    Slurm refuses updates to a job that has finished, so a job whose attempt is over
    (and that AJR did not requeue) gets none.
    """
    if not settings.annotate_jobs or (job.attempt_ended is not None and job.phase is not Phase.HELD):
        return ()
    return (Action(ActionKind.ANNOTATE, job.job_id, job.attempt, f"ajr: {text}"),)


def _on(job: ManagedJob) -> str:
    return f" on {job.nodes}" if job.nodes else ""


def _succeeded(job: ManagedJob, attempt: int, how: str) -> Decision:
    if attempt != job.attempt or job.attempt_succeeded:
        return Decision(job)
    succeeded = replace(job, attempt_succeeded=True, failure_streak=0)
    text = f"restart successful ({how})" if job.attempt > 0 or job.chain else f"attempt {attempt} healthy ({how})"
    return Decision(succeeded, notes=(Note(NoteKind.SUCCESS, text),))


def _checkpoint(job: ManagedJob, event: CheckpointSaved, settings: Settings) -> Decision:
    if event.attempt != job.attempt:
        return Decision(job)
    first = job.attempt_first_checkpoint or event.at
    saved = replace(job, last_checkpoint=event.at, attempt_first_checkpoint=first, attempt_last_checkpoint=event.at)
    notes = [Note(NoteKind.CHECKPOINT, f"checkpoint saved ({event.rule})")]
    if settings.restart_success is RestartSuccess.CHECKPOINT and not job.attempt_succeeded:
        success = _succeeded(saved, event.attempt, "first checkpoint saved")
        return Decision(success.job, notes=(*notes, *success.notes))
    return Decision(saved, notes=tuple(notes))


def _action_done(job: ManagedJob, event: ActionDone, settings: Settings) -> Decision:
    action = event.action
    prefix = "dry run: would have " if event.dry_run else ""
    if action.kind is ActionKind.ANNOTATE:
        return Decision(job)
    if action.kind is ActionKind.REQUEUE_HOLD and job.phase is Phase.HOLDING and action.attempt == job.handled_attempt:
        job = _end_attempt(job, event.at, Outcome.FAILED, f"requeued by AJR after {action.reason}")
        note = Note(NoteKind.ACTION, f"{prefix}requeued held ({job.requeues_used}/{job.limit})")
        held = replace(job, phase=Phase.HELD, last_action="requeue_hold")
        trail = _annotate(held, f"requeued after {action.reason}{_on(job)} ({job.requeues_used}/{job.limit})", settings)
        if event.dry_run and job.awaiting is None:
            # Nothing was held, so Slurm will never show the job pending again: go on at once.
            release = _release(job, notes=(note,))
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
        handing = _hand_to_successor(job)
        return Decision(handing.job, handing.actions, (Note(NoteKind.ACTION, f"{prefix}cancelled the failing job"),))
    if action.kind is ActionKind.EXCLUDE and job.phase in (Phase.RELEASING, Phase.HANDING_OVER):
        return _after_exclusion(job, action, True, "", prefix)
    if action.kind is ActionKind.DRAIN:
        return Decision(job, notes=(Note(NoteKind.ACTION, f"{prefix}drained {action.nodes}: {action.reason}"),))
    return Decision(job, notes=(Note(NoteKind.ACTION, f"{prefix}{action.kind.value} done"),))


def _held(job: ManagedJob, event: JobHeld) -> Decision:
    if job.phase is not Phase.HELD or job.awaiting is Awaiting.VERDICT:
        return Decision(job)
    return _release(job, notes=(Note(NoteKind.HELD, f"job is held pending (restart count {event.attempt})"),))


def _release(job: ManagedJob, notes: tuple[Note, ...]) -> Decision:
    """Release the held job, after keeping the nodes a node verdict blamed out of its next attempt."""
    attempt = job.handled_attempt if job.handled_attempt is not None else job.attempt
    releasing = replace(job, phase=Phase.RELEASING)
    exclude = _to_exclude(job)
    if exclude:
        action = Action(ActionKind.EXCLUDE, job.job_id, attempt, f"node verdict: {job.verdict_nodes}", nodes=exclude)
        return Decision(replace(releasing, last_action=f"exclude {exclude}"), actions=(action,), notes=notes)
    release = Action(ActionKind.RELEASE, job.job_id, attempt, "release after requeue")
    return Decision(replace(releasing, last_action="release"), actions=(release,), notes=notes)


def _to_exclude(job: ManagedJob) -> str:
    """Nodes of a node verdict not yet excluded (the attribution already spared the partition's last
    nodes, and left none when the site does not exclude)."""
    if job.verdict != "node":
        return ""
    have = set(filter(None, job.excluded_nodes.split(",")))
    return ",".join(n for n in job.verdict_nodes.split(",") if n and n not in have)


def _after_exclusion(job: ManagedJob, action: Action, done: bool, reason: str, prefix: str) -> Decision:
    """Whatever became of the exclusion, the job is released: a stranded held job is the worse harm."""
    excluded = ",".join(filter(None, [job.excluded_nodes, action.nodes])) if done else job.excluded_nodes
    job = replace(job, excluded_nodes=excluded)
    text = f"{prefix}excluded {action.nodes} from the next attempt" if done else (
        f"could not exclude {action.nodes}: {reason}; releasing anyway")  # fmt: skip
    note = Note(NoteKind.ACTION if done else "warning", text)
    if job.phase is Phase.HANDING_OVER and job.successor is not None:
        release = _release_successor(job, job.attempt_end_reason or "the failure")
    else:
        release = Action(ActionKind.RELEASE, job.job_id, action.attempt, "release after requeue")
    return Decision(replace(job, last_action="release"), actions=(release,), notes=(note,))


def _attributed(job: ManagedJob, event: Attributed, settings: Settings) -> Decision:
    if event.attempt != job.handled_attempt:
        return Decision(job)
    verdict = event.verdict
    nodes = ",".join(verdict.nodes)
    where = {Fault.NODE: f"node {nodes}" if nodes else "a node (which one is not known)",
             Fault.APPLICATION: "the application", Fault.INFRASTRUCTURE: "shared infrastructure"}.get(verdict.fault,
                                                                                                   "unknown")  # fmt: skip
    attributed = replace(job, verdict=verdict.fault, verdict_nodes=",".join(event.exclude))
    notes = [Note(NoteKind.VERDICT, text) for text in event.notes]
    notes.append(Note(NoteKind.VERDICT, f"fault lies with {where}: {verdict.cause}"))
    drains, drain_notes = _drains(job, event, settings)
    going_on = _after_verdict(attributed, settings) if job.awaiting is Awaiting.VERDICT else Decision(attributed)
    return Decision(going_on.job, (*drains, *going_on.actions), (*notes, *drain_notes, *going_on.notes))


def _verdict_overdue(job: ManagedJob, event: VerdictOverdue, settings: Settings) -> Decision:
    if event.attempt != job.handled_attempt or job.awaiting is not Awaiting.VERDICT:
        return Decision(job)
    note = Note(NoteKind.WARNING, f"no verdict after {event.waited:.0f} s (node logs or Slurm do not answer): "
                                  "going on without it, no node kept out")  # fmt: skip
    going_on = _after_verdict(job, settings)
    return Decision(going_on.job, going_on.actions, (note, *going_on.notes))


def _after_verdict(job: ManagedJob, settings: Settings) -> Decision:
    """Go on with the recovery that waited for the verdict."""
    job = replace(job, awaiting=None)
    if job.phase is Phase.HANDING_OVER:
        return _stop_and_hand_over(job, settings)
    if job.phase is Phase.HELD and (settings.dry_run or job.slurm_state == "PENDING"):
        # Slurm shows the job pending already (or, in dry run, never will): no poll to wait for.
        return _release(job, notes=())
    return Decision(job)  # still holding: the release follows the hold's JobHeld


def _drains(job: ManagedJob, event: Attributed, settings: Settings) -> tuple[tuple[Action, ...], tuple[Note, ...]]:
    """Drain the nodes a node verdict blamed, within the site's hourly budget and never a partition's last ones."""
    verdict = event.verdict
    if not settings.drain_faulty_nodes or verdict.fault is not Fault.NODE or not verdict.nodes:
        return (), ()
    if event.cluster is None:
        return (), (Note(NoteKind.WARNING, f"no node drained: cannot read the partitions: {event.cluster_error}"),)
    partitions = {name: list(members) for name, members in event.cluster.partitions}
    drain, spared = plan_drains(verdict.nodes, event.drains_last_hour, partitions, set(event.cluster.out_of_service),
                                settings)  # fmt: skip
    evidence = verdict.evidence[0] if verdict.evidence else verdict.cause
    # The evidence is a line of the user's log: in a node's Reason, every admin's `sinfo -R`
    # shows it, so it goes in as one printable line.
    reason = printable(f"ajr: job {job.job_id} {verdict.cause}: {evidence}", 250)
    actions = tuple(Action(ActionKind.DRAIN, job.job_id, event.attempt, reason, nodes=node) for node in drain)
    return actions, tuple(Note(NoteKind.WARNING, f"not drained: {text}") for text in spared)


def _straggler(job: ManagedJob, event: StragglerFound, settings: Settings, successor: int | None) -> Decision:
    if event.attempt != job.attempt or job.straggler_reported:
        return Decision(job)
    recent = ", ".join(f"{v:g}" for v in event.recent)
    text = (f"straggler: throughput fell below {settings.straggler_fraction:.0%} of the attempt's baseline "
            f"{event.baseline:g} for {len(event.recent)} reports ({recent})")  # fmt: skip
    reported = replace(job, straggler_reported=True, last_anomaly="straggler")
    if not settings.straggler_recovery:
        return Decision(reported, notes=(Note(NoteKind.STRAGGLER, text),))
    failure = _failure(reported, event.attempt, event.at, "straggler (throughput drop)", settings, successor)
    return Decision(failure.job, failure.actions, (Note(NoteKind.STRAGGLER, text), *failure.notes))


def plan_drains(nodes: Sequence[str], drains_last_hour: int, partitions: dict[str, list[str]],
                out_of_service: set[str], settings: Settings) -> tuple[list[str], list[str]]:  # fmt: skip
    """Which of a node verdict's nodes to drain, and why the others are spared.

    Never more than `max_drains_per_hour`, and never a node whose draining would leave
    fewer than `drain_keep_nodes` nodes in service in one of its partitions.
    """
    if not settings.drain_faulty_nodes:
        return [], []
    drain: list[str] = []
    spared: list[str] = []
    gone = set(out_of_service)
    for node in nodes:
        if node in gone:
            continue
        if drains_last_hour + len(drain) >= settings.max_drains_per_hour:
            spared.append(f"{node}: already {settings.max_drains_per_hour} drains in the last hour")
            continue
        short = [p for p, members in partitions.items()
                 if node in members and len([m for m in members if m not in gone | {node}]) < settings.drain_keep_nodes]  # fmt: skip
        if short:
            spared.append(f"{node}: one of the last nodes in service in partition {', '.join(short)}")
            continue
        drain.append(node)
        gone.add(node)
    return drain, spared


def _action_failed(job: ManagedJob, event: ActionFailed) -> Decision:
    action = event.action
    if action.kind is ActionKind.ANNOTATE:
        return Decision(job, notes=(Note(NoteKind.ACTION, f"AdminComment not written: {event.reason}"),))
    if action.kind is ActionKind.EXCLUDE and job.phase in (Phase.RELEASING, Phase.HANDING_OVER):
        return _after_exclusion(job, action, False, event.reason, "")
    if action.kind is ActionKind.REQUEUE_HOLD and job.phase is Phase.HOLDING:
        stopped = replace(job, requeues_used=max(job.requeues_used - 1, 0), last_action="requeue refused",
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
