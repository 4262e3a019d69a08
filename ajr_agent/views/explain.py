"""Why a job is or is not managed, and what the agent will do next: plain sentences from plain data.

Used by `ajr explain`: `gather` reads the facts from the store (the caller asks Slurm), `explain`
makes the sentences, so every case is tested without a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ajr_agent.adapters.logs import log_prefix
from ajr_agent.adapters.store import Store
from ajr_agent.domain.model import Attempt, ManagedJob, Outcome, Phase, StopCause, UnmanagedJob
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.spec import EXAMPLE, SPEC_KEY, parse_comment
from ajr_agent.views.queries import chain_attempts

# The agent polls every few seconds; a last poll older than this means it is not running.
AGENT_SILENT_AFTER = 60.0


@dataclass(frozen=True)
class Facts:
    """Everything known about one job id, from the store and from Slurm."""

    job_id: int
    managed: ManagedJob | None
    unmanaged: UnmanagedJob | None
    live: JobSnapshot | None  # None: Slurm no longer (or never) knew it
    log_files: Sequence[str]
    searched_dirs: Sequence[Path]
    attempts: Sequence[Attempt]
    crashloop_threshold: int
    agent_seen_recently: bool


def gather(store: Store, job_id: int, live: JobSnapshot | None, log_dirs: Sequence[Path], crashloop_threshold: int,
           now: float) -> Facts:  # fmt: skip
    """What the store knows of `job_id`, with what Slurm showed of it (`live`) and the configured log_dirs."""
    job = store.job(job_id)
    refused = store.unmanaged(job_id)
    searched = [Path(d) for d in (job.work_dir, job.stdout_dir) if d] + list(log_dirs) if job is not None else []
    last_poll = store.meta().get("last_poll_at")
    return Facts(
        job_id=job_id, managed=job, unmanaged=refused[0] if refused else None, live=live,
        log_files=[f.position.path for f in store.files(job_id)], searched_dirs=searched,
        attempts=chain_attempts(store, job) if job is not None else [], crashloop_threshold=crashloop_threshold,
        agent_seen_recently=isinstance(last_poll, (int, float)) and now - last_poll < AGENT_SILENT_AFTER,
    )  # fmt: skip


def explain(facts: Facts) -> list[str]:
    """Sentences, most important first: whether the job is managed and why, then what comes next."""
    if facts.managed is not None:
        return _managed(facts, facts.managed)
    if facts.unmanaged is not None:
        return [
            f"job {facts.job_id} is NOT managed: its APS spec is invalid: {facts.unmanaged.problem}",
            "next: nothing; fix the comment (scontrol update JobId=N Comment=...) or resubmit, and AJR picks it up",
        ]
    live = facts.live
    if live is None:
        return [f"job {facts.job_id} is known neither to Slurm nor to AJR: it ended more than MinJobAge ago, "
                "or never existed"]  # fmt: skip
    verdict = parse_comment(live.comment)
    if verdict.problem:
        return [f"job {facts.job_id} is NOT managed: {verdict.problem}",
                "next: the agent records this at its next poll; fix the comment or resubmit"]  # fmt: skip
    if not verdict.managed:
        shown = live.comment or "(no comment)"
        return [
            f"job {facts.job_id} is NOT managed: its comment has no {SPEC_KEY} spec: {shown}",
            f"to be managed, submit it with --comment='{EXAMPLE}' (or {{\"APS\": {{}}}} for the defaults)",
        ]
    if not facts.agent_seen_recently:
        return [f"job {facts.job_id} has a valid spec but the agent has not seen it: is ajr-agent running? "
                "(`ajr status` shows its last poll)"]  # fmt: skip
    return [f"job {facts.job_id} has a valid spec; the agent adopts it at its next poll"]


def _managed(facts: Facts, job: ManagedJob) -> list[str]:
    lines = [f"job {job.job_id} is managed in {job.mode.value} mode: requeues {job.requeues_used} of {job.limit}"
             + (f" (the job asked {job.requested_limit}, the site allows fewer)"
                if job.requested_limit is not None and job.requested_limit > job.limit else "")]  # fmt: skip
    lines += _logs(facts, job)
    lines += _next(facts, job)
    return lines


def _logs(facts: Facts, job: ManagedJob) -> list[str]:
    if facts.log_files:
        return [f"log files followed: {', '.join(facts.log_files)}"]
    if facts.live is not None and facts.live.running:
        dirs = ", ".join(map(str, facts.searched_dirs)) or "(no directory known)"
        return [
            f"no log file found: AJR looks for files named '{log_prefix(job.name, job.job_id)}_<yy-mm-dd>_time_"
            f"<HH-MM-SS>.log', owned by {job.user}, in: {dirs}; until one appears only the job's end is seen"
        ]
    return []


def _next(facts: Facts, job: ManagedJob) -> list[str]:
    phase = job.phase
    left = job.limit - job.requeues_used
    if phase is Phase.STOPPED:
        lines = [f"stopped: {job.stop_reason}"]
        if job.stop_cause is StopCause.CRASH_LOOP:
            lines.append("crash-looping: the last failed attempts saved no checkpoint:")
            lines += [f"  {line}" for line in _failed_without_checkpoint(facts.attempts, facts.crashloop_threshold)]
        return lines + ["next: nothing; AJR will not requeue it again (an operator may: `ajr requeue "
                        f"{job.job_id}`)"]  # fmt: skip
    if phase in (Phase.HOLDING, Phase.HELD, Phase.RELEASING):
        return [f"waiting for release: requeued held after the failure of attempt {job.handled_attempt}; "
                f"AJR releases it once Slurm shows it pending (phase {phase.value})"]  # fmt: skip
    if phase is Phase.RESTARTING:
        reason = f" (Slurm's reason: {facts.live.reason})" if facts.live else ""
        return [f"released; waiting for Slurm to start the next attempt{reason}"]
    if phase is Phase.HANDING_OVER:
        return [f"handing over: stopping this job and releasing job {job.successor} of the chain"]
    if phase is Phase.HANDED_OVER:
        return [f"handed over: job {job.successor} carries the chain on"]
    if phase is Phase.FINISHED:
        return [f"finished ({job.stop_reason or job.slurm_state or 'ended'}); nothing to do"]
    if phase is Phase.GONE:
        return ["gone from Slurm's memory; nothing to do"]
    if phase is Phase.FORGOTTEN:
        return [f"forgotten: {job.stop_reason}; AJR does not act on it any more"]
    recovery = "requeue it" if job.chain == "" else "release the next held job of its chain"
    if left <= 0:
        return [f"watching attempt {job.attempt}; on a failure AJR will NOT {recovery}: limit reached "
                f"({job.requeues_used}/{job.limit})"]  # fmt: skip
    return [f"watching attempt {job.attempt}; on a failure AJR will {recovery} ({left} left)"]


def _failed_without_checkpoint(attempts: Sequence[Attempt], threshold: int) -> list[str]:
    failed = [a for a in attempts if a.outcome is Outcome.FAILED and a.first_checkpoint is None]
    return [f"job {a.job_id} attempt {a.attempt}: {a.end_reason or 'failed'}, no checkpoint"
            for a in failed[-threshold:]]  # fmt: skip
