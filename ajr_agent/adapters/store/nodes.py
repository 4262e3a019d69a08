"""The node ledger's rows: each node's blames and record, AJR's exclusions of it, operators' forgiveness.

The agent writes all of it but the forgiveness requests, which `ajr node forgive` and the
cockpit journal for the agent to apply (as `ajr forget` does for a job). The drains and
reboots of a node are in the action journal, read from there.
"""

from __future__ import annotations

import functools
from typing import Callable, Concatenate, Iterable, ParamSpec, TypeVar

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection
from ajr_agent.adapters.store.limits import excerpt
from ajr_agent.adapters.store.records import ActionStatus, JournalEntry
from ajr_agent.adapters.store.rows import entry_from_row
from ajr_agent.domain.ledger import Blame, Exclusion, Forgiveness, NodeRecord
from ajr_agent.domain.model import ActionKind, Basis

P = ParamSpec("P")
T = TypeVar("T")

_BLAME_COLUMNS = ("node", "job_id", "attempt", "user", "at", "basis", "cause")
_RECORD_COLUMNS = ("node", "lemon_since", "counted_since", "in_service", "in_service_since", "trusted_at", "trusted_by",
                   "acted_at")  # fmt: skip
_SAVE_BLAME = sql.upsert("node_blames", _BLAME_COLUMNS, ("node", "job_id", "attempt"))
_SAVE_RECORD = sql.upsert("node_states", _RECORD_COLUMNS, ("node",))
_SAVE_EXCLUSION = sql.upsert("node_exclusions", ("node", "job_id", "at", "taken_back_at"), ("node", "job_id"))
_NODE_ACTIONS = (ActionKind.DRAIN.value, ActionKind.REBOOT.value)


def _guarded(method: Callable[Concatenate[NodeRows, P], T]) -> Callable[Concatenate[NodeRows, P], T]:
    """Run through the connection's guarded(), as the Store's own methods are: StoreErrors out."""

    @functools.wraps(method)
    def wrapper(self: NodeRows, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._connection.guarded(functools.partial(method, self, *args, **kwargs))

    return wrapper


class NodeRows:
    """The ledger's tables of one store (`Store.nodes`)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @_guarded
    def add_blames(self, blames: Iterable[Blame]) -> None:
        """Record failures put on nodes; the same node, job and attempt again replaces the row."""
        rows = [(b.node, b.job_id, b.attempt, b.user, b.at, b.basis.value, excerpt(b.cause, 250)) for b in blames]
        if rows:
            self._connection.write(_SAVE_BLAME, rows, many=True)

    @_guarded
    def blames(self, nodes: Iterable[str] | None = None) -> list[Blame]:
        """The blames (of some nodes, or all), oldest first."""
        chosen = None if nodes is None else sorted(set(nodes))
        where = "" if chosen is None else f"WHERE node IN ({sql.marks(chosen)})"
        rows = self._connection.query(f"SELECT {sql.quoted(_BLAME_COLUMNS)} FROM node_blames {where} ORDER BY at",
                                      chosen or [])  # fmt: skip
        return [Blame(**{**row, "basis": Basis(row["basis"])}) for row in rows]

    @_guarded
    def blame_counts(self) -> list[tuple[str, str, int]]:
        """(node, basis, blames) for every node and basis, by node."""
        rows = self._connection.query("SELECT node, basis, count(*) AS n FROM node_blames GROUP BY node, basis "
                                      "ORDER BY node, basis")  # fmt: skip
        return [(row["node"], row["basis"], row["n"]) for row in rows]

    @_guarded
    def save_records(self, records: Iterable[NodeRecord]) -> None:
        """Insert or replace nodes' records."""
        rows = [(r.node, r.lemon_since, r.counted_since, int(r.in_service), r.in_service_since, r.trusted_at,
                 r.trusted_by, r.acted_at) for r in records]  # fmt: skip
        if rows:
            self._connection.write(_SAVE_RECORD, rows, many=True)

    @_guarded
    def records(self) -> dict[str, NodeRecord]:
        """Every node the ledger has a record of, by name."""
        rows = self._connection.query(f"SELECT {sql.quoted(_RECORD_COLUMNS)} FROM node_states ORDER BY node")
        return {row["node"]: NodeRecord(**{**row, "in_service": bool(row["in_service"])}) for row in rows}

    @_guarded
    def excluded(self, nodes: Iterable[str], job_id: int, at: float) -> None:
        """AJR put `nodes` in the job's ExcNodeList at `at`."""
        self._connection.write(_SAVE_EXCLUSION, [(node, job_id, at, None) for node in nodes], many=True)

    @_guarded
    def taken_back(self, nodes: Iterable[str], job_id: int, at: float) -> None:
        """AJR took its exclusion of `nodes` out of the job's ExcNodeList at `at`."""
        self._connection.write("UPDATE node_exclusions SET taken_back_at = ? WHERE node = ? AND job_id = ?",
                               [(at, node, job_id) for node in nodes], many=True)  # fmt: skip

    @_guarded
    def exclusions(self, standing_only: bool = False) -> list[Exclusion]:
        """AJR's exclusions (those not taken back only, when asked), by node and job."""
        where = "WHERE taken_back_at IS NULL" if standing_only else ""
        rows = self._connection.query(f"SELECT node, job_id, at, taken_back_at FROM node_exclusions {where} "
                                      "ORDER BY node, job_id")  # fmt: skip
        return [Exclusion(**row) for row in rows]

    @_guarded
    def forgive(self, node: str, by: str, at: float) -> None:
        """Ask the agent to trust a node again (it applies it at its next poll)."""
        self._connection.write("INSERT INTO node_forgiven (node, by, at, applied_at) VALUES (?, ?, ?, NULL)",
                               [node, by, at])  # fmt: skip

    @_guarded
    def forgiveness(self) -> list[Forgiveness]:
        """Operators' requests the agent has not applied yet, oldest first."""
        rows = self._connection.query("SELECT id, node, by, at FROM node_forgiven WHERE applied_at IS NULL ORDER BY id")
        return [Forgiveness(**row) for row in rows]

    @_guarded
    def applied(self, request: Forgiveness, at: float) -> None:
        """The agent applied an operator's request."""
        self._connection.write("UPDATE node_forgiven SET applied_at = ? WHERE id = ?", [at, request.id])

    @_guarded
    def actions(self) -> list[JournalEntry]:
        """AJR's drains and reboots of nodes, done or decided in dry run, oldest first."""
        rows = self._connection.query(
            f"SELECT * FROM actions WHERE kind IN ({sql.marks(_NODE_ACTIONS)}) AND status IN (?, ?) ORDER BY id",
            [*_NODE_ACTIONS, ActionStatus.DONE.value, ActionStatus.DRY_RUN.value],
        )
        return [entry_from_row(row) for row in rows]
