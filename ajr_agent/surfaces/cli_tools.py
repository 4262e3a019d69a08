"""`ajr rules check|test`, `ajr install` and `ajr doctor`: the tools for rule files and for the host."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ajr_agent.detect.rules import RuleFileError, RuleSet, default_rules_dir
from ajr_agent.surfaces.cli_context import Context, fail_on_ajr_errors
from ajr_agent.surfaces.cli_render import LINE_SHOWN


@click.group()
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
@fail_on_ajr_errors
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
                click.echo(f"{logfile.name}:{number}: {rule.name} [{what}]{value}: {text[:LINE_SHOWN]}")
    click.echo(f"{matched} match(es)")


@click.command("install")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="install into this directory as if it were / (for tests and trials)")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="say what would change, change nothing")
@click.pass_obj
@fail_on_ajr_errors
def install_command(ctx: Context, prefix: Path, dry_run: bool) -> None:
    """Put AJR in place on the slurmctld host (idempotent) and say what is left to do by hand."""
    from ajr_agent.ops import install

    if ctx.config_file is not None:
        raise click.UsageError("ajr install manages <prefix>/etc/ajr/ajr.toml; --config does not apply to it")
    report = install.install(prefix, dry_run, install.probe_host())
    for line in report.lines():
        click.echo(line)


@click.command("doctor")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="where `ajr install --prefix` put AJR")  # fmt: skip
@click.pass_obj
@fail_on_ajr_errors
def doctor_command(ctx: Context, prefix: Path) -> None:
    """Check the installation: Slurm, the hooks, the directories, the rules and the running agent."""
    from ajr_agent.ops import doctor

    checks = doctor.diagnose(doctor.doctor_config(ctx.config_file, prefix), prefix, doctor.live_probes())
    for line in doctor.format_checks(checks):
        click.echo(line)
    sys.exit(0 if all(check.ok for check in checks) else 1)


COMMANDS = (rules, install_command, doctor_command)
