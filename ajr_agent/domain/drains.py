"""Draining the nodes a node verdict blamed: within the site's hourly budget, never a partition's last nodes."""

from __future__ import annotations

from typing import Sequence

from ajr_agent.domain.events import Attributed
from ajr_agent.domain.model import Action, ActionKind, Fault, ManagedJob, Note, NoteKind
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.text import printable


def drain_actions(job: ManagedJob, event: Attributed, settings: Settings) -> tuple[tuple[Action, ...], tuple[Note, ...]]:
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
