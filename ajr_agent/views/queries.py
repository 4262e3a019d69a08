"""The queries of the read model: from the Store to the models of `ajr_agent.views.models`.

Every reader answers from here: the JSON API and the cockpit, `ajr status|show|kpi` (text and
--json), and the /metrics gauges read from the store. Like every view, this only reads what
the agent recorded and never decides: efficiency comes from `ajr_agent.domain.efficiency`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict
from datetime import datetime
from typing import Iterable, Literal

from ajr_agent import __version__
from ajr_agent.domain.control import FailoverMode
from ajr_agent.domain import budgets
from ajr_agent.domain.efficiency import NOTHING, Efficiency, of_attempts
from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.model import Attempt, Budget, ManagedJob, NoteKind
from ajr_agent.domain.policy import OVER, RECOVERING
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.control_files import ControlRecord, ControlRecordFile
from ajr_agent.adapters.store import Store
from ajr_agent.views.models import (
    ActionOut,
    AgentStatus,
    AttemptOut,
    BudgetOut,
    BudgetsOut,
    EfficiencyOut,
    EventOut,
    JobDetail,
    JobList,
    JobsQuery,
    JobSummary,
    Kpi,
    KpiQuery,
    KpiRow,
    LogFileOut,
    Overview,
    RefusedJob,
    Status,
    ThroughputPoint,
    VerdictOut,
)

# SQLite caps the number of bound parameters of one statement (999 on old builds).
_ID_CHUNK = 900


class ApiError(AjrError):
    """A question the read model cannot answer; `status` is the HTTP status that says why."""

    status = 400


class BadRequest(ApiError):
    """A query parameter holds something the read model cannot use."""

    status = 400


class NotFound(ApiError):
    """The job (or path) asked for is not known."""

    status = 404


def agent_status(store: Store) -> AgentStatus:
    """What the agent recorded about itself."""
    known = set(AgentStatus.model_fields)
    return AgentStatus.model_validate({k: v for k, v in store.meta().items() if k in known})


def status(store: Store, operator_actions: bool, counters: Literal["agent", "store"], now: float,
           control: ControlRecord | None = None) -> Status:  # fmt: skip
    """The service's own status and what the agent recorded about itself; `control`: this host's role record."""
    return Status(version=__version__, now=now, operator_actions=operator_actions, counters=counters,
                  agent=agent_status(store), control=control)  # fmt: skip


def control_record(settings: Settings) -> ControlRecord | None:
    """This host's role record under failover; None without failover or before the agent wrote one."""
    if settings.failover is FailoverMode.OFF:
        return None
    return ControlRecordFile(settings.ha_status_file).read()


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


def _summaries(store: Store, jobs: list[ManagedJob], now: float) -> list[JobSummary]:
    """Each job with its training efficiency (its chain's, in singleton mode), with one attempts query."""
    known = {j.job_id: j for j in jobs}
    chains: dict[str, list[ManagedJob]] = {}
    members = {j.job_id: _members(store, j, known, chains) for j in jobs}
    attempts = _attempts_by_job(store, (m.job_id for group in members.values() for m in group))
    return [JobSummary.of(j, _figures(members[j.job_id], attempts, now)) for j in jobs]


def _newest_first(store: Store, include_gone: bool) -> list[ManagedJob]:
    return sorted(store.load_jobs(include_gone=include_gone).values(), key=lambda j: -j.job_id)


def job_summaries(store: Store, now: float, include_gone: bool = False) -> list[JobSummary]:
    """Every managed job (those still in Slurm unless `include_gone`), newest first, with its efficiency."""
    return _summaries(store, _newest_first(store, include_gone), now)


def refused_jobs(store: Store, user: str | None = None) -> list[RefusedJob]:
    """The jobs whose spec was refused (only `user`'s, when given)."""
    return [RefusedJob(**asdict(u)) for u in store.unmanaged() if user is None or u.user == user]


def list_jobs(store: Store, query: JobsQuery, now: float) -> JobList:
    """The managed jobs matching the filters, newest first, with their efficiency."""
    wanted = {s.lower() for s in query.state}
    jobs = [
        job for job in _newest_first(store, query.include_gone)
        if (query.user is None or job.user == query.user)
        and (query.mode is None or job.mode is query.mode)
        and (query.include_over or job.phase not in OVER)
        and (not wanted or job.phase.value in wanted or job.slurm_state.lower() in wanted)
    ]  # fmt: skip
    shown = _summaries(store, jobs[: query.limit], now)
    return JobList(total=len(jobs), jobs=shown, refused=refused_jobs(store, query.user))


def overview(store: Store, query: JobsQuery, now: float, control: ControlRecord | None = None) -> Overview:
    """What the agent recorded about itself, and the jobs matching `query`; `control`: this host's role record."""
    return Overview(agent=agent_status(store), jobs=list_jobs(store, query, now), control=control)


def chain_attempts(store: Store, job: ManagedJob) -> list[Attempt]:
    """A job's attempts (its chain's, in singleton mode) in the order they started."""
    attempts = _attempts_by_job(store, [m.job_id for m in _members(store, job, {job.job_id: job}, {})])
    return _in_time_order(attempts)


def _in_time_order(attempts: dict[int, list[Attempt]]) -> list[Attempt]:
    return sorted((a for group in attempts.values() for a in group), key=lambda a: (a.started, a.job_id, a.attempt))


def job_story(store: Store, job_id: int, now: float) -> JobDetail | RefusedJob:
    """A managed job's whole story, or why its spec was refused; NotFound when AJR has not seen it."""
    job = store.job(job_id)
    if job is not None:
        return _detail(store, job, now)
    refused = store.unmanaged(job_id)
    if refused:
        return RefusedJob(**asdict(refused[0]))
    raise NotFound(f"job {job_id} is not known to AJR: its comment has no APS spec, or the agent has not seen it yet")


def job_detail(store: Store, job_id: int, now: float) -> JobDetail:
    """One managed job's story; NotFound, with the reason, for a refused or unknown job."""
    story = job_story(store, job_id, now)
    if isinstance(story, RefusedJob):
        raise NotFound(f"job {job_id} ({story.name}, user {story.user}) is not managed: {story.problem}")
    return story


def _detail(store: Store, job: ManagedJob, now: float) -> JobDetail:
    """Attempts with checkpoints, events, actions, verdicts, throughput, efficiency and log files."""
    members = _members(store, job, {job.job_id: job}, {})
    attempts = _attempts_by_job(store, [m.job_id for m in members])
    figures = _figures(members, attempts, now)
    events = store.events(job.job_id)
    member_events = events if not job.chain else [e for m in members for e in store.events(m.job_id)]
    saves: dict[tuple[int, int | None], list[float]] = defaultdict(list)
    failed_saves: dict[tuple[int, int | None], list[float]] = defaultdict(list)
    for event in member_events:
        if event.kind == NoteKind.CHECKPOINT:
            saves[(event.job_id, event.attempt)].append(event.at)
        elif event.kind == NoteKind.CHECKPOINT_FAILED:
            failed_saves[(event.job_id, event.attempt)].append(event.at)
    return JobDetail(
        job=JobSummary.of(job, figures),
        attempts=[
            AttemptOut(
                job_id=a.job_id, attempt=a.attempt, label=_label(job, a.job_id, a.attempt),
                started=a.started, ended=a.ended, outcome=a.outcome, end_reason=a.end_reason, nodes=a.nodes,
                first_checkpoint=a.first_checkpoint, last_checkpoint=a.last_checkpoint,
                checkpoints=sorted(saves.get((a.job_id, a.attempt), [])),
                failed_checkpoints=sorted(failed_saves.get((a.job_id, a.attempt), [])),
            )
            for a in _in_time_order(attempts)
        ],
        events=[EventOut.of(e) for e in events],
        actions=[ActionOut.of(a) for a in store.actions(job.job_id)],
        verdicts=[
            VerdictOut(job_id=j, attempt=n, label=_label(job, j, n), at=at, fault=v.fault, nodes=list(v.nodes),
                       cause=v.cause, evidence=list(v.evidence), basis=v.basis)  # fmt: skip
            for j, n, at, v in store.verdicts([m.job_id for m in members])
        ],
        throughput=[ThroughputPoint(attempt=n, at=at, value=value) for n, at, value in store.throughput(job.job_id)],
        efficiency=EfficiencyOut.of(figures),
        log_files=[LogFileOut(attempt=f.attempt, path=f.position.path, offset=f.position.offset)
                   for f in store.files(job.job_id)],  # fmt: skip
        budgets=_budgets(store, job),
    )  # fmt: skip


def _budgets(store: Store, job: ManagedJob) -> BudgetsOut:
    """The job's requeues by cause, with the caps the agent recorded."""
    meta = store.meta()
    scope = meta.get("requeue_limit_scope")
    caps = {Budget.APPLICATION: job.limit, Budget.NODE: meta.get("node_requeue_cap"),
            Budget.INFRASTRUCTURE: meta.get("infrastructure_requeue_cap")}  # fmt: skip
    total = job.limit if scope != "application" else meta.get("site_requeue_cap")
    return BudgetsOut(scope=None if scope is None else str(scope), used=job.requeues_used,
                      cap=None if total is None else int(str(total)),
                      by_cause=[BudgetOut(budget=b, used=budgets.used(job, b),
                                          cap=None if caps[b] is None else int(str(caps[b]))) for b in Budget])  # fmt: skip


def _label(job: ManagedJob, job_id: int, attempt: int) -> str:
    # In a chain every job is an attempt: named by job id as users do ("1778(0)").
    return f"{job_id}({attempt})" if job.chain else f"attempt {attempt}"


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


def kpi(store: Store, query: KpiQuery, now: float) -> Kpi:
    """Training-time efficiency per job (per chain in singleton mode) with time in the window, and in total."""
    since = parse_since(query.since, now)
    jobs = [j for j in store.load_jobs(include_gone=True).values() if query.user is None or j.user == query.user]
    known = {j.job_id: j for j in jobs}
    chains: dict[str, list[ManagedJob]] = {}
    # A chain is one unit, counted at its first job seen.
    units = [(job, _members(store, job, known, chains)) for job in jobs if not job.chain or job.chain not in chains]
    attempts = _attempts_by_job(store, (m.job_id for _, group in units for m in group))
    rows, total = [], NOTHING
    for job, group in units:
        figures = _figures(group, attempts, now, since)
        ids = sorted({a.job_id for m in group for a in attempts.get(m.job_id, [])})
        if ids and figures.elapsed > 0:
            label = f"chain {job.name} ({', '.join(map(str, ids))})" if job.chain else str(job.job_id)
            rows.append(KpiRow(job=label, job_ids=ids, user=job.user, figures=EfficiencyOut.of(figures)))
            total += figures
    return Kpi(since=since, user=query.user, jobs=rows, total=EfficiencyOut.of(total))
