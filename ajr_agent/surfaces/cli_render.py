"""The CLI's text, rendered from the read model's answers (`ajr_agent.views.models`): what `ajr
status`, `ajr show` and `ajr kpi` print is what their --json prints, laid out for a terminal."""

from __future__ import annotations

import statistics
from datetime import datetime

from ajr_agent.adapters.logs import log_prefix
from ajr_agent.views.models import EfficiencyOut, JobDetail, JobSummary, Kpi, Overview, RefusedJob

# Log lines and evidence are shown up to this many characters.
LINE_SHOWN = 200


def when(epoch: float | None) -> str:
    """An epoch as local date and time, `-` for none."""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def ago(epoch: float | None, now: float) -> str:
    """How long before `now` an epoch was, `never` for none."""
    if not epoch:
        return "never"
    seconds = max(0.0, now - epoch)
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 42 s, 12.5 min, 3.20 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _ratio(figures: EfficiencyOut) -> str:
    return "-" if figures.efficiency is None else f"{figures.efficiency:.1%}"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Rows under a header, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def status_lines(overview: Overview, now: float) -> list[str]:
    """`ajr status`: the agent's last poll, then a row per job."""
    agent, listed = overview.agent, overview.jobs
    mode = "DRY RUN" if agent.dry_run else "live"
    queued = "?" if agent.jobs_in_queue is None else agent.jobs_in_queue
    lines = [f"agent: backend {agent.backend or '?'}, {mode}, last poll {ago(agent.last_poll_at, now)} "
             f"({queued} jobs in queue, {agent.followed_files or 0} log files followed)"]  # fmt: skip
    if overview.control is not None:
        control = overview.control
        lines.insert(0, f"this host ({control.host}): {control.role.value}, {control.reason} (since "
                        f"{when(control.since)}, checked {ago(control.checked_at, now)})")  # fmt: skip
    if agent.agent_host:
        lines.append(f"the state database was last written by the agent on {agent.agent_host}")
    if agent.last_poll_error:
        lines.append(f"last Slurm error ({ago(agent.last_poll_error_at, now)}): {agent.last_poll_error}")
    if not listed.jobs:
        return lines + ["no managed jobs"]
    header = ("JOBID", "NAME", "USER", "MODE", "SLURM", "AJR", "REQUEUES", "LAST CKPT", "LAST ANOMALY", "LAST ACTION")
    rows = [
        (str(j.job_id), j.name, j.user, j.mode.value, j.slurm_state or "-", j.phase.value, f"{j.requeues_used}/{j.limit}",
         when(j.last_checkpoint), j.last_anomaly or "-", j.last_action or "-")  # fmt: skip
        for j in listed.jobs
    ]
    lines += table(header, rows)
    if listed.total > len(listed.jobs):
        lines.append(f"(the newest {len(listed.jobs)} of {listed.total} jobs)")
    return lines


def refused_lines(refused: RefusedJob) -> list[str]:
    """`ajr show` of a job whose spec was refused."""
    return [f"job {refused.job_id} ({refused.name}, user {refused.user}) is NOT managed: {refused.problem}",
            f"its comment: {refused.comment}"]  # fmt: skip


def figures_line(figures: EfficiencyOut) -> str:
    """Efficiency with what it is made of, on one line."""
    risk = f", {duration(figures.at_risk)} not yet saved" if figures.at_risk else ""
    return (f"{_ratio(figures)}: {duration(figures.productive)} productive of {duration(figures.elapsed - figures.at_risk)}; "
            f"lost {duration(figures.lost_unsaved)} unsaved work + {duration(figures.lost_restart)} restarts{risk}")  # fmt: skip


def story_lines(detail: JobDetail) -> list[str]:
    """`ajr show`: the job, its attempts, verdicts, throughput, events and actions in time order."""
    return [*_heading(detail), *_attempts(detail), *_verdicts(detail), *_throughput(detail), *_events(detail),
            *_actions(detail)]  # fmt: skip


def _heading(detail: JobDetail) -> list[str]:
    job = detail.job
    asked = f" (job asked {job.requested_limit})" if job.requested_limit not in (None, job.limit) else ""
    lines = [
        f"job {job.job_id} {job.name} (user {job.user}), {job.mode.value} mode" + (f", chain {job.chain}" if job.chain else ""),
        f"  Slurm state {job.slurm_state or '-'}, AJR {job.phase.value}, attempt {job.attempt}, "
        f"requeues {job.requeues_used} of {job.limit}{asked}",
    ]  # fmt: skip
    lines.append(f"  requeues by cause: {budget_line(detail)}")
    if job.stop_reason:
        lines.append(f"  not requeued: {job.stop_reason}")
    kept = f", lemon nodes kept out {job.keep_out}" if job.keep_out else ""
    lines.append(f"  last checkpoint {when(job.last_checkpoint)}, nodes {job.nodes or '-'}{kept}")
    lines.append(f"  training efficiency {figures_line(detail.efficiency)}")
    lines += [f"  log (attempt {f.attempt}): {f.path}" for f in detail.log_files] or [_no_log(job)]
    return lines


def budget_line(detail: JobDetail) -> str:
    """`own failures 1/10, node 2/10, infrastructure 0/10; max_requeue_times bounds the total`."""
    budgets = detail.budgets
    names = {"application": "own failures", "node": "node", "infrastructure": "infrastructure"}
    parts = ", ".join(f"{names[b.budget.value]} {b.used}/{'?' if b.cap is None else b.cap}" for b in budgets.by_cause)
    bound = {"total": "max_requeue_times bounds the total", "application": "max_requeue_times bounds the job's own "
             f"failures, the site cap ({budgets.cap}) the total"}.get(budgets.scope or "", "")  # fmt: skip
    return parts + (f"; {bound}" if bound else "")


def _no_log(job: JobSummary) -> str:
    where = ", ".join(filter(None, (job.work_dir, job.stdout_dir))) or "the configured log_dirs"
    return f"  no log file found yet: looking for '{log_prefix(job.name, job.job_id)}_..._time_....log' in {where}"


def _attempts(detail: JobDetail) -> list[str]:
    lines = ["attempts:"]
    for a in detail.attempts:
        saved = f"checkpoints {when(a.first_checkpoint)} .. {when(a.last_checkpoint)}" if a.first_checkpoint else "no checkpoint"
        ended = when(a.ended) if a.ended else "now"
        lines.append(f"  {a.label}  {when(a.started)} -> {ended:19}  {a.outcome.value:<9} {saved}  {a.end_reason}")
    return lines


def _verdicts(detail: JobDetail) -> list[str]:
    if not detail.verdicts:
        return []
    lines = ["verdicts:"]
    for v in detail.verdicts:
        nodes = f" {','.join(v.nodes)}" if v.nodes else ""
        lines.append(f"  {when(v.at)}  {v.label}  {v.fault.value}{nodes}: {v.cause}")
        lines += [f"  {'':19}  > {line[:LINE_SHOWN]}" for line in v.evidence]
    return lines


def _throughput(detail: JobDetail) -> list[str]:
    if not detail.throughput:
        return []
    lines = ["throughput (TFLOP/s per report):"]
    for attempt in sorted({p.attempt for p in detail.throughput}):
        values = [p.value for p in detail.throughput if p.attempt == attempt]
        lines.append(f"  attempt {attempt}: {len(values)} reports, median {statistics.median(values):g}, "
                     f"min {min(values):g}, max {max(values):g}; last: {' '.join(f'{v:g}' for v in values[-8:])}")  # fmt: skip
    return lines


def _events(detail: JobDetail) -> list[str]:
    lines = ["events:"]
    for event in detail.events:
        attempt = "" if event.attempt is None or event.attempt < 0 else f"[{event.attempt}] "
        lines.append(f"  {when(event.at)}  {attempt}{event.kind:<12} {event.text}")
        if event.line:
            lines.append(f"  {'':19}  {'':12} > {event.line[:LINE_SHOWN]}")
    return lines


def _actions(detail: JobDetail) -> list[str]:
    lines = ["actions:"]
    for a in detail.actions:
        tag = " (dry run)" if a.dry_run else ""
        error = f": {a.error}" if a.error else ""
        who = "" if a.origin == "agent" else f" by {a.origin}"
        target = f" job {a.target}" if a.target is not None else ""
        lines.append(f"  {when(a.created_at)}  [{a.attempt}] {a.kind.value:<13}{target} {a.status.value}{tag}{who}{error}"
                     f" - {a.reason}")  # fmt: skip
    return lines


def kpi_lines(kpi: Kpi) -> list[str]:
    """`ajr kpi`: a row per job or chain, then the total."""
    if not kpi.jobs:
        return ["no training time recorded" + (f" since {when(kpi.since)}" if kpi.since else "")]
    lines = [f"{'JOB':<24} {'USER':<10} {'EFFICIENCY':>10} {'ELAPSED':>10} {'PRODUCTIVE':>11} {'LOST':>10}"]
    for label, who, figures in [*((r.job, r.user, r.figures) for r in kpi.jobs), ("TOTAL", "", kpi.total)]:
        lines.append(f"{label:<24} {who:<10} {_ratio(figures):>10} {duration(figures.elapsed):>10} "
                     f"{duration(figures.productive):>11} {duration(figures.lost):>10}")  # fmt: skip
    return lines
