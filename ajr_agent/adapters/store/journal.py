"""The action journal: every Slurm operation AJR decides, written before it runs and updated
with its outcome, so that after a crash the open ones are reconciled with Slurm."""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection
from ajr_agent.adapters.store.records import OPEN_STATUSES, ActionStatus, JournalEntry
from ajr_agent.adapters.store.rows import entry_from_row
from ajr_agent.domain.model import Action, ActionKind


def record(connection: Connection, action: Action, dry_run: bool, now: float, origin: str) -> Action:
    """Journal an action as pending; the returned copy carries its journal id."""
    cursor = connection.write(
        "INSERT INTO actions (job_id, attempt, kind, target, nodes, reason, status, origin, dry_run, tries, "
        "created_at, updated_at, next_try_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, NULL)",
        [action.job_id, action.attempt, action.kind.value, action.target, action.nodes, action.reason,
         ActionStatus.PENDING.value, origin, int(dry_run), now, now],
    )  # fmt: skip
    return replace(action, journal_id=int(cursor.lastrowid))  # type: ignore[arg-type]


def update(connection: Connection, journal_id: int, status: ActionStatus, now: float, error: str | None,
           next_try_at: float | None, tried: bool) -> None:  # fmt: skip
    """Record a journaled action's outcome (or its next try); `tried` counts one more try."""
    connection.write("UPDATE actions SET status = ?, updated_at = ?, error = ?, next_try_at = ?, tries = tries + ? "
                     "WHERE id = ?",
                     [ActionStatus(status).value, now, error, next_try_at, int(tried), journal_id])  # fmt: skip


def open_entries(connection: Connection, origin: str) -> list[JournalEntry]:
    """The entries of `origin` journaled but not finished, in the order they were decided."""
    rows = connection.query(f"SELECT * FROM actions WHERE status IN ({sql.marks(OPEN_STATUSES)}) AND origin = ? "
                            "ORDER BY id", [*OPEN_STATUSES, origin])  # fmt: skip
    return [entry_from_row(row) for row in rows]


def entries(connection: Connection, job_id: int) -> list[JournalEntry]:
    """A job's entries in the order they were decided."""
    rows = connection.query("SELECT * FROM actions WHERE job_id = ? ORDER BY id", [job_id])
    return [entry_from_row(row) for row in rows]


def drains_since(connection: Connection, since: float) -> int:
    """Drains done (or decided in dry run) since a time."""
    return connection.db.table("actions").count_where(
        "kind = ? AND status IN (?, ?) AND created_at >= ?",
        [ActionKind.DRAIN.value, ActionStatus.DONE.value, ActionStatus.DRY_RUN.value, since],
    )
