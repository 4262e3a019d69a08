"""`ajr`: the operators' view of the agent's state, and the rule tools.

A thin layer over the read model: `ajr status|show|kpi` ask the same queries the JSON API
asks (`ajr_agent.views.queries`), print their models as they are with --json and rendered
by `cli_render` without; nothing here decides anything. The operator commands live in
`cli_operator`, the rule and host tools in `cli_tools`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ajr_agent import __version__
from ajr_agent.adapters.slurm import CommandGateway, SlurmError
from ajr_agent.surfaces import cli_nodes, cli_operator, cli_render, cli_replay, cli_tools
from ajr_agent.surfaces.cli_context import Context, echo_json, fail_on_ajr_errors
from ajr_agent.surfaces.web import make_server
from ajr_agent.views import queries
from ajr_agent.views.explain import explain, gather
from ajr_agent.views.models import MAX_JOBS, JobsQuery, KpiQuery, RefusedJob


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="settings file (default $AJR_CONFIG or /etc/ajr/ajr.toml)")  # fmt: skip
@click.version_option(__version__)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """Automatic job recovery for Slurm: what the agent sees and did."""
    ctx.obj = Context(config_file)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--all", "show_all", is_flag=True, help="also jobs that are over: finished, handed over, gone, forgotten")
@click.pass_obj
@fail_on_ajr_errors
def status(ctx: Context, as_json: bool, show_all: bool) -> None:
    """List the managed jobs and the agent's state."""
    now = time.time()
    query = JobsQuery(include_over=show_all, include_gone=show_all, limit=MAX_JOBS)
    overview = queries.overview(ctx.store(), query, now, queries.control_record(ctx.settings))
    if as_json:
        echo_json(overview)
        return
    for line in cli_render.status_lines(overview, now):
        click.echo(line)


@main.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
@fail_on_ajr_errors
def show(ctx: Context, job_id: int, as_json: bool) -> None:
    """One job's story: its events and AJR's actions in time order."""
    story = queries.job_story(ctx.store(), job_id, time.time())
    if as_json:
        echo_json(story)
        return
    lines = cli_render.refused_lines(story) if isinstance(story, RefusedJob) else cli_render.story_lines(story)
    for line in lines:
        click.echo(line)


@main.command()
@click.option("--since", help="window start: a duration back from now (24h, 7d) or a date (2026-11-01)")
@click.option("--user", "user", help="only this user's jobs")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
@fail_on_ajr_errors
def kpi(ctx: Context, since: str | None, user: str | None, as_json: bool) -> None:
    """Training-time efficiency per job (per chain in singleton mode) and in total."""
    store = ctx.store()
    try:
        answer = queries.kpi(store, KpiQuery(since=since, user=user), time.time())
    except queries.BadRequest as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from exc
    if as_json:
        echo_json(answer)
        return
    for line in cli_render.kpi_lines(answer):
        click.echo(line)


@main.command("explain")
@click.argument("job_id", type=int)
@click.pass_obj
@fail_on_ajr_errors
def explain_job(ctx: Context, job_id: int) -> None:
    """Why a job is or is not managed, and what the agent will do next."""
    store = ctx.store()
    try:
        live = CommandGateway(ctx.settings.slurm_command_timeout).job(job_id)
    except SlurmError as exc:
        click.echo(f"(Slurm not reachable, explaining from AJR's records only: {exc})", err=True)
        live = None
    facts = gather(store, job_id, live, ctx.settings.log_dirs, ctx.settings.crashloop_threshold, time.time())
    for line in explain(facts):
        click.echo(line)


@main.command()
@click.option("--bind", help="address to listen on (default: the http_bind setting, 127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535), help="port (default: the http_port setting, 8470)")
@click.pass_obj
@fail_on_ajr_errors
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


for _command in (*cli_operator.COMMANDS, *cli_nodes.COMMANDS, *cli_tools.COMMANDS, *cli_replay.COMMANDS):
    main.add_command(_command)


if __name__ == "__main__":
    main()
