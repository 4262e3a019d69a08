"""The JSON API's answers: pydantic models of every response, and the queries that build them from the Store.

The models are the contract: the HTTP service serialises them and generates its
OpenAPI document from their JSON schema, and the cockpit page reads nothing else.
Like the CLI, this module only reads what the agent recorded and never decides:
efficiency comes from `ajr_agent.domain.efficiency` with the definitions `ajr kpi` uses.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict
from datetime import datetime
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ajr_agent import __version__
from ajr_agent.domain.efficiency import NOTHING, Efficiency, of_attempts
from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.model import Attempt, ManagedJob, Phase, StopCause
from ajr_agent.domain.policy import RECOVERING
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.adapters.store import JournalEntry, StoredEvent, Store

# SQLite caps the number of bound parameters of one statement (999 on old builds).
_ID_CHUNK = 900


class ApiError(AjrError):
    """A request the API cannot answer; `status` is the HTTP status that says why."""

    status = 400


class BadRequest(ApiError):
    """A query parameter holds something the API cannot use."""

    status = 400


class NotFound(ApiError):
    """The job (or path) asked for is not known."""

    status = 404


# ---- query parameters ---------------------------------------------------------------------


class JobsQuery(BaseModel):
    """Filters of `GET /api/jobs`."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, description="only this user's jobs")
    state: list[str] = Field(
        default_factory=list,
        description="AJR phases and/or Slurm states, comma-separated (e.g. `held,RUNNING`); "
        "a job matches when its phase or its Slurm state is one of them (case-insensitive)",
    )
    mode: ResumeMode | None = Field(default=None, description="only jobs in this resume mode")
    include_gone: bool = Field(default=False, description="include jobs that have left slurmctld's memory")
    limit: int = Field(default=1000, ge=1, le=10000, description="at most this many jobs, newest first")

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
    """Window and user of `GET /api/kpi`."""

    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(
        default=None, description="window start: a duration back from now (`24h`, `7d`, `90m`) or a date (`2026-11-01`)"
    )
    user: str | None = Field(default=None, description="only this user's jobs")


# ---- responses ------------------------------------------------------------------------------


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


class Status(BaseModel):
    """The service and the agent behind it."""

    version: str = Field(description="AJR version of this service")
    now: float = Field(description="the service's clock (epoch seconds), to judge the agent's last poll by")
    operator_actions: bool = Field(description="requeue/release/forget are enabled (an operator token is configured)")
    counters: Literal["agent", "store"] = Field(
        description="`agent`: /metrics has the agent's counters; `store`: only the gauges read from the store"
    )
    agent: AgentStatus


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
    requested_limit: int | None = Field(description="the job's own max_requeue_times, null when it set none")
    attempt: int = Field(description="Slurm's restart count of the attempt last seen")
    chain: str = Field(description="singleton mode: the chain the job belongs to")
    partition: str
    nodes: str
    stop_reason: str | None
    stop_cause: StopCause | None = Field(description="why AJR stopped recovering it (or its recovery ended), for code")
    last_checkpoint: float | None
    last_anomaly: str | None
    last_action: str | None
    verdict: str
    first_seen: float
    last_seen: float
    efficiency: float | None = Field(description="the job's (its chain's) training efficiency, 0..1")

    @classmethod
    def of(cls, job: ManagedJob, figures: Efficiency) -> "JobSummary":
        """The summary of a stored job with its efficiency."""
        return cls(
            job_id=job.job_id, name=job.name, user=job.user, mode=job.mode, slurm_state=job.slurm_state,
            phase=job.phase, requeues_used=job.requeues_used, limit=job.limit, requested_limit=job.requested_limit,
            attempt=job.attempt, chain=job.chain, partition=job.partition, nodes=job.nodes,
            stop_reason=job.stop_reason, stop_cause=job.stop_cause, last_checkpoint=job.last_checkpoint, last_anomaly=job.last_anomaly,
            last_action=job.last_action, verdict=job.verdict, first_seen=job.first_seen, last_seen=job.last_seen,
            efficiency=figures.efficiency,
        )  # fmt: skip


class RefusedJob(BaseModel):
    """A job whose APS spec is broken: not managed, and why."""

    job_id: int
    name: str
    user: str
    comment: str
    problem: str
    first_seen: float


class JobList(BaseModel):
    """`GET /api/jobs`: the jobs that match, newest first."""

    total: int = Field(description="jobs that match the filters (before `limit`)")
    jobs: list[JobSummary]
    refused: list[RefusedJob] = Field(description="jobs whose spec was refused (matching `user`)")


EventCategory = Literal["attempt", "checkpoint", "success", "anomaly", "verdict", "action", "refusal", "warning", "info"]

# How the timeline groups the notes the agent writes (their `kind`).
_CATEGORIES: dict[str, EventCategory] = {
    "attempt": "attempt", "checkpoint": "checkpoint", "success": "success", "failure": "anomaly",
    "straggler": "anomaly", "verdict": "verdict", "action": "action", "held": "action",
    "not_requeued": "refusal", "chain_ended": "refusal", "warning": "warning",
}  # fmt: skip


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
        # The same failure seen again (the CANCELLED line after a requeue...) is still an anomaly line.
        if category == "info" and event.line and event.kind in ("duplicate", "ignored"):
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
    outcome: str
    end_reason: str
    nodes: str
    first_checkpoint: float | None
    last_checkpoint: float | None
    checkpoints: list[float] = Field(description="when each checkpoint save was seen")


class ActionOut(BaseModel):
    """One journaled Slurm action, the agent's or an operator's."""

    id: int
    kind: str
    job_id: int
    target: int | None = Field(description="the job acted on when it is not the job itself (chain successor)")
    attempt: int
    nodes: str
    reason: str
    status: str = Field(description="pending, retry, done, dry_run or failed")
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
            id=entry.id, kind=action.kind.value, job_id=action.job_id, target=action.target, attempt=action.attempt,
            nodes=action.nodes, reason=action.reason, status=entry.status, origin=entry.origin, dry_run=entry.dry_run,
            tries=entry.tries, created_at=entry.created_at, updated_at=entry.updated_at, error=entry.error,
        )  # fmt: skip


class VerdictOut(BaseModel):
    """Where a failed attempt's fault lies, and the lines that say so."""

    job_id: int
    attempt: int
    at: float
    fault: str = Field(description="node, application, infrastructure or unknown")
    nodes: list[str]
    cause: str
    evidence: list[str] = Field(description="the log lines it rests on, `source: line`")


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

    job: JobSummary
    attempts: list[AttemptOut]
    events: list[EventOut]
    actions: list[ActionOut]
    verdicts: list[VerdictOut]
    throughput: list[ThroughputPoint]
    efficiency: EfficiencyOut
    log_files: list[LogFileOut]


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
    status: str = Field(description="done, failed, or requested (forget: the agent acts at its next poll)")
    journal_id: int | None = Field(description="the action journal's entry (none for forget)")
    message: str


class ErrorOut(BaseModel):
    """Why a request was not answered."""

    error: str


# ---- queries --------------------------------------------------------------------------------


def status(store: Store, operator_actions: bool, counters: Literal["agent", "store"], now: float) -> Status:
    """The service's own status and what the agent recorded about itself."""
    known = set(AgentStatus.model_fields)
    agent = AgentStatus.model_validate({k: v for k, v in store.meta().items() if k in known})
    return Status(version=__version__, now=now, operator_actions=operator_actions, counters=counters, agent=agent)


def _attempts_by_job(store: Store, job_ids: Iterable[int]) -> dict[int, list[Attempt]]:
    ids = sorted(set(job_ids))
    found: dict[int, list[Attempt]] = defaultdict(list)
    for start in range(0, len(ids), _ID_CHUNK):
        for attempt in store.attempts(ids[start:start + _ID_CHUNK]):
            found[attempt.job_id].append(attempt)
    return found


def _members(store: Store, job: ManagedJob, known: dict[int, ManagedJob],
             chains: dict[str, list[ManagedJob]]) -> list[ManagedJob]:  # fmt: skip
    """The jobs whose attempts make up a job's efficiency: its whole chain in singleton mode."""
    if not job.chain:
        return [job]
    if job.chain not in chains:
        chains[job.chain] = [known.get(m.job_id, m) for m in store.chain_jobs(job.chain)]
    return chains[job.chain]


def _figures(members: list[ManagedJob], attempts: dict[int, list[Attempt]], now: float,
             since: float | None = None) -> Efficiency:  # fmt: skip
    recovering = any(m.phase in RECOVERING for m in members)
    return of_attempts([a for m in members for a in attempts.get(m.job_id, [])], now, recovering, since)


def efficiency_by_job(store: Store, jobs: list[ManagedJob], now: float) -> dict[int, Efficiency]:
    """Each job's training-time figures (its chain's, in singleton mode), with one attempts query."""
    known = {j.job_id: j for j in jobs}
    chains: dict[str, list[ManagedJob]] = {}
    members = {j.job_id: _members(store, j, known, chains) for j in jobs}
    attempts = _attempts_by_job(store, (m.job_id for group in members.values() for m in group))
    return {job_id: _figures(group, attempts, now) for job_id, group in members.items()}


def list_jobs(store: Store, query: JobsQuery, now: float) -> JobList:
    """The managed jobs matching the filters, newest first, with their efficiency."""
    wanted = {s.lower() for s in query.state}
    jobs = [
        job for job in sorted(store.load_jobs(include_gone=query.include_gone).values(), key=lambda j: -j.job_id)
        if (query.user is None or job.user == query.user)
        and (query.mode is None or job.mode is query.mode)
        and (not wanted or job.phase.value in wanted or job.slurm_state.lower() in wanted)
    ]  # fmt: skip
    shown = jobs[: query.limit]
    figures = efficiency_by_job(store, shown, now)
    refused = [RefusedJob(**asdict(u)) for u in store.unmanaged() if query.user is None or u.user == query.user]
    return JobList(total=len(jobs), jobs=[JobSummary.of(j, figures[j.job_id]) for j in shown], refused=refused)


def job_detail(store: Store, job_id: int, now: float) -> JobDetail:
    """One job's story: attempts with checkpoints, events, actions, verdicts, throughput, efficiency."""
    job = store.job(job_id)
    if job is None:
        refused = store.unmanaged(job_id)
        if refused:
            raise NotFound(f"job {job_id} ({refused[0].name}, user {refused[0].user}) is not managed: "
                           f"{refused[0].problem}")  # fmt: skip
        raise NotFound(f"job {job_id} is not known to AJR: its comment has no APS spec, or the agent has not seen it")
    members = _members(store, job, {job_id: job}, {})
    attempts = _attempts_by_job(store, [m.job_id for m in members])
    figures = _figures(members, attempts, now)
    events = store.events(job_id)
    member_events = events if not job.chain else [e for m in members for e in store.events(m.job_id)]
    saves: dict[tuple[int, int | None], list[float]] = defaultdict(list)
    for event in member_events:
        if event.kind == "checkpoint":
            saves[(event.job_id, event.attempt)].append(event.at)
    ordered = sorted((a for group in attempts.values() for a in group), key=lambda a: (a.started, a.job_id, a.attempt))
    return JobDetail(
        job=JobSummary.of(job, figures),
        attempts=[
            AttemptOut(
                job_id=a.job_id, attempt=a.attempt, label=f"{a.job_id}({a.attempt})" if job.chain else f"attempt {a.attempt}",
                started=a.started, ended=a.ended, outcome=a.outcome.value, end_reason=a.end_reason, nodes=a.nodes,
                first_checkpoint=a.first_checkpoint, last_checkpoint=a.last_checkpoint,
                checkpoints=sorted(saves.get((a.job_id, a.attempt), [])),
            )
            for a in ordered
        ],
        events=[EventOut.of(e) for e in events],
        actions=[ActionOut.of(a) for a in store.actions(job_id)],
        verdicts=[
            VerdictOut(job_id=j, attempt=n, at=at, fault=v.fault, nodes=list(v.nodes), cause=v.cause,
                       evidence=list(v.evidence))  # fmt: skip
            for j, n, at, v in store.verdicts([m.job_id for m in members])
        ],
        throughput=[ThroughputPoint(attempt=n, at=at, value=value) for n, at, value in store.throughput(job_id)],
        efficiency=EfficiencyOut.of(figures),
        log_files=[LogFileOut(attempt=f.attempt, path=f.position.path, offset=f.position.offset)
                   for f in store.files(job_id)],  # fmt: skip
    )  # fmt: skip


def parse_since(value: str | None, now: float) -> float | None:
    """`24h`, `7d`, `90m`, `30s` back from now, or a date/time `2026-11-01[T10:00]`; None for all time."""
    if not value:
        return None
    relative = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if relative:
        return now - float(relative.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative.group(2)]
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise BadRequest(f"since={value!r}: give a duration such as 24h or 7d, or a date such as 2026-11-01") from exc


def _kpi_units(store: Store, since: float | None, user: str | None,
               now: float) -> list[tuple[ManagedJob, list[int], Efficiency]]:  # fmt: skip
    """(first job, job ids, figures) of every job or chain with training time in the window."""
    jobs = [j for j in store.load_jobs(include_gone=True).values() if user is None or j.user == user]
    known = {j.job_id: j for j in jobs}
    chains: dict[str, list[ManagedJob]] = {}
    units = [(job, _members(store, job, known, chains)) for job in jobs if not job.chain or job.chain not in chains]
    attempts = _attempts_by_job(store, (m.job_id for _, group in units for m in group))
    found = []
    for job, group in units:
        figures = _figures(group, attempts, now, since)
        ids = sorted({a.job_id for m in group for a in attempts.get(m.job_id, [])})
        if ids and figures.elapsed > 0:
            found.append((job, ids, figures))
    return found


def kpi(store: Store, query: KpiQuery, now: float) -> Kpi:
    """Training-time efficiency per job (per chain in singleton mode) and in total, as `ajr kpi`."""
    since = parse_since(query.since, now)
    units = _kpi_units(store, since, query.user, now)
    rows = [
        KpiRow(job=f"chain {job.name} ({', '.join(map(str, ids))})" if job.chain else str(job.job_id), job_ids=ids,
               user=job.user, figures=EfficiencyOut.of(figures))  # fmt: skip
        for job, ids, figures in units
    ]
    total = sum((figures for _, _, figures in units), NOTHING)
    return Kpi(since=since, user=query.user, jobs=rows, total=EfficiencyOut.of(total))


def overall_efficiency(store: Store, window: float, now: float) -> Efficiency:
    """Every job's training-time figures over the last `window` seconds, added up (the KPI total)."""
    return sum((figures for _, _, figures in _kpi_units(store, now - window, None, now)), NOTHING)
