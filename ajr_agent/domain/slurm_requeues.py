"""Requeues Slurm makes itself: after it loses a node of a requeueable job, or at someone's `scontrol requeue`.

When slurmctld marks a node DOWN it requeues every requeueable batch job running there
(pending again, restart count up, ~120 s wait); AJR's requeuehold is then refused ("Job is
pending execution"). The queue alone cannot tell that from an operator's requeue, so the
verdict, which reads Slurm's node states, decides: a node of the job lost makes it one
failure, recovered as AJR's own (excluded, released, the wait cleared); otherwise it is
left to Slurm and not counted. The policy composes these steps (domain.policy).
"""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.domain.events import RequeuedBySlurm
from ajr_agent.domain.model import Action, Awaiting, Decision, ManagedJob, Note, NoteKind, Outcome, Phase
from ajr_agent.domain.recovery import annotate, await_verdict, end_attempt, on_nodes
from ajr_agent.domain.settings import Settings


def judged_attempt(job: ManagedJob) -> int | None:
    """The attempt the awaited verdict judges: the one Slurm requeued, or the failure AJR handles."""
    return job.attempt if job.awaiting is Awaiting.LOST_NODE else job.handled_attempt


def newly_awaited(before: ManagedJob, after: ManagedJob) -> int | None:
    """The attempt whose verdict `after` awaits and `before` did not, else None: the one to ask for."""
    wanted = (after.awaiting, judged_attempt(after))
    return wanted[1] if after.awaiting is not None and wanted != (before.awaiting, judged_attempt(before)) else None


def seen(job: ManagedJob, event: RequeuedBySlurm) -> Decision:
    """The poll shows the watched attempt requeued without AJR: ask which node Slurm lost before counting."""
    if event.attempt != job.attempt or job.handled_attempt == event.attempt or job.phase is not Phase.WATCHING:
        return Decision(job)
    waiting = replace(job, phase=Phase.HELD, awaiting=Awaiting.LOST_NODE, attempt_ended=job.attempt_ended or event.at,
                      last_action="requeued by Slurm")  # fmt: skip
    text = (f"Slurm requeued attempt {event.attempt} itself (restart count {event.restart_count}): asking Slurm "
            "whether it lost a node of the job")  # fmt: skip
    return Decision(waiting, notes=(Note(NoteKind.HELD, text),))


def not_lost(job: ManagedJob, why: str) -> Decision:
    """Slurm's requeue with no node of the job lost: someone's requeue, left to Slurm and not counted."""
    left = replace(job, phase=Phase.WATCHING, awaiting=None, handled_attempt=job.attempt, last_action=None)
    left = end_attempt(left, job.attempt_ended or job.last_seen, Outcome.ENDED, "requeued outside AJR")
    text = (f"attempt {job.attempt} was requeued outside AJR and {why}: an operator's, the user's or a preemption's "
            "requeue; not counted, left to Slurm")  # fmt: skip
    return Decision(left, notes=(Note(NoteKind.ENDED, text),))


def failed(job: ManagedJob, attempt: int, cause: str, settings: Settings) -> Decision:
    """A failure of an attempt Slurm has requeued already: counted, no requeuehold; the release (once the
    verdict is in) clears the wait Slurm set."""
    used, limit = job.requeues_used + 1, job.limit
    held = await_verdict(job, phase=Phase.HELD, requeues_used=used, last_action=f"requeued by Slurm ({cause})")
    trail = annotate(held, f"requeued by Slurm after {cause}{on_nodes(job)} ({used}/{limit})", settings)
    text = f"attempt {attempt} failed: {cause}; Slurm has requeued it itself ({used}/{limit})"
    return Decision(held, trail, (Note(NoteKind.FAILURE, text),))


def already_requeued(job: ManagedJob, action: Action, at: float, settings: Settings) -> Decision:
    """AJR's requeuehold was refused because the job is pending already: Slurm requeued it first."""
    job = end_attempt(job, at, Outcome.FAILED, f"requeued by Slurm after {action.reason}")
    held = replace(job, phase=Phase.HELD, last_action="requeued by Slurm")
    count = f"({job.requeues_used}/{job.limit})"
    trail = annotate(held, f"requeued by Slurm after {action.reason}{on_nodes(job)} {count}", settings)
    text = f"Slurm had requeued the job itself (it was pending already): not requeued again {count}"
    return Decision(held, trail, (Note(NoteKind.ACTION, text),))
