"""Records to rows and back: the columns a record is stored in, and the values that go there."""

from __future__ import annotations

import json
from dataclasses import fields
from enum import Enum
from typing import Any

from ajr_agent.adapters.logs import FilePosition
from ajr_agent.adapters.store.limits import excerpt
from ajr_agent.adapters.store.records import ActionStatus, FollowedFile, JournalEntry
from ajr_agent.domain.model import (
    Action,
    ActionKind,
    Attempt,
    Awaiting,
    Basis,
    Budget,
    ManagedJob,
    Outcome,
    Phase,
    StopCause,
    UnmanagedJob,
    Verdict,
)
from ajr_agent.domain.spec import ResumeMode

JOB_COLUMNS = tuple(f.name for f in fields(ManagedJob))
ATTEMPT_COLUMNS = tuple(f.name for f in fields(Attempt))
UNMANAGED_COLUMNS = tuple(f.name for f in fields(UnmanagedJob))
VERDICT_COLUMNS = ("job_id", "attempt", "at", "fault", "nodes", "cause", "evidence", "basis")
FILE_COLUMNS = ("path", "job_id", "attempt", "inode", "device", "offset")


def values(record: ManagedJob | Attempt | UnmanagedJob) -> list[object]:
    """A record's values in column order: enums by value, booleans as integers."""
    row: list[object] = []
    for value in (getattr(record, f.name) for f in fields(record)):
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        row.append(value)
    return row


def job_from_row(row: dict[str, Any]) -> ManagedJob:
    """The ManagedJob a row of `jobs` (JOB_COLUMNS) holds."""
    row["mode"] = ResumeMode(row["mode"])
    row["phase"] = Phase(row["phase"])
    row["attempt_outcome"] = Outcome(row["attempt_outcome"])
    row["attempt_succeeded"] = bool(row["attempt_succeeded"])
    row["straggler_reported"] = bool(row["straggler_reported"])
    row["stop_cause"] = StopCause(row["stop_cause"]) if row["stop_cause"] else None
    row["awaiting"] = Awaiting(row["awaiting"]) if row["awaiting"] else None
    row["charged"] = Budget(row["charged"]) if row["charged"] else None
    return ManagedJob(**row)


def attempt_from_row(row: dict[str, Any]) -> Attempt:
    """The Attempt a row of `attempts` (ATTEMPT_COLUMNS) holds."""
    return Attempt(**{**row, "outcome": Outcome(row["outcome"])})


def entry_from_row(row: dict[str, Any]) -> JournalEntry:
    """The JournalEntry a row of `actions` holds; its action carries the row's id as journal id."""
    action = Action(ActionKind(row["kind"]), row["job_id"], row["attempt"], row["reason"], target=row["target"],
                    nodes=row["nodes"] or "", journal_id=row["id"])  # fmt: skip
    return JournalEntry(
        id=row["id"], action=action, status=ActionStatus(row["status"]), tries=row["tries"],
        created_at=row["created_at"], updated_at=row["updated_at"], next_try_at=row["next_try_at"],
        error=row["error"], dry_run=bool(row["dry_run"]), origin=row["origin"],
    )  # fmt: skip


def verdict_values(job_id: int, attempt: int, at: float, verdict: Verdict) -> tuple[object, ...]:
    """A verdict's row in VERDICT_COLUMNS: its cause and each line of evidence an excerpt."""
    evidence = json.dumps([excerpt(line) for line in verdict.evidence])
    return (job_id, attempt, at, verdict.fault, ",".join(verdict.nodes), excerpt(verdict.cause), evidence,
            verdict.basis.value)  # fmt: skip


def verdict_from_row(row: dict[str, Any]) -> Verdict:
    """The Verdict a row of `verdicts` holds."""
    nodes = tuple(n for n in row["nodes"].split(",") if n)
    return Verdict(row["fault"], nodes, row["cause"], tuple(json.loads(row["evidence"])), Basis(row["basis"]))


def file_values(followed: FollowedFile) -> tuple[object, ...]:
    """A followed file's row in FILE_COLUMNS."""
    position = followed.position
    return position.path, followed.job_id, followed.attempt, position.inode, position.device, position.offset


def file_from_row(row: dict[str, Any]) -> FollowedFile:
    """The FollowedFile a row of `files` holds."""
    position = FilePosition(row["path"], row["inode"], row["device"], row["offset"])
    return FollowedFile(row["job_id"], row["attempt"], position)
