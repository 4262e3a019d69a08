"""A job opting in, and what each poll shows of it: the events the policy decides on."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from ajr_agent.domain.events import (
    AttemptStarted,
    AttemptSucceeded,
    Event,
    JobEnded,
    JobHeld,
    JobVanished,
    RequeuedBySlurm,
)
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import Decision, ManagedJob, Note, NoteKind, Outcome, Phase
from ajr_agent.domain.settings import RestartSuccess, Settings
from ajr_agent.domain.spec import ApsSpec, ResumeMode


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
        app_requeues=max(successor.app_requeues, predecessor.app_requeues),
        node_requeues=max(successor.node_requeues, predecessor.node_requeues),
        infra_requeues=max(successor.infra_requeues, predecessor.infra_requeues),
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
        and c.held
    ]  # fmt: skip
    return min(held) if held else None


def observe(job: ManagedJob, snapshot: JobSnapshot, now: float, settings: Settings) -> tuple[ManagedJob, list[Event]]:
    """Compare a poll's view of the job with what AJR knew; return the refreshed job and the events."""
    events: list[Event] = []
    attempt = snapshot.restart_count
    started = snapshot.start_time or now
    is_new_attempt = attempt > job.attempt or (attempt == job.attempt and started != job.attempt_started)
    started_anew = (snapshot.running or snapshot.ended) and is_new_attempt
    if started_anew:
        events.append(AttemptStarted(job.job_id, attempt, started, snapshot.nodes))
    if job.phase is Phase.HELD and snapshot.state == "PENDING":
        events.append(JobHeld(job.job_id, attempt, now))
    if _requeued_without_ajr(job, snapshot):
        events.append(RequeuedBySlurm(job.job_id, job.attempt, now, attempt))
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
        # An attempt's nodes are those it started on: a job that completes or ends NODE_FAIL
        # is listed on the nodes it still holds (26.05: the batch host alone; 22.05, requeued
        # by Slurm, with its restart count up already), and the verdict must weigh every node
        # the attempt ran on.
        nodes=snapshot.nodes if snapshot.nodes and (started_anew or not job.nodes) else job.nodes,
        last_seen=now,
        work_dir=snapshot.work_dir or job.work_dir,
        stdout_dir=snapshot.stdout_dir or job.stdout_dir,
    )
    return refreshed, events


def _requeued_without_ajr(job: ManagedJob, snapshot: JobSnapshot) -> bool:
    """The attempt AJR watched is pending again, its restart count up, and AJR did not requeue it."""
    return (job.phase is Phase.WATCHING and job.attempt_started is not None and job.handled_attempt != job.attempt
            and snapshot.restart_count > job.attempt and snapshot.state in ("PENDING", "COMPLETING"))  # fmt: skip


def vanished(job: ManagedJob, now: float) -> list[Event]:
    """The event for a job the poll no longer lists, once."""
    return [] if job.phase is Phase.GONE else [JobVanished(job.job_id, now)]
