"""`ajr requeue|release|forget`: an operator acts on a job, journaled like the agent's own actions."""

from __future__ import annotations

import os
import pwd
import time

import click

from ajr_agent.adapters.slurm import CommandGateway, SlurmError
from ajr_agent.surfaces import operator
from ajr_agent.surfaces.cli_context import Context, fail_on_ajr_errors


def operator_name(ctx: Context, verb: str) -> str:
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


def _slurm_action(ctx: Context, verb: operator.SlurmVerb, job_id: int) -> None:
    who = operator_name(ctx, verb)
    store = ctx.store()
    job = store.job(job_id)
    # A job AJR does not manage may be acted on too: the operator's word, journaled all the same.
    result = operator.slurm_action(store, ctx.settings, verb, job_id, job.attempt if job else 0, f"operator:{who}",
                                   f"operator request by {who}", time.time())  # fmt: skip
    if result.status != "done":
        raise click.ClickException(result.message)
    click.echo(result.message)


@click.command()
@click.argument("job_id", type=int)
@click.pass_obj
@fail_on_ajr_errors
def requeue(ctx: Context, job_id: int) -> None:
    """Requeue a job now (scontrol requeue), journaled like the agent's own actions."""
    _slurm_action(ctx, "requeue", job_id)


@click.command()
@click.argument("job_id", type=int)
@click.pass_obj
@fail_on_ajr_errors
def release(ctx: Context, job_id: int) -> None:
    """Release a held job now (scontrol release, StartTime=now+2), journaled."""
    _slurm_action(ctx, "release", job_id)


@click.command()
@click.argument("job_id", type=int)
@click.pass_obj
@fail_on_ajr_errors
def forget(ctx: Context, job_id: int) -> None:
    """Stop managing a job: the agent leaves it alone from its next poll on."""
    who = operator_name(ctx, "forget")
    click.echo(operator.forget(ctx.store(), job_id, who, time.time()).message)


COMMANDS = (requeue, release, forget)
