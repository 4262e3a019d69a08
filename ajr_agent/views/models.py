"""The read model: pydantic models of every answer about the agent's state, for people and programs.

They are the contract. The HTTP service serialises them and generates its OpenAPI document
from their JSON schema, the cockpit page reads nothing else, `ajr ... --json` prints them
as they are and the CLI's text is rendered from them; `ajr_agent.views.queries` builds them
from the Store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from ajr_agent.domain.efficiency import Efficiency
from ajr_agent.domain.model import (
    ActionKind,
    Basis,
    Budget,
    Fault,
    ManagedJob,
    NoteKind,
    Outcome,
    Phase,
    StopCause,
    UnmanagedJob,
)
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.adapters.control_files import ControlRecord
from ajr_agent.adapters.store import ActionStatus, JournalEntry, StoredEvent

# The most jobs one answer lists.
MAX_JOBS = 10000

# ---- query parameters ---------------------------------------------------------------------


class JobsQuery(BaseModel):
    """Filters of `GET /api/jobs` (and of `ajr status`)."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, description="only this user's jobs")
    state: list[str] = Field(
        default_factory=list,
        description="AJR phases and/or Slurm states, comma-separated (e.g. `held,RUNNING`); "
        "a job matches when its phase or its Slurm state is one of them (case-insensitive)",
    )
    mode: ResumeMode | None = Field(default=None, description="only jobs in this resume mode")
    include_over: bool = Field(
        default=True, description="include jobs whose story is over: finished, handed over, forgotten "
        "(gone ones need include_gone too)",
    )  # fmt: skip
    include_gone: bool = Field(default=False, description="include jobs that have left slurmctld's memory")
    limit: int = Field(default=1000, ge=1, le=MAX_JOBS, description="at most this many jobs, newest first")

    @field_validator("state", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        # Both `state=a,b` and `state=a&state=b` arrive here as strings to split.
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        return value


class KpiQuery(BaseModel):
    """Window and user of `GET /api/kpi` (and of `ajr kpi`)."""

    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(
        default=None, description="window start: a duration back from now (`24h`, `7d`, `90m`) or a date (`2026-11-01`)"
    )
    user: str | None = Field(default=None, description="only this user's jobs")


# ---- answers --------------------------------------------------------------------------------


class EfficiencyOut(BaseModel):
    """Training-time figures in seconds (definitions in the README: productive, lost, at risk)."""

    elapsed: float
    productive: float
    lost_unsaved: float = Field(description="work after the last checkpoint of failed or cancelled attempts")
    lost_restart: float = Field(description="time between the end of one attempt and the start of the next")
    at_risk: float = Field(description="the running attempt's work since its last checkpoint, not yet settled")
    lost: float
    efficiency: float | None = Field(description="productive / (elapsed - at_risk); null while nothing has settled")

    @classmethod
    def of(cls, figures: Efficiency) -> "EfficiencyOut":
        """The model of an `Efficiency`."""
        return cls(
            elapsed=figures.elapsed, productive=figures.productive, lost_unsaved=figures.lost_unsaved,
            lost_restart=figures.lost_restart, at_risk=figures.at_risk, lost=figures.lost,
            efficiency=figures.efficiency,
        )  # fmt: skip


class AgentStatus(BaseModel):
    """What the agent recorded about itself in the store."""

    backend: str | None = None
    dry_run: bool | None = None
    agent_version: str | None = None
    agent_started_at: float | None = None
    last_poll_at: float | None = None
    last_poll_seconds: float | None = None
    jobs_in_queue: int | None = None
    managed_jobs: int | None = None
    followed_files: int | None = None
    last_poll_error: str | None = None
    last_poll_error_at: float | None = None
    agent_host: str | None = None  # under failover: the controller host whose agent wrote this


class Status(BaseModel):
    """The service and the agent behind it."""

    version: str = Field(description="AJR version of this service")
    now: float = Field(description="the service's clock (epoch seconds), to judge the agent's last poll by")
    operator_actions: bool = Field(description="requeue/release/forget are enabled (an operator token is configured)")
    counters: Literal["agent", "store"] = Field(
        description="`agent`: /metrics has the agent's counters; `store`: only the gauges read from the store"
    )
    agent: AgentStatus
    control: ControlRecord | None = Field(
        default=None, description="under failover: what this host's agent is (active or standby) and why"
    )


class JobSummary(BaseModel):
    """One managed job as the job list shows it."""

    job_id: int
    name: str
    user: str
    mode: ResumeMode
    slurm_state: str
    phase: Phase
    requeues_used: int
    limit: int = Field(description="effective limit: min(the job's max_requeue_times, the site cap)")
    app_requeues: int = Field(description="requeues after the job's own (or unknown) failures")
    node_requeues: int = Field(description="requeues after failures a verdict put on a node")
    infra_requeues: int = Field(description="requeues after failures a verdict put on the shared infrastructure")
    keep_out: str = Field(description="lemon nodes AJR keeps out of the job's next attempts, comma-separated")
    requested_limit: int | None = Field(description="the job's own max_requeue_times, null when it set none")
    attempt: int = Field(description="Slurm's restart count of the attempt last seen")
    chain: str = Field(description="singleton mode: the chain the job belongs to")
    successor: int | None = Field(description="singleton mode: the held job of the chain released after this one")
    partition: str
    nodes: str
    excluded_nodes: str = Field(description="nodes AJR has excluded from the job's next attempts, comma-separated")
    work_dir: str = Field(description="the job's working directory, where its log files are looked for")
    stdout_dir: str = Field(description="the directory of the job's stdout file, where its log files are looked for")
    stop_reason: str | None
    stop_cause: StopCause | None = Field(description="why AJR stopped recovering it (or its recovery ended), for code")
    last_checkpoint: float | None
    last_anomaly: str | None
    last_action: str | None
    verdict: str
    straggler_reported: bool = Field(description="the current attempt's throughput drop has been reported")
    first_seen: float
    last_seen: float
    efficiency: float | None = Field(description="the job's (its chain's) training efficiency, 0..1")

    @classmethod
    def of(cls, job: ManagedJob, figures: Efficiency) -> "JobSummary":
        """The summary of a stored job with its efficiency."""
        return cls(
            job_id=job.job_id, name=job.name, user=job.user, mode=job.mode, slurm_state=job.slurm_state,
            phase=job.phase, requeues_used=job.requeues_used, limit=job.limit, requested_limit=job.requested_limit,
            app_requeues=job.app_requeues, node_requeues=job.node_requeues, infra_requeues=job.infra_requeues,
            keep_out=job.keep_out,
            attempt=job.attempt, chain=job.chain, successor=job.successor, partition=job.partition, nodes=job.nodes,
            excluded_nodes=job.excluded_nodes, work_dir=job.work_dir, stdout_dir=job.stdout_dir,
            stop_reason=job.stop_reason, stop_cause=job.stop_cause, last_checkpoint=job.last_checkpoint,
            last_anomaly=job.last_anomaly, last_action=job.last_action, verdict=job.verdict,
            straggler_reported=job.straggler_reported, first_seen=job.first_seen, last_seen=job.last_seen,
            efficiency=figures.efficiency,
        )  # fmt: skip


@dataclass(frozen=True)
class RefusedJob(UnmanagedJob):
    """A job whose APS spec is broken: not managed, and why (`managed` false tells it from a JobDetail)."""

    managed: Literal[False] = False


class JobList(BaseModel):
    """`GET /api/jobs`: the jobs that match, newest first."""

    total: int = Field(description="jobs that match the filters (before `limit`)")
    jobs: list[JobSummary]
    refused: list[RefusedJob] = Field(description="jobs whose spec was refused (matching `user`)")


class Overview(BaseModel):
    """`ajr status`: what the agent recorded about itself, and the jobs as `GET /api/jobs` lists them."""

    agent: AgentStatus
    jobs: JobList
    control: ControlRecord | None = None  # under failover: what this host's agent is


EventCategory = Literal["attempt", "checkpoint", "success", "anomaly", "verdict", "action", "refusal", "warning", "info"]

# How the timeline groups the notes the agent writes.
_CATEGORIES: dict[str, EventCategory] = {
    NoteKind.ATTEMPT: "attempt", NoteKind.CHECKPOINT: "checkpoint", NoteKind.SUCCESS: "success",
    NoteKind.FAILURE: "anomaly", NoteKind.STRAGGLER: "anomaly", NoteKind.VERDICT: "verdict",
    NoteKind.ACTION: "action", NoteKind.HELD: "action", NoteKind.NOT_REQUEUED: "refusal",
    NoteKind.CHAIN_ENDED: "refusal", NoteKind.WARNING: "warning",
}  # fmt: skip
# The same failure seen again (the CANCELLED line after a requeue...) is still an anomaly line.
_SEEN_AGAIN = frozenset({NoteKind.DUPLICATE, NoteKind.IGNORED})


class EventOut(BaseModel):
    """One line of a job's story; anomalies carry the log line that matched and its file."""

    job_id: int
    attempt: int | None
    at: float
    kind: str = Field(description="the agent's note kind: attempt, checkpoint, failure, action, verdict, ...")
    category: EventCategory = Field(description="the timeline's grouping of `kind`")
    text: str
    path: str | None = Field(description="the log file the line was read from")
    line: str | None = Field(description="the log line behind the event")

    @classmethod
    def of(cls, event: StoredEvent) -> "EventOut":
        """A stored note with its timeline category."""
        category = _CATEGORIES.get(event.kind, "info")
        if category == "info" and event.line and event.kind in _SEEN_AGAIN:
            category = "anomaly"
        return cls(job_id=event.job_id, attempt=event.attempt, at=event.at, kind=event.kind, category=category,
                   text=event.text, path=event.path, line=event.line)  # fmt: skip


class AttemptOut(BaseModel):
    """One attempt (in a singleton chain: one job of the chain) with its checkpoint saves."""

    job_id: int
    attempt: int
    label: str = Field(description="`attempt N`, or `JOBID(N)` in a chain")
    started: float
    ended: float | None
    outcome: Outcome
    end_reason: str
    nodes: str
    first_checkpoint: float | None
    last_checkpoint: float | None
    checkpoints: list[float] = Field(description="when each completed checkpoint save was seen")
    failed_checkpoints: list[float] = Field(default_factory=list, description="when each save began that did not "
                                            "complete before the attempt failed (nothing saved)")  # fmt: skip


class ActionOut(BaseModel):
    """One journaled Slurm action, the agent's or an operator's."""

    id: int
    kind: ActionKind
    job_id: int
    target: int | None = Field(description="the job acted on when it is not the job itself (chain successor)")
    attempt: int
    nodes: str
    reason: str
    status: ActionStatus
    origin: str = Field(description="`agent`, or `operator:<who>`")
    dry_run: bool
    tries: int
    created_at: float
    updated_at: float
    error: str | None

    @classmethod
    def of(cls, entry: JournalEntry) -> "ActionOut":
        """A journal entry as the API shows it."""
        action = entry.action
        return cls(
            id=entry.id, kind=action.kind, job_id=action.job_id, target=action.target, attempt=action.attempt,
            nodes=action.nodes, reason=action.reason, status=entry.status, origin=entry.origin, dry_run=entry.dry_run,
            tries=entry.tries, created_at=entry.created_at, updated_at=entry.updated_at, error=entry.error,
        )  # fmt: skip


class VerdictOut(BaseModel):
    """Where a failed attempt's fault lies, and the lines that say so."""

    job_id: int
    attempt: int
    label: str = Field(description="the attempt's label, as in the job's `attempts`")
    at: float
    fault: Fault
    nodes: list[str]
    cause: str
    evidence: list[str] = Field(description="the log lines it rests on, `source: line`")
    basis: Basis = Field(description="job_log (the user's own log: never drains), node_log or slurm")


class BudgetOut(BaseModel):
    """One budget of a job's requeues: its use and its cap (null before the agent recorded its caps)."""

    budget: Budget
    used: int
    cap: int | None


class BudgetsOut(BaseModel):
    """A job's requeues in all and by cause."""

    scope: str | None = Field(description="what max_requeue_times bounds: total or application (the agent's setting)")
    used: int
    cap: int | None = Field(description="the bound on all requeues: the job's limit, or the site cap in application scope")
    by_cause: list[BudgetOut]


class ThroughputPoint(BaseModel):
    """One throughput report (e.g. TFLOP/s per GPU)."""

    attempt: int
    at: float
    value: float


class LogFileOut(BaseModel):
    """A log file the agent follows for the job."""

    attempt: int
    path: str
    offset: int = Field(description="bytes read so far")


class JobDetail(BaseModel):
    """`GET /api/jobs/{id}`: one job's whole story."""

    managed: Literal[True] = Field(default=True, description="always true: a refused job is a RefusedJob")
    job: JobSummary
    attempts: list[AttemptOut]
    events: list[EventOut]
    actions: list[ActionOut]
    verdicts: list[VerdictOut]
    throughput: list[ThroughputPoint]
    efficiency: EfficiencyOut
    log_files: list[LogFileOut]
    budgets: BudgetsOut


class KpiRow(BaseModel):
    """The training-time figures of one job, or one singleton chain."""

    job: str = Field(description="the job id, or `chain NAME (ids)`")
    job_ids: list[int]
    user: str
    figures: EfficiencyOut


class Kpi(BaseModel):
    """`GET /api/kpi`: the same figures as `ajr kpi`."""

    since: float | None = Field(description="window start (epoch seconds), null for all time")
    user: str | None
    jobs: list[KpiRow]
    total: EfficiencyOut


class ActionResult(BaseModel):
    """The outcome of an operator's request."""

    job_id: int
    action: Literal["requeue", "release", "forget"]
    status: Literal["done", "failed", "requested"] = Field(
        description="done, failed, or requested (forget: the agent acts at its next poll)"
    )
    journal_id: int | None = Field(description="the action journal's entry (none for forget)")
    message: str


class ErrorOut(BaseModel):
    """Why a request was not answered."""

    error: str
