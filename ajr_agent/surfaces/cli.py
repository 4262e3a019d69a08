"""`ajr`: the operators' view of the agent's state, and the rule tools.

A thin layer over the store and the rules: it reads what the agent recorded and
never decides anything itself.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import statistics
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ajr_agent import __version__
from ajr_agent.domain import efficiency
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.config_file import load_settings
from ajr_agent.domain.errors import AjrError
from ajr_agent.runtime.executor import run_operator_action
from ajr_agent.views.explain import Facts, explain
from ajr_agent.adapters.logs import log_prefix
from ajr_agent.domain.model import Action, ActionKind, Attempt, ManagedJob
from ajr_agent.domain.policy import OVER, RECOVERING
from ajr_agent.detect.rules import RuleFileError, RuleSet, default_rules_dir
from ajr_agent.adapters.slurm import CommandGateway, SlurmError
from ajr_agent.adapters.store import ActionStatus, Store
from ajr_agent.surfaces.web import make_server


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def _ago(epoch: float | None) -> str:
    if not epoch:
        return "never"
    seconds = max(0.0, time.time() - epoch)
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


class Context:
    """What every command needs: the settings, and the store opened on demand."""

    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The agent's settings, as the agent itself reads them."""
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings

    def store(self) -> Store:
        """The state database the agent writes."""
        if not self.settings.state_db.exists():
            raise click.ClickException(
                f"no state database at {self.settings.state_db}: the agent has not run with this configuration yet"
            )
        return Store(self.settings.state_db)


def _fail_on_ajr_errors(function):  # type: ignore[no-untyped-def]
    # A tired admin gets AJR's own message, not a traceback.
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AjrError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="settings file (default $AJR_CONFIG or /etc/ajr/ajr.toml)")  # fmt: skip
@click.version_option(__version__)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """Automatic job recovery for Slurm: what the agent sees and did."""
    ctx.obj = Context(config_file)


def _limit_text(job: ManagedJob) -> str:
    return f"{job.requeues_used}/{job.limit}"


def _job_summary(job: ManagedJob) -> dict[str, Any]:
    row = asdict(job)
    row["mode"] = job.mode.value
    row["phase"] = job.phase.value
    return row


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--all", "show_all", is_flag=True, help="also jobs that are over: finished, handed over, gone, forgotten")
@click.pass_obj
@_fail_on_ajr_errors
def status(ctx: Context, as_json: bool, show_all: bool) -> None:
    """List the managed jobs and the agent's state."""
    store = ctx.store()
    meta = store.meta()
    jobs = [j for j in store.load_jobs(include_gone=show_all).values() if show_all or j.phase not in OVER]
    if as_json:
        click.echo(json.dumps({"agent": meta, "jobs": [_job_summary(j) for j in jobs]}, indent=2))
        return
    mode = "DRY RUN" if meta.get("dry_run") else "live"
    click.echo(
        f"agent: backend {meta.get('backend', '?')}, {mode}, last poll {_ago(meta.get('last_poll_at'))} "  # type: ignore[arg-type]
        f"({meta.get('jobs_in_queue', '?')} jobs in queue, {meta.get('followed_files', 0)} log files followed)"
    )
    if meta.get("last_poll_error"):
        click.echo(f"last Slurm error ({_ago(meta.get('last_poll_error_at'))}): {meta['last_poll_error']}")  # type: ignore[arg-type]
    if not jobs:
        click.echo("no managed jobs")
        return
    header = ("JOBID", "NAME", "USER", "MODE", "SLURM", "AJR", "REQUEUES", "LAST CKPT", "LAST ANOMALY", "LAST ACTION")
    rows = [
        (str(j.job_id), j.name, j.user, j.mode.value, j.slurm_state or "-", j.phase.value, _limit_text(j),
         _when(j.last_checkpoint), j.last_anomaly or "-", j.last_action or "-")  # fmt: skip
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@main.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
@_fail_on_ajr_errors
def show(ctx: Context, job_id: int, as_json: bool) -> None:
    """One job's story: its events and AJR's actions in time order."""
    store = ctx.store()
    job = store.job(job_id)
    if job is None:
        refused = store.unmanaged(job_id)
        if refused:
            entry = refused[0]
            if as_json:
                click.echo(json.dumps({"job_id": job_id, "managed": False, **asdict(entry)}, indent=2))
            else:
                click.echo(f"job {job_id} ({entry.name}, user {entry.user}) is NOT managed: {entry.problem}")
                click.echo(f"its comment: {entry.comment}")
            return
        raise click.ClickException(
            f"job {job_id} is not known to AJR: its comment has no APS spec, or the agent has not seen it yet"
        )
    events, actions, files = store.events(job_id), store.actions(job_id), store.files(job_id)
    attempts, figures = _attempts_and_figures(store, job)
    verdicts = store.verdicts([a.job_id for a in attempts] or [job_id])
    series = store.throughput(job_id)
    if as_json:
        click.echo(json.dumps({
            "job": _job_summary(job), "managed": True,
            "attempts": [_attempt_summary(a) for a in attempts],
            "efficiency": _figures_summary(figures),
            "verdicts": [{"job_id": j, "attempt": n, "at": at, **asdict(v)} for j, n, at, v in verdicts],
            "throughput": [{"attempt": n, "at": at, "value": value} for n, at, value in series],
            "events": [asdict(e) for e in events],
            "actions": [{**asdict(a), "action": {**asdict(a.action), "kind": a.action.kind.value}} for a in actions],
            "log_files": [{"attempt": f.attempt, **asdict(f.position)} for f in files],
        }, indent=2))  # fmt: skip
        return
    limit = f"{job.limit}" + (f" (job asked {job.requested_limit})" if job.requested_limit not in (None, job.limit) else "")
    click.echo(f"job {job.job_id} {job.name} (user {job.user}), {job.mode.value} mode"
               + (f", chain {job.chain}" if job.chain else ""))  # fmt: skip
    click.echo(f"  Slurm state {job.slurm_state or '-'}, AJR {job.phase.value}, attempt {job.attempt}, "
               f"requeues {job.requeues_used} of {limit}")  # fmt: skip
    if job.stop_reason:
        click.echo(f"  not requeued: {job.stop_reason}")
    click.echo(f"  last checkpoint {_when(job.last_checkpoint)}, nodes {job.nodes or '-'}")
    click.echo(f"  training efficiency {_figures_line(figures)}")
    if files:
        for f in files:
            click.echo(f"  log (attempt {f.attempt}): {f.position.path}")
    else:
        click.echo(f"  no log file found yet: looking for '{log_prefix(job.name, job.job_id)}_..._time_....log' "
                   f"in {', '.join(filter(None, (job.work_dir, job.stdout_dir))) or 'the configured log_dirs'}")  # fmt: skip
    click.echo("attempts:")
    for a in attempts:
        ckpts = f"checkpoints {_when(a.first_checkpoint)} .. {_when(a.last_checkpoint)}" if a.first_checkpoint else "no checkpoint"
        click.echo(f"  {_attempt_name(a.job_id, a.attempt, job)}  {_when(a.started)} -> {_when(a.ended) if a.ended else 'now':19}  "
                   f"{a.outcome.value:<9} {ckpts}  {a.end_reason}")  # fmt: skip
    if verdicts:
        click.echo("verdicts:")
        for j, n, at, v in verdicts:
            nodes = f" {','.join(v.nodes)}" if v.nodes else ""
            click.echo(f"  {_when(at)}  {_attempt_name(j, n, job)}  {v.fault}{nodes}: {v.cause}")
            for line in v.evidence:
                click.echo(f"  {'':19}  > {line[:200]}")
    if series:
        click.echo("throughput (TFLOP/s per report):")
        for attempt_no in sorted({n for n, _, _ in series}):
            values = [v for n, _, v in series if n == attempt_no]
            click.echo(f"  attempt {attempt_no}: {len(values)} reports, median {statistics.median(values):g}, "
                       f"min {min(values):g}, max {max(values):g}; last: {' '.join(f'{v:g}' for v in values[-8:])}")  # fmt: skip
    click.echo("events:")
    for event in events:
        attempt = "" if event.attempt is None or event.attempt < 0 else f"[{event.attempt}] "
        click.echo(f"  {_when(event.at)}  {attempt}{event.kind:<12} {event.text}")
        if event.line:
            click.echo(f"  {'':19}  {'':12} > {event.line[:200]}")
    click.echo("actions:")
    for entry in actions:
        tag = " (dry run)" if entry.dry_run else ""
        error = f": {entry.error}" if entry.error else ""
        who = "" if entry.origin == "agent" else f" by {entry.origin}"
        target = f" job {entry.action.target}" if entry.action.target is not None else ""
        click.echo(f"  {_when(entry.created_at)}  [{entry.action.attempt}] {entry.action.kind.value:<13}{target} "
                   f"{entry.status}{tag}{who}{error} - {entry.action.reason}")  # fmt: skip


def _attempt_name(job_id: int, attempt: int, job: ManagedJob) -> str:
    # In a chain every job is an attempt: name it by job id as users do ("1778(0)").
    return f"{job_id}({attempt})" if job.chain else f"attempt {attempt}"


def _attempts_and_figures(store: Store, job: ManagedJob,
                          since: float | None = None) -> tuple[list[Attempt], efficiency.Efficiency]:  # fmt: skip
    """A job's attempts (its chain's, in singleton mode) and their efficiency figures."""
    members = store.chain_jobs(job.chain) if job.chain else [job]
    attempts = store.attempts([m.job_id for m in members])
    recovering = any(m.phase in RECOVERING for m in members)
    return attempts, efficiency.of_attempts(attempts, time.time(), recovering, since)


def _attempt_summary(attempt: Attempt) -> dict[str, Any]:
    return {**asdict(attempt), "outcome": attempt.outcome.value}


def _figures_summary(figures: efficiency.Efficiency) -> dict[str, Any]:
    return {**asdict(figures), "lost": figures.lost, "efficiency": figures.efficiency}


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: 42 s, 12.5 min, 3.20 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _figures_line(figures: efficiency.Efficiency) -> str:
    ratio = "-" if figures.efficiency is None else f"{figures.efficiency:.1%}"
    risk = f", {_duration(figures.at_risk)} not yet saved" if figures.at_risk else ""
    return (f"{ratio}: {_duration(figures.productive)} productive of {_duration(figures.elapsed - figures.at_risk)}; "
            f"lost {_duration(figures.lost_unsaved)} unsaved work + {_duration(figures.lost_restart)} restarts{risk}")  # fmt: skip


def _parse_since(value: str | None) -> float | None:
    """`24h`, `7d`, `90m` back from now, or a date/time `2026-11-01[T10:00]`."""
    if not value:
        return None
    relative = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if relative:
        seconds = float(relative.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative.group(2)]
        return time.time() - seconds
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: give a duration such as 24h or 7d, or a date such as 2026-11-01") from exc


@main.command()
@click.option("--since", help="window start: a duration back from now (24h, 7d) or a date (2026-11-01)")
@click.option("--user", "user", help="only this user's jobs")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
@_fail_on_ajr_errors
def kpi(ctx: Context, since: str | None, user: str | None, as_json: bool) -> None:
    """Training-time efficiency per job (per chain in singleton mode) and in total."""
    store = ctx.store()
    start = _parse_since(since)
    rows: list[tuple[str, str, efficiency.Efficiency]] = []
    seen_chains: set[str] = set()
    for job in store.load_jobs(include_gone=True).values():
        if user and job.user != user or job.chain in seen_chains:
            continue
        if job.chain:
            seen_chains.add(job.chain)
        attempts, figures = _attempts_and_figures(store, job, start)
        if not attempts or figures.elapsed == 0:
            continue
        label = f"chain {job.name} ({', '.join(str(i) for i in sorted({a.job_id for a in attempts}))})" if job.chain else str(job.job_id)
        rows.append((label, job.user, figures))
    total = sum((r[2] for r in rows), efficiency.NOTHING)
    if as_json:
        click.echo(json.dumps({"since": start, "user": user,
                               "jobs": [{"job": label, "user": who, **_figures_summary(f)} for label, who, f in rows],
                               "total": _figures_summary(total)}, indent=2))  # fmt: skip
        return
    if not rows:
        click.echo("no training time recorded" + (f" since {_when(start)}" if start else ""))
        return
    click.echo(f"{'JOB':<24} {'USER':<10} {'EFFICIENCY':>10} {'ELAPSED':>10} {'PRODUCTIVE':>11} {'LOST':>10}")
    for label, who, figures in [*rows, ("TOTAL", "", total)]:
        ratio = "-" if figures.efficiency is None else f"{figures.efficiency:.1%}"
        click.echo(f"{label:<24} {who:<10} {ratio:>10} {_duration(figures.elapsed):>10} {_duration(figures.productive):>11} "
                   f"{_duration(figures.lost):>10}")  # fmt: skip


@main.command("explain")
@click.argument("job_id", type=int)
@click.pass_obj
@_fail_on_ajr_errors
def explain_job(ctx: Context, job_id: int) -> None:
    """Why a job is or is not managed, and what the agent will do next."""
    store = ctx.store()
    job = store.job(job_id)
    refused = store.unmanaged(job_id)
    try:
        live = CommandGateway(ctx.settings.slurm_command_timeout).job(job_id)
    except SlurmError as exc:
        click.echo(f"(Slurm not reachable, explaining from AJR's records only: {exc})", err=True)
        live = None
    searched: list[Path] = []
    if job is not None:
        searched = [Path(d) for d in (job.work_dir, job.stdout_dir) if d] + list(ctx.settings.log_dirs)
    last_poll = store.meta().get("last_poll_at")
    facts = Facts(
        job_id=job_id, managed=job, unmanaged=refused[0] if refused else None, live=live,
        log_files=[f.position.path for f in store.files(job_id)], searched_dirs=searched,
        attempts=_attempts_and_figures(store, job)[0] if job else [],
        crashloop_threshold=ctx.settings.crashloop_threshold,
        agent_seen_recently=isinstance(last_poll, (int, float)) and time.time() - last_poll < 60,
    )  # fmt: skip
    for line in explain(facts):
        click.echo(line)


def _operator(ctx: Context, verb: str) -> str:
    """The caller's name, when they may act on jobs: root or the cluster's SlurmUser."""
    name = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        return name
    try:
        allowed = CommandGateway(ctx.settings.slurm_command_timeout).slurm_user()
    except SlurmError as exc:
        raise click.ClickException(f"cannot check who may {verb} jobs: {exc}") from exc
    if name != allowed:
        raise click.ClickException(f"only root or the Slurm user ({allowed}) may {verb} jobs through AJR; you are {name}")
    return name


def _run_operator_action(ctx: Context, kind: ActionKind, job_id: int, verb: str) -> None:
    who = _operator(ctx, verb)
    store = ctx.store()
    job = store.job(job_id)
    action = Action(kind, job_id, job.attempt if job else 0, f"operator request by {who}")
    entry = run_operator_action(store, ctx.settings, action, f"operator:{who}", time.time())
    if entry.status != ActionStatus.DONE:
        raise click.ClickException(f"{verb} of job {job_id} failed: {entry.error}")
    click.echo(f"job {job_id}: {verb} done (journal entry {entry.id})")


@main.command()
@click.argument("job_id", type=int)
@click.pass_obj
@_fail_on_ajr_errors
def requeue(ctx: Context, job_id: int) -> None:
    """Requeue a job now (scontrol requeue), journaled like the agent's own actions."""
    _run_operator_action(ctx, ActionKind.REQUEUE, job_id, "requeue")


@main.command()
@click.argument("job_id", type=int)
@click.pass_obj
@_fail_on_ajr_errors
def release(ctx: Context, job_id: int) -> None:
    """Release a held job now (scontrol release, StartTime=now+2), journaled."""
    _run_operator_action(ctx, ActionKind.RELEASE, job_id, "release")


@main.command()
@click.argument("job_id", type=int)
@click.pass_obj
@_fail_on_ajr_errors
def forget(ctx: Context, job_id: int) -> None:
    """Stop managing a job: the agent leaves it alone from its next poll on."""
    who = _operator(ctx, "forget")
    store = ctx.store()
    store.forget(job_id, who, time.time())
    click.echo(f"job {job_id}: the agent stops managing it at its next poll")


@main.command()
@click.option("--bind", help="address to listen on (default: the http_bind setting, 127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535), help="port (default: the http_port setting, 8470)")
@click.pass_obj
@_fail_on_ajr_errors
def serve(ctx: Context, bind: str | None, port: int | None) -> None:
    """Serve the cockpit, the JSON API and /metrics over the store, beside the agent or on another host."""
    ctx.store().close()
    chosen = port or ctx.settings.http_port
    if not chosen:
        raise click.UsageError("http_port is 0 in the settings: give --port")
    server = make_server(ctx.settings, None, bind or ctx.settings.http_bind, chosen)
    click.echo(f"serving the cockpit, API and /metrics of {ctx.settings.state_db} on {server.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.group()
def rules() -> None:
    """Check rule files, and see what rules make of a log."""


@rules.command("check")
@click.argument("dirs", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def rules_check(ctx: Context, dirs: tuple[Path, ...]) -> None:
    """Validate the rule files in DIRS (default: the shipped rules and the configured rules_dirs)."""
    chosen = list(dirs) or [default_rules_dir(), *ctx.settings.rules_dirs]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise click.ClickException(f"no such directory: {', '.join(map(str, missing))}")
    try:
        ruleset = RuleSet.load(chosen)
    except RuleFileError as exc:
        click.echo(f"FAIL {exc}", err=True)
        sys.exit(1)
    counts: dict[str, int] = {}
    for rule in ruleset.rules:
        counts[rule.kind.value] = counts.get(rule.kind.value, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    click.echo(f"ok: {len(ruleset.rules)} rules ({summary}) from {', '.join(map(str, chosen))}")
    for rule, why in ruleset.slow_rules():
        click.echo(f"slow: rule {rule.name!r} ({rule.source or 'no file'}) {why}")


@rules.command("test")
@click.argument("logfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rules-dir", "dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="rule directories to use instead of the shipped and configured ones")  # fmt: skip
@click.pass_obj
@_fail_on_ajr_errors
def rules_test(ctx: Context, logfile: Path, dirs: tuple[Path, ...]) -> None:
    """Show which lines of LOGFILE match which rule."""
    ruleset = RuleSet.load(list(dirs) or [default_rules_dir(), *ctx.settings.rules_dirs])
    matched = 0
    with logfile.open("r", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            for match in ruleset.match(text):
                matched += 1
                rule = match.rule
                what = rule.kind.value + (f"/{rule.category}/{rule.fault.value}" if rule.category else "")
                value = f" value={match.value:g}" if match.value is not None else ""
                click.echo(f"{logfile.name}:{number}: {rule.name} [{what}]{value}: {text[:200]}")
    click.echo(f"{matched} match(es)")


@main.command("install")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="install into this directory as if it were / (for tests and trials)")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="say what would change, change nothing")
@click.pass_obj
@_fail_on_ajr_errors
def install_command(ctx: Context, prefix: Path, dry_run: bool) -> None:
    """Put AJR in place on the slurmctld host (idempotent) and say what is left to do by hand."""
    from ajr_agent.ops import install

    if ctx.config_file is not None:
        raise click.UsageError("ajr install manages <prefix>/etc/ajr/ajr.toml; --config does not apply to it")
    report = install.install(prefix, dry_run, install.probe_host())
    for line in report.lines():
        click.echo(line)


@main.command("doctor")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="where `ajr install --prefix` put AJR")  # fmt: skip
@click.pass_obj
@_fail_on_ajr_errors
def doctor_command(ctx: Context, prefix: Path) -> None:
    """Check the installation: Slurm, the hooks, the directories, the rules and the running agent."""
    from ajr_agent.ops import doctor

    checks = doctor.diagnose(doctor.doctor_config(ctx.config_file, prefix), prefix, doctor.live_probes())
    for line in doctor.format_checks(checks):
        click.echo(line)
    sys.exit(0 if all(check.ok for check in checks) else 1)


if __name__ == "__main__":
    main()
