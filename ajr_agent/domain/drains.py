"""Draining and rebooting nodes: a node verdict's nodes, and lemons, within the site's hourly budget
and never a partition's last nodes, and only on evidence AJR trusts (never a job's log alone)."""

from __future__ import annotations

from typing import Sequence

from ajr_agent.domain.events import Attributed
from ajr_agent.domain.ledger import TRUSTED_BASES
from ajr_agent.domain.model import Action, ActionKind, Fault, ManagedJob, Note, NoteKind
from ajr_agent.domain.settings import LemonAction, Settings
from ajr_agent.domain.text import printable

_LEMON_KINDS = {LemonAction.DRAIN: ActionKind.DRAIN, LemonAction.REBOOT: ActionKind.REBOOT}


def drain_actions(job: ManagedJob, event: Attributed, settings: Settings) -> tuple[tuple[Action, ...], tuple[Note, ...]]:
    """Drain the nodes a trusted node verdict blamed (drain_faulty_nodes), and drain or reboot the
    lemons among them (lemon_action), within the hourly budget and never a partition's last ones."""
    verdict = event.verdict
    if verdict.fault is not Fault.NODE or not verdict.nodes:
        return (), ()
    wanted: dict[str, ActionKind] = {}
    notes: list[Note] = []
    if settings.drain_faulty_nodes:
        if verdict.basis in TRUSTED_BASES:
            wanted = dict.fromkeys(verdict.nodes, ActionKind.DRAIN)
        else:
            notes.append(Note(NoteKind.WARNING, f"not drained: the verdict rests on the job's own log only "
                                                f"({', '.join(verdict.nodes)} stay in service)"))  # fmt: skip
    if settings.lemon_action in _LEMON_KINDS:
        wanted |= dict.fromkeys(event.act_on, _LEMON_KINDS[settings.lemon_action])
    if not wanted:
        return (), tuple(notes)
    if event.cluster is None:
        return (), (*notes, Note(NoteKind.WARNING, f"no node drained: cannot read the partitions: {event.cluster_error}"))
    partitions = {name: list(members) for name, members in event.cluster.partitions}
    chosen, spared = plan_drains(list(wanted), event.drains_last_hour, partitions, set(event.cluster.out_of_service),
                                 settings)  # fmt: skip
    evidence = verdict.evidence[0] if verdict.evidence else verdict.cause
    actions = []
    for node in chosen:
        lemon = " lemon:" if node in event.act_on and settings.lemon_action in _LEMON_KINDS else ""
        # The evidence may be a line of the user's log: in a node's Reason, every admin's
        # `sinfo -R` shows it, so it goes in as one printable line.
        reason = printable(f"ajr:{lemon} job {job.job_id} {verdict.cause}: {evidence}", 250)
        actions.append(Action(wanted[node], job.job_id, event.attempt, reason, nodes=node))
    verb = {ActionKind.DRAIN: "drained", ActionKind.REBOOT: "rebooted"}
    notes += [Note(NoteKind.WARNING, f"not {verb[wanted[text.split(':')[0]]]}: {text}") for text in spared]
    return tuple(actions), tuple(notes)


def plan_drains(nodes: Sequence[str], drains_last_hour: int, partitions: dict[str, list[str]],
                out_of_service: set[str], settings: Settings) -> tuple[list[str], list[str]]:  # fmt: skip
    """Which of `nodes` to drain (or reboot, which drains too), and why the others are spared:
    "node: why" each.

    Never more than `max_drains_per_hour`, and never a node whose draining would leave
    fewer than `drain_keep_nodes` nodes in service in one of its partitions.
    """
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
