"""AJR's state in SQLite (through sqlite-utils, WAL): jobs, events, the action journal, log offsets.

The agent is the only writer; the CLI reads beside it (WAL lets both run at once).
Decisions are written in one transaction with the actions they journal, so a crash
leaves either both or neither.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Iterator

import sqlite_utils

from .errors import AjrError
from .logs import FilePosition
from .model import Action, ActionKind, Attempt, ManagedJob, Note, Outcome, Phase, UnmanagedJob, Verdict
from .spec import ResumeMode

SCHEMA_VERSION = 1


class StoreError(AjrError):
    """The state database cannot be opened or has an unexpected shape."""


class ActionStatus:
    """Where a journaled action stands."""

    PENDING = "pending"  # decided and journaled, not yet confirmed by Slurm
    RETRY = "retry"  # failed in a way that may pass; tried again at next_try_at
    DONE = "done"
    DRY_RUN = "dry_run"  # decided in dry-run mode: recorded, never run
    FAILED = "failed"  # Slurm refused, or the agent gave up


OPEN_STATUSES = (ActionStatus.PENDING, ActionStatus.RETRY)


@dataclass(frozen=True)
class JournalEntry:
    """One row of the action journal."""

    id: int
    action: Action
    status: str
    tries: int
    created_at: float
    updated_at: float
    next_try_at: float | None
    error: str | None
    dry_run: bool
    origin: str


@dataclass(frozen=True)
class StoredEvent:
    """One line of a job's story as stored."""

    job_id: int
    attempt: int | None
    at: float
    kind: str
    text: str
    path: str | None = None
    line: str | None = None


@dataclass(frozen=True)
class FollowedFile:
    """A log file the agent follows, the attempt it belongs to, and how far it has read."""

    job_id: int
    attempt: int
    position: FilePosition


@dataclass(frozen=True)
class Reading:
    """One throughput report (e.g. TFLOP/s per GPU) of an attempt, at the time its line gives."""

    job_id: int
    attempt: int
    at: float
    value: float


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db["jobs"].create(
        {f.name: _column_type(f.type) for f in fields(ManagedJob)}, pk="job_id", not_null={"name", "user"}
    )
    db["jobs"].create_index(["chain"])
    db["unmanaged"].create(
        {"job_id": int, "name": str, "user": str, "comment": str, "problem": str, "first_seen": float}, pk="job_id"
    )
    db["attempts"].create(
        {f.name: _column_type(f.type) for f in fields(Attempt)}, pk=("job_id", "attempt")
    )
    db["events"].create(
        {"id": int, "job_id": int, "attempt": int, "at": float, "kind": str, "text": str, "path": str, "line": str},
        pk="id",
    )
    db["events"].create_index(["job_id", "at"])
    db["actions"].create(
        {
            "id": int, "job_id": int, "attempt": int, "kind": str, "target": int, "nodes": str, "reason": str,
            "status": str,
            "origin": str, "dry_run": int,
            "tries": int, "created_at": float, "updated_at": float, "next_try_at": float, "error": str,
        },
        pk="id",
    )  # fmt: skip
    db["actions"].create_index(["status"])
    db["actions"].create_index(["job_id"])
    db["files"].create(
        {"path": str, "job_id": int, "attempt": int, "inode": int, "device": int, "offset": int}, pk="path"
    )
    db["files"].create_index(["job_id"])
    db["verdicts"].create(
        {"job_id": int, "attempt": int, "at": float, "fault": str, "nodes": str, "cause": str, "evidence": str},
        pk=("job_id", "attempt"),
    )
    db["throughput"].create({"job_id": int, "attempt": int, "at": float, "value": float})
    db["throughput"].create_index(["job_id", "attempt"])
    db["forgotten"].create({"job_id": int, "by": str, "at": float}, pk="job_id")
    db["meta"].create({"key": str, "value": str}, pk="key")


MIGRATIONS = {1: _migrate_v1}


def _column_type(annotation: object) -> type:
    text = str(annotation)
    if text.startswith("float"):
        return float
    if text.startswith("int") or text.startswith("bool"):
        return int
    return str


class Store:
    """The state database. Open one per process; the agent writes, the CLI reads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(self.path)
            self.db.execute("PRAGMA busy_timeout = 5000")
            self.db.enable_wal()
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the state database: {exc}") from exc

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self.db.close()

    def _migrate(self) -> None:
        version = 0
        if "meta" in self.db.table_names():
            row = self.db.execute("select value from meta where key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this AJR understands ({SCHEMA_VERSION}); "
                "upgrade AJR or point state_db elsewhere"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.db.atomic():
                MIGRATIONS[target](self.db)
                self.db["meta"].upsert({"key": "schema_version", "value": str(target)}, pk="key")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them land, or none."""
        with self.db.atomic():
            yield

    # ---- jobs -------------------------------------------------------------------

    def save_job(self, job: ManagedJob) -> None:
        """Insert or replace a managed job, and the row of its current attempt."""
        with self.db.atomic():
            self.db["jobs"].upsert(_row(job), pk="job_id")
            attempt = job.current_attempt()
            if attempt is not None:
                self.db["attempts"].upsert(_row(attempt), pk=("job_id", "attempt"))

    def attempts(self, job_ids: list[int] | None = None, since: float | None = None) -> list[Attempt]:
        """Attempts (of some jobs, or all; those still running or ended after `since`), in start order."""
        clauses, args = [], []
        if job_ids is not None:
            clauses.append(f"job_id in ({','.join('?' * len(job_ids))})")
            args += job_ids
        if since is not None:
            clauses.append("(ended is null or ended >= ?)")
            args.append(since)
        where = " and ".join(clauses) or None
        return [_attempt_from_row(r) for r in self.db["attempts"].rows_where(where, args, order_by="started, job_id")]

    def chain_jobs(self, chain: str) -> list[ManagedJob]:
        """Every job of a singleton chain, oldest first."""
        return [_job_from_row(r) for r in self.db["jobs"].rows_where("chain = ?", [chain], order_by="job_id")]

    def load_jobs(self, include_gone: bool = False) -> dict[int, ManagedJob]:
        """Managed jobs by id; those that left Slurm only when asked."""
        where = None if include_gone else "phase != ?"
        args = None if include_gone else [Phase.GONE.value]
        return {row["job_id"]: _job_from_row(row) for row in self.db["jobs"].rows_where(where, args, order_by="job_id")}

    def job(self, job_id: int) -> ManagedJob | None:
        """One managed job, or None."""
        rows = list(self.db["jobs"].rows_where("job_id = ?", [job_id]))
        return _job_from_row(rows[0]) if rows else None

    def save_unmanaged(self, job: UnmanagedJob) -> None:
        """Remember a job whose APS spec is broken, and why."""
        self.db["unmanaged"].upsert(asdict(job), pk="job_id")

    def unmanaged(self, job_id: int | None = None) -> list[UnmanagedJob]:
        """Jobs whose spec was refused (one, or all)."""
        where, args = ("job_id = ?", [job_id]) if job_id is not None else (None, None)
        return [UnmanagedJob(**row) for row in self.db["unmanaged"].rows_where(where, args, order_by="job_id")]

    # ---- events -----------------------------------------------------------------

    def add_note(self, job_id: int, attempt: int | None, at: float, note: Note, path: str | None = None,
                 line: str | None = None) -> None:  # fmt: skip
        """Append a line to a job's story."""
        self.db["events"].insert(
            {"job_id": job_id, "attempt": attempt, "at": at, "kind": note.kind, "text": note.text, "path": path,
             "line": line}  # fmt: skip
        )

    def events(self, job_id: int) -> list[StoredEvent]:
        """A job's story in time order."""
        rows = self.db["events"].rows_where("job_id = ?", [job_id], order_by="at, id")
        return [StoredEvent(**{k: row[k] for k in ("job_id", "attempt", "at", "kind", "text", "path", "line")})
                for row in rows]  # fmt: skip

    # ---- the action journal -------------------------------------------------------

    def journal(self, action: Action, dry_run: bool, now: float, origin: str = "agent") -> Action:
        """Record an action before it runs; the returned copy carries its journal id.

        `origin` says who decided it: the agent, or `operator:<user>` for the CLI's commands.
        """
        row_id = self.db["actions"].insert(
            {
                "job_id": action.job_id, "attempt": action.attempt, "kind": action.kind.value,
                "target": action.target, "nodes": action.nodes, "reason": action.reason,
                "status": ActionStatus.PENDING, "origin": origin,
                "dry_run": int(dry_run), "tries": 0, "created_at": now, "updated_at": now, "next_try_at": None,
                "error": None,
            }  # fmt: skip
        ).last_pk
        return replace(action, journal_id=int(row_id))

    def update_action(self, action: Action, status: str, now: float, error: str | None = None,
                      next_try_at: float | None = None, tried: bool = True) -> None:  # fmt: skip
        """Record an action's outcome (or its next try)."""
        if action.journal_id is None:
            raise StoreError(f"action {action} was never journaled")
        self.db.execute(
            "update actions set status = ?, updated_at = ?, error = ?, next_try_at = ?, tries = tries + ? "
            "where id = ?",
            [status, now, error, next_try_at, int(tried), action.journal_id],
        )

    def open_actions(self, origin: str = "agent") -> list[JournalEntry]:
        """The agent's actions journaled but not finished: after a crash, these are reconciled with Slurm."""
        marks = ",".join("?" * len(OPEN_STATUSES))
        rows = self.db["actions"].rows_where(f"status in ({marks}) and origin = ?", [*OPEN_STATUSES, origin],
                                             order_by="id")  # fmt: skip
        return [_entry(row) for row in rows]

    def actions(self, job_id: int) -> list[JournalEntry]:
        """A job's actions in the order they were decided."""
        return [_entry(row) for row in self.db["actions"].rows_where("job_id = ?", [job_id], order_by="id")]

    # ---- followed log files -------------------------------------------------------

    def save_files(self, files: list[FollowedFile]) -> None:
        """Persist read positions so a restart resumes where it stopped."""
        rows = [(f.position.path, f.job_id, f.attempt, f.position.inode, f.position.device, f.position.offset)
                for f in files]  # fmt: skip
        # One plain statement: sqlite-utils' upsert_all ran eleven per call, three quarters of
        # the agent's CPU for each line a live log brings.
        with self.db.atomic():
            self.db.conn.executemany(
                "INSERT INTO files (path, job_id, attempt, inode, device, offset) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET job_id = excluded.job_id, attempt = excluded.attempt, "
                "inode = excluded.inode, device = excluded.device, offset = excluded.offset",
                rows,
            )

    def files(self, job_id: int | None = None) -> list[FollowedFile]:
        """Followed files (of one job, or all)."""
        where, args = ("job_id = ?", [job_id]) if job_id is not None else (None, None)
        return [
            FollowedFile(row["job_id"], row["attempt"],
                         FilePosition(row["path"], row["inode"], row["device"], row["offset"]))  # fmt: skip
            for row in self.db["files"].rows_where(where, args, order_by="path")
        ]

    def forget_files(self, job_id: int) -> None:
        """Drop the read positions of a job that left Slurm."""
        self.db.execute("delete from files where job_id = ?", [job_id])

    # ---- attribution and throughput ---------------------------------------------------

    def save_verdict(self, job_id: int, attempt: int, at: float, verdict: Verdict) -> None:
        """Keep a failed attempt's verdict with its evidence."""
        self.db["verdicts"].upsert(
            {"job_id": job_id, "attempt": attempt, "at": at, "fault": verdict.fault, "nodes": ",".join(verdict.nodes),
             "cause": verdict.cause, "evidence": json.dumps(list(verdict.evidence))},  # fmt: skip
            pk=("job_id", "attempt"),
        )

    def verdicts(self, job_ids: list[int]) -> list[tuple[int, int, float, Verdict]]:
        """(job, attempt, when, verdict) of the given jobs' failed attempts."""
        marks = ",".join("?" * len(job_ids))
        rows = self.db["verdicts"].rows_where(f"job_id in ({marks})", job_ids, order_by="at")
        return [
            (r["job_id"], r["attempt"], r["at"],
             Verdict(r["fault"], tuple(n for n in r["nodes"].split(",") if n), r["cause"], tuple(json.loads(r["evidence"]))))
            for r in rows
        ]  # fmt: skip

    def add_throughput(self, readings: list[Reading]) -> None:
        """Record throughput reports, all in one transaction: a backlog brings thousands."""
        rows = [(r.job_id, r.attempt, r.at, r.value) for r in readings]
        # Plain executemany: sqlite-utils' insert_all spent ten times as long per row on conversions.
        with self.db.atomic():
            self.db.conn.executemany("INSERT INTO throughput (job_id, attempt, at, value) VALUES (?, ?, ?, ?)", rows)

    def throughput(self, job_id: int, attempt: int | None = None) -> list[tuple[int, float, float]]:
        """(attempt, at, value) reports of a job, oldest first."""
        where, args = ("job_id = ?", [job_id]) if attempt is None else ("job_id = ? and attempt = ?", [job_id, attempt])
        return [(r["attempt"], r["at"], r["value"]) for r in self.db["throughput"].rows_where(where, args, order_by="at")]

    def drains_since(self, since: float) -> int:
        """Nodes AJR drained (or would have, in dry run) since a time: the hourly budget's use."""
        row = self.db.execute(
            "select count(*) from actions where kind = 'drain' and status in ('done', 'dry_run') and created_at >= ?",
            [since],
        ).fetchone()
        return int(row[0])

    # ---- operators' requests ------------------------------------------------------

    def forget(self, job_id: int, by: str, now: float) -> None:
        """Ask the agent to stop managing a job (it acts at its next poll)."""
        self.db["forgotten"].upsert({"job_id": job_id, "by": by, "at": now}, pk="job_id")

    def forgotten(self) -> dict[int, str]:
        """Jobs operators told AJR to leave alone, with who did."""
        return {row["job_id"]: row["by"] for row in self.db["forgotten"].rows}

    # ---- agent status -------------------------------------------------------------

    def set_meta(self, **values: object) -> None:
        """Record facts about the running agent (backend, last poll) for `ajr status`."""
        self.db["meta"].upsert_all([{"key": k, "value": json.dumps(v)} for k, v in values.items()], pk="key")

    def meta(self) -> dict[str, object]:
        """Facts the agent recorded about itself."""
        return {row["key"]: json.loads(row["value"]) for row in self.db["meta"].rows if row["key"] != "schema_version"}


def _row(record: ManagedJob | Attempt) -> dict[str, object]:
    """A dataclass as a row: enums by value, booleans as integers."""
    row: dict[str, object] = {}
    for key, value in asdict(record).items():
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        row[key] = value
    return row


def _job_from_row(row: dict) -> ManagedJob:
    values = dict(row)
    values["mode"] = ResumeMode(values["mode"])
    values["phase"] = Phase(values["phase"])
    values["attempt_outcome"] = Outcome(values["attempt_outcome"])
    values["attempt_succeeded"] = bool(values["attempt_succeeded"])
    values["straggler_reported"] = bool(values["straggler_reported"])
    return ManagedJob(**values)


def _attempt_from_row(row: dict) -> Attempt:
    return Attempt(**{**row, "outcome": Outcome(row["outcome"])})


def _entry(row: dict) -> JournalEntry:
    action = Action(ActionKind(row["kind"]), row["job_id"], row["attempt"], row["reason"], target=row["target"],
                    nodes=row["nodes"] or "", journal_id=row["id"])  # fmt: skip
    return JournalEntry(
        id=row["id"], action=action, status=row["status"], tries=row["tries"], created_at=row["created_at"],
        updated_at=row["updated_at"], next_try_at=row["next_try_at"], error=row["error"], dry_run=bool(row["dry_run"]),
        origin=row["origin"],
    )  # fmt: skip
