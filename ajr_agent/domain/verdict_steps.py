"""What a verdict changes for a handled failure: taken, looked at again in Slurm's node states, or overdue.

The verdict on a failed attempt comes back from off the loop (runtime.verdicts); the held job's
release, or a singleton chain's hand-over, waits for it. Pure functions over the job; the
policy (domain.policy) calls them.
"""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.domain import budgets, slurm_requeues
from ajr_agent.domain.drains import drain_actions
from ajr_agent.domain.events import Attributed, VerdictOverdue
from ajr_agent.domain.model import Awaiting, Basis, Decision, Fault, ManagedJob, Note, NoteKind, Phase
from ajr_agent.domain.recovery import release_held, stop_and_hand_over
from ajr_agent.domain.settings import Settings


def release_after_a_look(job: ManagedJob, notes: tuple[Note, ...], settings: Settings) -> Decision:
    """Release the held job; unless its verdict is on a node already, first read Slurm's states of
    the failed attempt's nodes once more. The failure line may have been judged before Slurm gave
    up a node that died with the job: by the time the requeued job is pending, Slurm has. Not in
    a dry run (nothing was held, so nothing waited) nor after an overdue verdict (no verdict: Slurm
    or the node logs did not answer in time once already, and a held job must not wait twice)."""
    if job.verdict in ("", Fault.NODE) or settings.dry_run:
        return release_held(job, notes)
    return Decision(replace(job, awaiting=Awaiting.NODE_STATES), notes=notes)


def may_blame_a_lost_node(job: ManagedJob) -> bool:
    """Slurm ended the handled attempt NODE_FAIL and the verdict did not put it on a node."""
    return job.slurm_state == "NODE_FAIL" and job.verdict is not Fault.NODE


def attributed(job: ManagedJob, event: Attributed, settings: Settings) -> Decision:
    """Take the verdict on the handled failure: its budget, its drains, then the recovery that waited for it."""
    if event.attempt != job.handled_attempt:
        return Decision(job)
    verdict = event.verdict
    nodes = ",".join(verdict.nodes)
    where = {Fault.NODE: f"node {nodes}" if nodes else "a node (which one is not known)",
             Fault.APPLICATION: "the application", Fault.INFRASTRUCTURE: "shared infrastructure"}.get(verdict.fault,
                                                                                                   "unknown")  # fmt: skip
    attributed, moved = budgets.recharge(replace(job, verdict=verdict.fault, verdict_nodes=",".join(event.exclude)),
                                         verdict.fault, settings)  # fmt: skip
    notes = [Note(NoteKind.VERDICT, text) for text in event.notes]
    notes.append(Note(NoteKind.VERDICT, f"fault lies with {where}: {verdict.cause}"))
    notes += moved
    drains, drain_notes = drain_actions(job, event, settings)
    going_on = after_verdict(attributed, settings) if job.awaiting is Awaiting.VERDICT else Decision(attributed)
    return Decision(going_on.job, (*drains, *going_on.actions), (*notes, *drain_notes, *going_on.notes), verdict)


def looked_again(job: ManagedJob, event: Attributed, settings: Settings) -> Decision:
    """Slurm's states of the failed attempt's nodes, read again: a node it lost since takes the verdict
    (Slurm's word comes first); then the held job is released."""
    job = replace(job, awaiting=None)
    judged = Decision(job)
    if event.verdict.fault is Fault.NODE and event.verdict.basis is Basis.SLURM:
        lost = ",".join(event.verdict.nodes) or "a node"
        earlier = Note(NoteKind.VERDICT, f"Slurm has lost {lost} of the failed attempt since the verdict "
                                         f"({job.verdict or 'none'}) was given: the fault is put on it")  # fmt: skip
        judged = attributed(job, event, settings)
        judged = replace(judged, notes=(earlier, *judged.notes))
    if judged.job.phase is not Phase.HELD:
        return judged
    release = release_held(judged.job, notes=())
    return Decision(release.job, (*judged.actions, *release.actions), (*judged.notes, *release.notes), judged.verdict)


def verdict_overdue(job: ManagedJob, event: VerdictOverdue, settings: Settings) -> Decision:
    """Go on without the verdict (or the second look at the nodes) that did not come by its deadline."""
    if job.awaiting is Awaiting.LOST_NODE and event.attempt == job.attempt:
        return slurm_requeues.not_lost(job, f"Slurm's node states did not come within {event.waited:.0f} s")
    if job.awaiting is Awaiting.NODE_STATES and event.attempt == job.handled_attempt:
        job = replace(job, awaiting=None)
        note = Note(NoteKind.WARNING, f"Slurm's node states did not come within {event.waited:.0f} s: going on "
                                      "with the verdict given at the failure")  # fmt: skip
        return release_held(job, (note,)) if job.phase is Phase.HELD else Decision(job, notes=(note,))
    if event.attempt != job.handled_attempt or job.awaiting is not Awaiting.VERDICT:
        return Decision(job)
    note = Note(NoteKind.WARNING, f"no verdict after {event.waited:.0f} s (node logs or Slurm do not answer): "
                                  "going on without it, no node kept out")  # fmt: skip
    going_on = after_verdict(job, settings)
    return Decision(going_on.job, going_on.actions, (note, *going_on.notes))


def after_verdict(job: ManagedJob, settings: Settings) -> Decision:
    """Go on with the recovery that waited for the verdict."""
    job = replace(job, awaiting=None)
    if job.phase is Phase.HANDING_OVER:
        return stop_and_hand_over(job, settings)
    if job.phase is Phase.HELD and (settings.dry_run or job.slurm_state == "PENDING"):
        # Slurm shows the job pending already (or, in dry run, never will): no poll to wait for.
        return release_after_a_look(job, (), settings)
    if may_blame_a_lost_node(job):
        return Decision(replace(job, awaiting=Awaiting.NODE_STATES))
    return Decision(job)  # still holding: the release follows the hold's JobHeld
