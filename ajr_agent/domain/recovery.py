"""The steps of a recovery the policy composes: release, hand over, exclude, stop, annotate."""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.domain.model import (
    Action,
    ActionKind,
    Awaiting,
    Decision,
    ManagedJob,
    Note,
    NoteKind,
    Outcome,
    Phase,
    StopCause,
)
from ajr_agent.domain.settings import Settings

# What a failed singleton job shows as its last action (for people; code reads `awaiting`)
# while its successor's release waits for the verdict.
AWAITING_VERDICT = "awaiting the verdict"


def end_attempt(job: ManagedJob, at: float, outcome: Outcome, reason: str) -> ManagedJob:
    """Close the current attempt; what was already known of its end (an exit, a cause) is kept."""
    return replace(
        job,
        attempt_ended=job.attempt_ended or at,
        attempt_outcome=outcome if job.attempt_outcome is Outcome.RUNNING else job.attempt_outcome,
        attempt_end_reason=job.attempt_end_reason or reason,
    )


def stop_and_hand_over(job: ManagedJob, settings: Settings) -> Decision:
    """Singleton mode, the verdict in: stop the failing job, then release its successor."""
    if job.attempt_ended is not None:
        return hand_to_successor(job)
    cause = job.attempt_end_reason or "the failure"
    # The successor is released only once this job is stopped: two jobs of one chain
    # must never run at once, and a cancel that fails must not be overtaken.
    cancel = Action(ActionKind.CANCEL, job.job_id, job.attempt, f"{cause}; hand over to job {job.successor}")
    # Written before the cancel: Slurm takes no AdminComment once the job has finished.
    text = f"failed: {cause}{on_nodes(job)}; releasing job {job.successor} of the chain ({job.requeues_used}/{job.limit})"
    return Decision(replace(job, last_action=f"cancel ({cause})"), actions=(*annotate(job, text, settings), cancel))


def await_verdict(job: ManagedJob, **changes: object) -> ManagedJob:
    """The job with `changes`, waiting for the verdict on its failure (the last failure's cleared)."""
    return replace(job, awaiting=Awaiting.VERDICT, verdict="", verdict_nodes="", **changes)  # type: ignore[arg-type]


def hand_to_successor(job: ManagedJob) -> Decision:
    """Release the chain's next job, first keeping the nodes a node verdict blamed out of it."""
    exclude = to_exclude(job)
    if exclude and job.successor is not None:
        action = Action(ActionKind.EXCLUDE, job.job_id, job.attempt, _why(job, exclude), target=job.successor,
                        nodes=exclude)  # fmt: skip
        return Decision(replace(job, last_action=f"exclude {exclude} from job {job.successor}"), actions=(action,))
    release = release_successor(job, job.attempt_end_reason or "the failure")
    return Decision(replace(job, last_action=f"release job {job.successor}"), actions=(release,))


def release_successor(job: ManagedJob, cause: str) -> Action:
    return Action(ActionKind.RELEASE, job.job_id, job.attempt, f"next job of the chain after {cause}", job.successor)


def stop(job: ManagedJob, cause: StopCause, reason: str, settings: Settings) -> Decision:
    stopped = replace(job, phase=Phase.STOPPED, stop_cause=cause, stop_reason=reason)
    return Decision(
        stopped,
        actions=annotate(stopped, f"not requeued: {reason}", settings),
        notes=(Note(NoteKind.NOT_REQUEUED, f"not requeued: {reason}"),),
    )


def annotate(job: ManagedJob, text: str, settings: Settings) -> tuple[Action, ...]:
    """The one-line summary users see in `scontrol show job` (AdminComment).

    Slurm refuses updates to a job that has finished, so a job whose attempt is over
    (and that AJR did not requeue) gets none.
    """
    if not settings.annotate_jobs or (job.attempt_ended is not None and job.phase is not Phase.HELD):
        return ()
    return (Action(ActionKind.ANNOTATE, job.job_id, job.attempt, f"ajr: {text}"),)


def on_nodes(job: ManagedJob) -> str:
    return f" on {job.nodes}" if job.nodes else ""


def release_held(job: ManagedJob, notes: tuple[Note, ...]) -> Decision:
    """Release the held job, after keeping the nodes a node verdict blamed out of its next attempt."""
    attempt = job.handled_attempt if job.handled_attempt is not None else job.attempt
    releasing = replace(job, phase=Phase.RELEASING)
    exclude = to_exclude(job)
    if exclude:
        action = Action(ActionKind.EXCLUDE, job.job_id, attempt, _why(job, exclude), nodes=exclude)
        return Decision(replace(releasing, last_action=f"exclude {exclude}"), actions=(action,), notes=notes)
    release = Action(ActionKind.RELEASE, job.job_id, attempt, "release after requeue")
    return Decision(replace(releasing, last_action="release"), actions=(release,), notes=notes)


def to_exclude(job: ManagedJob) -> str:
    """Nodes of a node verdict and lemon nodes not yet excluded (the attribution and the ledger
    already spared the partition's last nodes; the attribution left none when the site does not exclude)."""
    blamed = job.verdict_nodes.split(",") if job.verdict == "node" else []
    have = set(filter(None, job.excluded_nodes.split(",")))
    return ",".join(dict.fromkeys(n for n in [*blamed, *job.keep_out.split(",")] if n and n not in have))


def _why(job: ManagedJob, exclude: str) -> str:
    """The reason of an exclusion: the node verdict, the lemons, or both."""
    blamed = set(job.verdict_nodes.split(",")) if job.verdict == "node" else set()
    lemons = [n for n in exclude.split(",") if n not in blamed]
    parts = [f"node verdict: {job.verdict_nodes}"] if blamed & set(exclude.split(",")) else []
    return "; ".join([*parts, *([f"lemon node: {','.join(lemons)}"] if lemons else [])])


def after_exclusion(job: ManagedJob, action: Action, done: bool, reason: str, prefix: str) -> Decision:
    """Whatever became of the exclusion, the job is released: a stranded held job is the worse harm."""
    excluded = ",".join(filter(None, [job.excluded_nodes, action.nodes])) if done else job.excluded_nodes
    job = replace(job, excluded_nodes=excluded)
    text = f"{prefix}excluded {action.nodes} from the next attempt" if done else (
        f"could not exclude {action.nodes}: {reason}; releasing anyway")  # fmt: skip
    note = Note(NoteKind.ACTION if done else "warning", text)
    if job.phase is Phase.HANDING_OVER and job.successor is not None:
        release = release_successor(job, job.attempt_end_reason or "the failure")
    else:
        release = Action(ActionKind.RELEASE, job.job_id, action.attempt, "release after requeue")
    return Decision(replace(job, last_action="release"), actions=(release,), notes=(note,))
