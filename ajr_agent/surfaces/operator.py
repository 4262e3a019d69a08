"""An operator's requests, from the CLI or the cockpit: requeue and release run at once through the
executor, journaled with the operator as their origin; forget (a job) and forgive (a node) are left
for the agent's next poll.

Both surfaces answer with the same `ActionResult`; who may ask is each surface's business
(the CLI checks the caller's account, the cockpit its operator token).
"""

from __future__ import annotations

import re
from typing import Literal

from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.model import Action, ActionKind
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.store import ActionStatus, Store
from ajr_agent.runtime.executor import run_operator_action
from ajr_agent.views.models import ActionResult
from ajr_agent.views.nodes import ForgiveResult

SlurmVerb = Literal["requeue", "release"]
# A node's name as Slurm takes it; anything else is refused before it reaches the store.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KINDS: dict[SlurmVerb, ActionKind] = {"requeue": ActionKind.REQUEUE, "release": ActionKind.RELEASE}


def slurm_action(store: Store, settings: Settings, verb: SlurmVerb, job_id: int, attempt: int, origin: str,
                 reason: str, now: float) -> ActionResult:  # fmt: skip
    """Run the operator's requeue or release of `job_id` (its attempt `attempt`) once, journaled."""
    entry = run_operator_action(store, settings, Action(_KINDS[verb], job_id, attempt, reason), origin, now)
    if entry.status is ActionStatus.DONE:
        return ActionResult(job_id=job_id, action=verb, status="done", journal_id=entry.id,
                            message=f"{verb} of job {job_id} done (journal entry {entry.id})")  # fmt: skip
    return ActionResult(job_id=job_id, action=verb, status="failed", journal_id=entry.id,
                        message=f"{verb} of job {job_id} failed: {entry.error}")  # fmt: skip


def forget(store: Store, job_id: int, by: str, now: float) -> ActionResult:
    """Record that the agent is to stop managing `job_id`; it does at its next poll."""
    store.forget(job_id, by, now)
    return ActionResult(job_id=job_id, action="forget", status="requested", journal_id=None,
                        message=f"job {job_id}: the agent stops managing it at its next poll")  # fmt: skip


class UnknownNode(AjrError):
    """An operator named a node the ledger has no record of, or no node name at all."""


def forgive(store: Store, node: str, by: str, now: float) -> ForgiveResult:
    """Record that the agent is to trust `node` again: no lemon, its record afresh, AJR's exclusions
    of it taken back from pending jobs; it does at its next poll. A node AJR drained stays drained:
    putting it back in service is the admin's `scontrol update NodeName=.. State=RESUME`."""
    if not NODE_NAME.fullmatch(node):
        raise UnknownNode(f"{node[:80]!r} is not a node name (letters, digits, '.', '_', '-'; at most 64)")
    if node not in store.nodes.records() and not store.nodes.blames([node]):
        raise UnknownNode(f"AJR has no record of node {node}: `ajr nodes` lists the nodes it knows")
    store.nodes.forgive(node, by, now)
    return ForgiveResult(node=node, message=f"node {node}: the agent trusts it again at its next poll")
