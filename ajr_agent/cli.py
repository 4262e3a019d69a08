"""`ajr`: the operators' view of the agent's state, and the rule tools.

A thin layer over the store and the rules: it reads what the agent recorded and
never decides anything itself.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Settings, load_settings
from .errors import AjrError
from .logs import log_prefix
from .model import ManagedJob
from .rules import RuleFileError, RuleSet, default_rules_dir
from .store import Store


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
@click.option("--all", "show_all", is_flag=True, help="include jobs that have left Slurm")
@click.pass_obj
@_fail_on_ajr_errors
def status(ctx: Context, as_json: bool, show_all: bool) -> None:
    """List the managed jobs and the agent's state."""
    store = ctx.store()
    meta = store.meta()
    jobs = list(store.load_jobs(include_gone=show_all).values())
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
    if as_json:
        click.echo(json.dumps({
            "job": _job_summary(job), "managed": True,
            "events": [asdict(e) for e in events],
            "actions": [{**asdict(a), "action": {**asdict(a.action), "kind": a.action.kind.value}} for a in actions],
            "log_files": [{"attempt": f.attempt, **asdict(f.position)} for f in files],
        }, indent=2))  # fmt: skip
        return
    limit = f"{job.limit}" + (f" (job asked {job.requested_limit})" if job.requested_limit not in (None, job.limit) else "")
    click.echo(f"job {job.job_id} {job.name} (user {job.user}), {job.mode.value} mode")
    click.echo(f"  Slurm state {job.slurm_state or '-'}, AJR {job.phase.value}, attempt {job.attempt}, "
               f"requeues {job.requeues_used} of {limit}")  # fmt: skip
    if job.stop_reason:
        click.echo(f"  not requeued: {job.stop_reason}")
    click.echo(f"  last checkpoint {_when(job.last_checkpoint)}, nodes {job.nodes or '-'}")
    if files:
        for f in files:
            click.echo(f"  log (attempt {f.attempt}): {f.position.path}")
    else:
        click.echo(f"  no log file found yet: looking for '{log_prefix(job.name, job.job_id)}_..._time_....log' "
                   f"in {', '.join(filter(None, (job.work_dir, job.stdout_dir))) or 'the configured log_dirs'}")  # fmt: skip
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
        click.echo(f"  {_when(entry.created_at)}  [{entry.action.attempt}] {entry.action.kind.value:<13} "
                   f"{entry.status}{tag}{error} - {entry.action.reason}")  # fmt: skip


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


if __name__ == "__main__":
    main()
