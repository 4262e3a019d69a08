"""The node ledger as the read model shows it: `ajr nodes`, `GET /api/nodes`, the cockpit's nodes panel
and the node gauges of /metrics.

Each node's record is counted by domain.ledger's rules with the settings the agent recorded
in the store (a reader on another host counts as the agent does), never decided here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ajr_agent.adapters.store import Store
from ajr_agent.domain import ledger
from ajr_agent.domain.ledger import NodeRecord
from ajr_agent.domain.model import ActionKind, Basis
from ajr_agent.domain.settings import Settings

# The agent's settings the counting needs (runtime.node_ledger.RECORDED writes them).
_RULES = ("lemon_jobs", "lemon_blames", "lemon_window", "trust_after", "lemon_action")
# Blames listed per node at most (the newest); the counts cover them all.
MAX_BLAMES_SHOWN = 50


class NodeBlameOut(BaseModel):
    """One failed attempt a verdict put on the node."""

    job_id: int
    attempt: int
    user: str
    at: float
    basis: Basis = Field(description="job_log (the user's own log), node_log (the node's own log) or slurm")
    cause: str
    counted: bool = Field(description="part of the record that counts now (since the node was last trusted)")


class NodeActionOut(BaseModel):
    """A drain or reboot of the node, AJR's, done or decided in dry run."""

    kind: ActionKind
    job_id: int = Field(description="the job whose failure it followed")
    at: float
    reason: str
    dry_run: bool


class NodeOut(BaseModel):
    """One node's record in the ledger."""

    node: str
    lemon: bool = Field(description="kept out of every managed job's next attempts")
    lemon_since: float | None
    in_service: bool = Field(description="as AJR last saw it: not down, drained or rebooting")
    in_service_since: float | None
    trusted_at: float | None = Field(description="when it was last trusted again (after trust_after, or forgiven)")
    trusted_by: str = Field(description="`ajr` (in service for trust_after without blame), else the operator")
    trusted_again_at: float | None = Field(description="a lemon in service: when it will be trusted again unless blamed")
    witnesses: int = Field(description="jobs blaming it on trusted evidence, plus each user whose job logs alone do")
    recent: int = Field(description="blames within lemon_window, one user's job-log blames counted once")
    trusted_evidence: bool = Field(description="its record has evidence AJR may drain on (a node log, Slurm)")
    blames_total: int
    blames: list[NodeBlameOut] = Field(description=f"the newest {MAX_BLAMES_SHOWN} blames, newest first")
    excluded_from: list[int] = Field(description="jobs whose ExcNodeList AJR put it in and has not taken it back")
    exclusions_taken_back: int
    drains: int
    reboots: int
    actions: list[NodeActionOut]


class NodeList(BaseModel):
    """`GET /api/nodes` (and `ajr nodes --json`): every node the ledger has a record of, lemons first."""

    lemons: int
    lemon_jobs: int = Field(description="the agent's rule: witnesses that make a lemon (0: off)")
    lemon_blames: int = Field(description="the agent's rule: blames within lemon_window that make a lemon (0: off)")
    lemon_window: float
    trust_after: float
    lemon_action: str = Field(description="exclude, drain or reboot")
    nodes: list[NodeOut]


def rules(store: Store) -> Settings:
    """The settings the agent counts records with, as it recorded them (the defaults before it ran)."""
    meta = store.meta()
    return Settings().with_overrides(**{key: meta[key] for key in _RULES if key in meta})


def node_list(store: Store, now: float, with_blames: bool = True) -> NodeList:
    """Every node the ledger knows, its record counted as the agent counts it; lemons, then the most blamed."""
    settings = rules(store)
    records = store.nodes.records()
    blames: dict[str, list[ledger.Blame]] = {}
    for blame in store.nodes.blames():
        blames.setdefault(blame.node, []).append(blame)
    exclusions = store.nodes.exclusions()
    actions = store.nodes.actions()
    nodes = []
    for name in sorted(set(records) | set(blames)):
        record = records.get(name) or NodeRecord(name)
        mine = blames.get(name, [])
        standing = ledger.standing(record, mine, now, settings)
        counted = {(b.job_id, b.attempt) for b in standing.blames}
        done = [e for e in actions if e.action.nodes == name]
        waiting = (max([record.in_service_since or 0.0, record.lemon_since or 0.0, *(b.at for b in standing.blames)])
                   + settings.trust_after if record.lemon_since is not None and record.in_service else None)  # fmt: skip
        nodes.append(NodeOut(
            node=name, lemon=record.lemon_since is not None, lemon_since=record.lemon_since,
            in_service=record.in_service, in_service_since=record.in_service_since, trusted_at=record.trusted_at,
            trusted_by=record.trusted_by, trusted_again_at=waiting, witnesses=standing.witnesses,
            recent=standing.recent, trusted_evidence=standing.trusted_evidence, blames_total=len(mine),
            blames=[NodeBlameOut(job_id=b.job_id, attempt=b.attempt, user=b.user, at=b.at, basis=b.basis,
                                 cause=b.cause, counted=(b.job_id, b.attempt) in counted)
                    for b in reversed(mine[-MAX_BLAMES_SHOWN:])] if with_blames else [],
            excluded_from=[e.job_id for e in exclusions if e.node == name and e.taken_back_at is None],
            exclusions_taken_back=len([e for e in exclusions if e.node == name and e.taken_back_at is not None]),
            drains=len([e for e in done if e.action.kind is ActionKind.DRAIN]),
            reboots=len([e for e in done if e.action.kind is ActionKind.REBOOT]),
            actions=[NodeActionOut(kind=e.action.kind, job_id=e.action.job_id, at=e.created_at, reason=e.action.reason,
                                   dry_run=e.dry_run) for e in done],
        ))  # fmt: skip
    nodes.sort(key=lambda n: (not n.lemon, -n.witnesses, -n.blames_total, n.node))
    return NodeList(lemons=len([n for n in nodes if n.lemon]), lemon_jobs=settings.lemon_jobs,
                    lemon_blames=settings.lemon_blames, lemon_window=settings.lemon_window,
                    trust_after=settings.trust_after, lemon_action=settings.lemon_action.value, nodes=nodes)  # fmt: skip


class ForgiveResult(BaseModel):
    """The outcome of an operator's `ajr node forgive NODE` (or the cockpit's): the agent applies it at its next poll."""

    node: str
    action: str = "forgive"
    status: str = Field(default="requested", description="requested: the agent trusts the node again at its next poll")
    message: str


class ForgiveQuery(BaseModel):
    """The node of `POST /api/nodes/forgive?node=NODE`."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="the node to trust again")
