"""`ajr nodes` and `ajr node forgive NODE`: the node ledger for operators.

`ajr nodes` prints the read model's NodeList (views.nodes) as `GET /api/nodes` does with
--json, as a table without; `ajr node forgive` is an operator's request the agent applies
at its next poll, as `ajr forget` is.
"""

from __future__ import annotations

import time

import click

from ajr_agent.surfaces import operator
from ajr_agent.surfaces.cli_context import Context, echo_json, fail_on_ajr_errors
from ajr_agent.surfaces.cli_operator import operator_name
from ajr_agent.surfaces.cli_render import ago, duration, table
from ajr_agent.views.nodes import NodeList, NodeOut, node_list


def _standing(node: NodeOut, now: float) -> str:
    if node.lemon:
        due = (f", trusted again in {duration(node.trusted_again_at - now)} without new blame"
               if node.trusted_again_at and node.trusted_again_at > now else "")  # fmt: skip
        return f"LEMON since {ago(node.lemon_since, now)}{due}"
    if node.trusted_at:
        return f"trusted again {ago(node.trusted_at, now)} by {node.trusted_by}"
    return "ok"


def nodes_lines(answer: NodeList, now: float, show_all: bool) -> list[str]:
    """`ajr nodes`: the rules, then a row per node (those with blames, exclusions or actions, unless `show_all`)."""
    rule = (f"a node is a lemon at {answer.lemon_jobs or 'off'} witnesses or {answer.lemon_blames or 'off'} blames "
            f"within {duration(answer.lemon_window)}; trusted again after {duration(answer.trust_after)} in service "
            f"without blame; lemons: {answer.lemon_action}")  # fmt: skip
    shown = [n for n in answer.nodes if show_all or n.lemon or n.blames_total or n.excluded_from or n.actions]
    if not shown:
        return [rule, f"{answer.lemons} lemons; no node blamed" + ("" if show_all else " (--all lists every node)")]
    header = ("NODE", "STANDING", "SERVICE", "WITNESSES", "BLAMES", "TRUSTED EVIDENCE", "EXCLUDED FROM", "DRAINS",
              "REBOOTS")  # fmt: skip
    rows = [(n.node, _standing(n, now), "in" if n.in_service else "out", str(n.witnesses),
             f"{n.recent} recent / {n.blames_total}", "yes" if n.trusted_evidence else "no",
             ",".join(map(str, n.excluded_from)) or "-", str(n.drains), str(n.reboots)) for n in shown]  # fmt: skip
    return [rule, f"{answer.lemons} lemons", *table(header, rows)]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (GET /api/nodes)")
@click.option("--all", "show_all", is_flag=True, help="also the nodes that were never blamed")
@click.pass_obj
@fail_on_ajr_errors
def nodes(ctx: Context, as_json: bool, show_all: bool) -> None:
    """The node ledger: each node's blames, standing (lemon, trusted again), exclusions, drains and reboots."""
    now = time.time()
    answer = node_list(ctx.store(), now)
    if as_json:
        echo_json(answer)
        return
    for line in nodes_lines(answer, now, show_all):
        click.echo(line)


@click.group()
def node() -> None:
    """Operators' actions on one node of the ledger."""


@node.command()
@click.argument("name")
@click.pass_obj
@fail_on_ajr_errors
def forgive(ctx: Context, name: str) -> None:
    """Trust NODE again now: no lemon, its record afresh, AJR's exclusions of it taken back (root or SlurmUser)."""
    who = operator_name(ctx, "forgive nodes")
    click.echo(operator.forgive(ctx.store(), name, f"operator:{who}", time.time()).message)


COMMANDS = (nodes, node)
