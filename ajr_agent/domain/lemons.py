"""One job and the node ledger's lemons: kept out of the job while it is pending, and AJR's
exclusion of a node trusted again taken back.

Which nodes are lemons, and which of them a job can do without, is the ledger's business
(domain.ledger, runtime.node_ledger); this is the policy's answer for one job. Between a
failure and its release the release itself keeps the lemons out (recovery.to_exclude reads
`keep_out`); a running job keeps them for its next attempt.
"""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.domain.events import LemonsChanged
from ajr_agent.domain.model import Action, ActionKind, Decision, ManagedJob, Note, NoteKind, Phase

# The actions of the ledger; the policy's other handlers never see them.
KINDS = frozenset({ActionKind.KEEP_OUT, ActionKind.UNEXCLUDE, ActionKind.REBOOT})
# A pending job in these phases may have its ExcNodeList changed now: no release of AJR's is under way.
_KEEP_OUT_PHASES = frozenset({Phase.WATCHING, Phase.RESTARTING})
_TAKE_BACK_PHASES = frozenset({Phase.WATCHING, Phase.RESTARTING, Phase.HELD})


def names(nodes: str) -> list[str]:
    """The names of a comma-separated node list."""
    return [n for n in nodes.split(",") if n]


def changed(job: ManagedJob, event: LemonsChanged) -> Decision:
    """Remember the lemons to keep out; while the job is pending, exclude them now and take back
    the exclusions of the nodes trusted again."""
    have = names(job.excluded_nodes)
    kept = replace(job, keep_out=",".join(event.keep_out))
    pending = job.slurm_state == "PENDING"
    actions: list[Action] = []
    add = [n for n in event.keep_out if n not in have]
    if add and pending and job.phase in _KEEP_OUT_PHASES:
        actions.append(Action(ActionKind.KEEP_OUT, job.job_id, job.attempt, f"lemon node: {','.join(add)}",
                              nodes=",".join(add)))  # fmt: skip
    back = [n for n in event.take_back if n in have and n not in event.keep_out]
    if back and pending and job.phase in _TAKE_BACK_PHASES:
        actions.append(Action(ActionKind.UNEXCLUDE, job.job_id, job.attempt, f"trusted again: {','.join(back)}",
                              nodes=",".join(back)))  # fmt: skip
    return Decision(kept, actions=tuple(actions))


def done(job: ManagedJob, action: Action, prefix: str) -> Decision:
    """A ledger action carried out: the job's exclusions follow it."""
    nodes = names(action.nodes)
    if action.kind is ActionKind.KEEP_OUT:
        excluded = ",".join(dict.fromkeys([*names(job.excluded_nodes), *nodes]))
        text = f"{prefix}kept lemon node {action.nodes} out of the next attempt"
        return Decision(replace(job, excluded_nodes=excluded), notes=(Note(NoteKind.ACTION, text),))
    if action.kind is ActionKind.UNEXCLUDE:
        excluded = ",".join(n for n in names(job.excluded_nodes) if n not in nodes)
        text = f"{prefix}took back AJR's exclusion of {action.nodes}: {action.reason}"
        return Decision(replace(job, excluded_nodes=excluded), notes=(Note(NoteKind.ACTION, text),))
    text = f"{prefix}asked Slurm to reboot {action.nodes} once it is idle: {action.reason}"
    return Decision(job, notes=(Note(NoteKind.ACTION, text),))


def failed(job: ManagedJob, action: Action, reason: str) -> Decision:
    """A ledger action Slurm refused: said, and left there (a release keeps the lemons out again)."""
    what = {ActionKind.KEEP_OUT: "keep lemon node {} out", ActionKind.UNEXCLUDE: "take back the exclusion of {}",
            ActionKind.REBOOT: "reboot {}"}[action.kind].format(action.nodes)  # fmt: skip
    return Decision(job, notes=(Note(NoteKind.WARNING, f"could not {what}: {reason}"),))
