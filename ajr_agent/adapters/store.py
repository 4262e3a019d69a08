"""AJR's state in SQLite (WAL): jobs, events, the action journal, log offsets.

The agent is the only writer of the jobs' story; the CLI and the cockpit read beside it
(WAL lets both run at once) and journal operators' requests. Decisions are written in
one transaction with the actions they journal, so a crash leaves either both or neither.

The schema is a numbered list of migrations (MIGRATIONS), each written out as SQL and
never derived from the dataclasses: a field added to ManagedJob needs a migration, and
tests/unit/test_store_upgrade.py fails until it has one. A database of an older schema
is copied beside itself (`ajr.db.bak-v1-<time>`) and migrated in place when it is opened
for writing; one of a newer schema is refused.

What a job may store is bounded (see Limits): log lines and evidence are kept as
excerpts of at most EXCERPT_BYTES, a job's notes and an attempt's throughput readings
are capped, and prune() removes the jobs that left Slurm longer ago than the site keeps
them.

sqlite3's errors come out as StoreError subclasses that say what is wrong and what to
do: StoreFullError, StoreLockedError, StoreCorruptError, StoreSchemaError. The agent's
store (open_for_agent) also checks the file at start, moves a corrupt one aside, and
keeps a reserve file beside the database that it gives back when the disk fills.

sqlite-utils wraps the store's own sqlite3 connection: its autocommit mode, busy timeout,
row factory and read-only opening, and the transactions, stay the store's, and the
wrapper sets no PRAGMA and runs no plugin on it. It reads the schema when a file is
opened (table_names, columns: which version the file is at) and runs the read methods'
SELECTs (query, count_where), rows as dicts; a missing table is an error there, where
rows_where would read it as empty. sqlite-utils 4's query wraps each SELECT in a
savepoint, which inside the store's transactions only nests; it writes nothing, so a
read-only store stays read-only. The writes stay on sqlite3, each statement through
Store._run: that is where a full disk gives the reserve back and the statement runs
again, which sqlite-utils' write methods, in savepoints of their own, would bypass. And
the writes of each log read (save_files, add_throughput, add_note) must stay plain
execute and executemany: sqlite-utils' upsert_all ran eleven statements a call, three
quarters of the agent's CPU per live log line, and insert_all took ten times as long a
row as executemany. The migrations stay SQL written out.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import logging
import os
import sqlite3
import time
import urllib.parse
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from sqlite_utils import Database

from ajr_agent.domain.errors import AjrError
from ajr_agent.adapters.logs import FilePosition
from ajr_agent.domain.model import (
    Action,
    ActionKind,
    Attempt,
    Awaiting,
    ManagedJob,
    Note,
    Outcome,
    Phase,
    StopCause,
    UnmanagedJob,
    Verdict,
)
from ajr_agent.domain.spec import ResumeMode

log = logging.getLogger("ajr.store")

SCHEMA_VERSION = 4

# How long a write waits for another process's write lock. The agent's: the CLI's and the
# cockpit's own writes (an operator's request) take milliseconds, so this is a wide margin for
# them; only a stray lock holder (an sqlite3 shell with an open transaction, a second agent)
# waits it out, and then a write of the agent's single loop costs at most this much instead of
# 5 s: detection stays within its 1 s target even when one write per pass waits in full.
AGENT_BUSY_TIMEOUT_MS = 200
# Everyone else's (the CLI, the cockpit's threads): a person waits, and the agent's largest
# writes (a backlog's readings in one transaction) may hold the lock for a second.
DEFAULT_BUSY_TIMEOUT_MS = 5000

# A log line or a piece of evidence is stored as an excerpt of at most this many bytes of
# UTF-8: enough for any real error line, while a 64 KiB line of a runaway log is cut.
EXCERPT_BYTES = 1024

# The agent sets this much disk aside beside its database and gives it back when the disk
# fills: room for about 18,000 journal entries, each with its decision note (281 per 256 KiB,
# measured on a full tmpfs, the WAL checkpointed after each write while the reserve is spent).
DEFAULT_RESERVE_BYTES = 16 * 1024 * 1024
# While the reserve is spent, a write looks whether there is room for it again this often.
SPACE_CHECK_SECONDS = 30.0

# Notes that come again and again while a job runs (a note per checkpoint, per log notice,
# per anomaly line after the failure was handled): capped per job, the oldest dropped first.
# Every other kind records a decision or its outcome and is bounded by the requeue limit.
BULK_NOTE_KINDS = frozenset({"checkpoint", "log", "ignored", "duplicate"})

# Jobs in these phases are done with as far as AJR is concerned: prune() may remove them.
FINISHED_PHASES = (Phase.GONE, Phase.FORGOTTEN)
PRUNE_BATCH_JOBS = 5  # about 50,000 rows of jobs at their caps: 0.04-0.05 s of the loop, measured

_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26


class StoreError(AjrError):
    """The state database cannot be opened, read or written."""


class StoreSchemaError(StoreError):
    """The database's tables are not a schema this AJR knows (a newer AJR's, or an unknown shape)."""


class StoreFullError(StoreError):
    """The file system of the state database is full."""


class StoreLockedError(StoreError):
    """Another process held the database's write lock for longer than the busy timeout."""


class StoreCorruptError(StoreError):
    """The state database file is damaged or is not an SQLite database; `detail` is SQLite's word on it."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"state database {path} is corrupt ({detail}): the agent moves it aside at its next start "
                         "and begins a new one (systemctl restart ajr-agent); `ajr doctor` then names the moved "
                         "file")  # fmt: skip
        self.detail = detail


class ActionStatus(StrEnum):
    """Where a journaled action stands (stored by value)."""

    PENDING = "pending"  # decided and journaled, not yet confirmed by Slurm
    RETRY = "retry"  # failed in a way that may pass; tried again at next_try_at
    DONE = "done"
    DRY_RUN = "dry_run"  # decided in dry-run mode: recorded, never run
    FAILED = "failed"  # Slurm refused, or the agent gave up


OPEN_STATUSES = (ActionStatus.PENDING, ActionStatus.RETRY)


@dataclass(frozen=True)
class Limits:
    """How much of a job's story the store keeps."""

    max_bulk_notes_per_job: int = 200  # notes of BULK_NOTE_KINDS
    max_notes_per_job: int = 1000  # all notes; bulk ones give way first
    max_readings_per_attempt: int = 10_000  # throughput readings, thinned evenly past it


@dataclass(frozen=True)
class JournalEntry:
    """One row of the action journal."""

    id: int
    action: Action
    status: ActionStatus
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


@dataclass(frozen=True)
class Pruned:
    """What one prune() removed, by table; `more`: finished jobs past the retention are left for the next call."""

    jobs: int = 0
    attempts: int = 0
    events: int = 0
    dropped_notes: int = 0
    throughput: int = 0
    verdicts: int = 0
    files: int = 0
    actions: int = 0
    unmanaged: int = 0
    more: bool = False

    @property
    def total(self) -> int:
        """Rows removed in all."""
        return sum(v for k, v in asdict(self).items() if k != "more")


# ---- the schema, one migration per version ------------------------------------------------------

# Version 1: the tables as AJR made them up to dbc6637.
_V1 = (
    """CREATE TABLE jobs (
        job_id INTEGER PRIMARY KEY, name TEXT NOT NULL, user TEXT NOT NULL, user_id INTEGER, mode TEXT,
        requested_limit INTEGER, "limit" INTEGER, phase TEXT, requeues_used INTEGER, attempt INTEGER,
        handled_attempt INTEGER, failure_streak INTEGER, stop_reason TEXT, chain TEXT, successor INTEGER,
        slurm_state TEXT, nodes TEXT, work_dir TEXT, stdout_dir TEXT, first_seen REAL, last_seen REAL,
        attempt_started REAL, attempt_ended REAL, attempt_outcome TEXT, attempt_end_reason TEXT,
        attempt_first_checkpoint REAL, attempt_last_checkpoint REAL, attempt_succeeded INTEGER,
        last_checkpoint REAL, last_anomaly TEXT, last_action TEXT)""",
    "CREATE INDEX idx_jobs_chain ON jobs (chain)",
    """CREATE TABLE unmanaged (
        job_id INTEGER PRIMARY KEY, name TEXT, user TEXT, comment TEXT, problem TEXT, first_seen REAL)""",
    """CREATE TABLE attempts (
        job_id INTEGER, attempt INTEGER, started REAL, ended REAL, outcome TEXT, end_reason TEXT,
        first_checkpoint REAL, last_checkpoint REAL, nodes TEXT, PRIMARY KEY (job_id, attempt))""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY, job_id INTEGER, attempt INTEGER, at REAL, kind TEXT, text TEXT, path TEXT,
        line TEXT)""",
    "CREATE INDEX idx_events_job_id_at ON events (job_id, at)",
    """CREATE TABLE actions (
        id INTEGER PRIMARY KEY, job_id INTEGER, attempt INTEGER, kind TEXT, target INTEGER, reason TEXT,
        status TEXT, origin TEXT, dry_run INTEGER, tries INTEGER, created_at REAL, updated_at REAL,
        next_try_at REAL, error TEXT)""",
    "CREATE INDEX idx_actions_status ON actions (status)",
    "CREATE INDEX idx_actions_job_id ON actions (job_id)",
    """CREATE TABLE files (
        path TEXT PRIMARY KEY, job_id INTEGER, attempt INTEGER, inode INTEGER, device INTEGER, offset INTEGER)""",
    "CREATE INDEX idx_files_job_id ON files (job_id)",
    "CREATE TABLE forgotten (job_id INTEGER PRIMARY KEY, by TEXT, at REAL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
)

# Version 2: attribution and throughput, as f2f5759 wrote them (while still saying version 1).
# The defaults are the records' own, for the rows already there.
_V2 = (
    "ALTER TABLE jobs ADD COLUMN heartbeat_timeout INTEGER",
    "ALTER TABLE jobs ADD COLUMN partition TEXT DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN verdict TEXT DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN verdict_nodes TEXT DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN excluded_nodes TEXT DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN straggler_reported INTEGER DEFAULT 0",
    "ALTER TABLE actions ADD COLUMN nodes TEXT DEFAULT ''",
    """CREATE TABLE verdicts (
        job_id INTEGER, attempt INTEGER, at REAL, fault TEXT, nodes TEXT, cause TEXT, evidence TEXT,
        PRIMARY KEY (job_id, attempt))""",
    "CREATE TABLE throughput (job_id INTEGER, attempt INTEGER, at REAL, value REAL)",
    "CREATE INDEX idx_throughput_job_id_attempt ON throughput (job_id, attempt)",
)

# Version 3: bounded storage. The notes a job's caps dropped are counted, by kind.
_V3 = (
    """CREATE TABLE dropped_notes (
        job_id INTEGER, kind TEXT, count INTEGER NOT NULL, last_at REAL, PRIMARY KEY (job_id, kind))""",
)

# Version 4: why a job stopped and what it waits for, as values code reads (issue 11). The rows
# already there get them from the words the policy wrote, and from its "awaiting the verdict".
_V4 = (
    "ALTER TABLE jobs ADD COLUMN stop_cause TEXT",
    "ALTER TABLE jobs ADD COLUMN awaiting TEXT",
    "UPDATE jobs SET stop_cause = 'crash_loop' WHERE phase = 'stopped' AND stop_reason LIKE '%crash-looping%'",
    "UPDATE jobs SET stop_cause = 'limit' WHERE phase = 'stopped' AND stop_cause IS NULL "
    "AND stop_reason LIKE '%requeue limit reached%'",
    "UPDATE jobs SET stop_cause = 'slurm_refused' WHERE phase = 'stopped' AND stop_reason LIKE 'Slurm refused%'",
    "UPDATE jobs SET stop_cause = 'release_failed' WHERE phase = 'stopped' AND stop_reason LIKE 'release failed%'",
    "UPDATE jobs SET stop_cause = 'cancel_failed' WHERE phase = 'stopped' AND stop_reason LIKE 'could not stop%'",
    "UPDATE jobs SET stop_cause = 'successor_release_failed' WHERE phase = 'stopped' "
    "AND stop_reason LIKE 'release of job%'",
    "UPDATE jobs SET stop_cause = 'chain_ended' WHERE stop_reason LIKE '%chain ended%'",
    "UPDATE jobs SET stop_cause = 'forgotten' WHERE phase = 'forgotten'",
    "UPDATE jobs SET awaiting = 'verdict' WHERE phase = 'handing_over' AND last_action = 'awaiting the verdict'",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}

JOB_COLUMNS = tuple(f.name for f in fields(ManagedJob))
ATTEMPT_COLUMNS = tuple(f.name for f in fields(Attempt))


def _wrapped(conn: sqlite3.Connection) -> Database:
    """sqlite-utils over `conn`, issuing nothing of its own: no recursive_triggers PRAGMA (it would
    be the only setting the store did not choose) and no plugins' prepare_connection hooks."""
    return Database(conn, recursive_triggers=False, execute_plugins=False)


@functools.cache
def _reference_columns(version: int) -> dict[str, frozenset[str]]:
    """The tables and columns migrations 1..version make."""
    db = _wrapped(sqlite3.connect(":memory:"))
    for step in range(1, version + 1):
        for statement in MIGRATIONS[step]:
            db.execute(statement)
    return _columns(db)


def _columns(db: Database) -> dict[str, frozenset[str]]:
    # SQLite's own tables (sqlite_stat1 after an ANALYZE, say) are no part of AJR's schema.
    return {t: frozenset(c.name for c in db.table(t).columns) for t in db.table_names() if not t.startswith("sqlite_")}


def _differences(found: dict[str, frozenset[str]], expected: dict[str, frozenset[str]]) -> str:
    missing = [t for t in expected if t not in found]
    missing += [f"{t}.{c}" for t in expected if t in found for c in sorted(expected[t] - found[t])]
    unknown = [t for t in found if t not in expected]
    unknown += [f"{t}.{c}" for t in found if t in expected for c in sorted(found[t] - expected[t])]
    return f"missing: {', '.join(missing) or 'nothing'}; unknown: {', '.join(unknown) or 'nothing'}"


# ---- helpers ---------------------------------------------------------------------------------------


def excerpt(text: str, limit: int = EXCERPT_BYTES) -> str:
    """`text` whole if its UTF-8 takes at most `limit` bytes; else its start, cut on a character
    boundary, and a marker saying how many bytes were cut, `limit` bytes in all."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    room = limit - len(f" [cut: {len(data)} more bytes]")
    kept = data[:room].decode("utf-8", "ignore")  # a character cut in two is left out whole
    return f"{kept} [cut: {len(data) - len(kept.encode('utf-8'))} more bytes]"


def _stamp(at: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


class _RolledBack(Exception):
    """A write the full disk rolled back just after the reserve was given back: worth one more try."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _translated(method):  # type: ignore[no-untyped-def]
    """Turn sqlite3's and the OS's errors in a Store method into StoreErrors that say what to do.

    A write the full disk rolled back right after the reserve was given back is run once
    more, in the room the reserve left, when nothing else is under way: not inside the
    caller's transaction(), whose body only the caller can run again.
    """

    @functools.wraps(method)
    def wrapper(self: "Store", *args, **kwargs):  # type: ignore[no-untyped-def]
        in_transaction = bool(self._depth)
        self._calls += 1
        try:
            try:
                return method(self, *args, **kwargs)
            except _RolledBack:
                if self._calls > 1 or in_transaction:
                    raise
                return method(self, *args, **kwargs)
        except _RolledBack as lost:
            if self._calls > 1:
                raise  # the outermost Store method decides
            raise self._rolled_back(lost) from lost.error
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from exc
        finally:
            self._calls -= 1

    return wrapper


_BULK_MARKS = _marks(tuple(BULK_NOTE_KINDS))


@dataclass
class _NoteCount:
    """A job's stored notes, all and bulk: counted once from the table, then kept up to date."""

    total: int
    bulk: int


@dataclass
class _Series:
    """Where an attempt's stored throughput stands: rows in the table, one reading in `stride` kept."""

    stored: int
    stride: int = 1
    seen: int = 0


class Store:
    """The state database. Open one per process; the agent writes, the CLI reads."""

    def __init__(self, path: Path | str, *, readonly: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
                 limits: Limits = Limits(), reserve_bytes: int = 0, integrity_check: bool = False,
                 now: Callable[[], float] = time.time) -> None:  # fmt: skip
        """Open (or create) the database at `path` and bring it to SCHEMA_VERSION, with a backup first.

        `readonly` opens it as it is, creating and migrating nothing (`ajr doctor`):
        pending_migration then says what a writer would do. `reserve_bytes` > 0 keeps a
        reserve file of that size beside the database, given back when the disk fills.
        `integrity_check` runs PRAGMA quick_check before anything else.
        """
        self.path = Path(path)
        self.readonly = readonly
        self.busy_timeout_ms = busy_timeout_ms
        self.limits = limits
        self.reserve_bytes = reserve_bytes
        self.reserve = self.path.with_name(self.path.name + ".reserve")
        self._now = now
        self._depth = 0  # nesting of write transactions
        self._calls = 0  # nesting of Store methods
        # Counts behind the caps, kept in memory: the agent is the one writer of notes and readings.
        self._notes: dict[int, _NoteCount] = {}
        self._series: dict[tuple[int, int], _Series] = {}
        self._space_checked = 0.0
        self._left_out = {"readings": 0, "notes": 0}  # not stored while the reserve was spent
        self.low_space = False
        self.backup: Path | None = None  # the copy made before migrating, at this open
        self.quarantined: Path | None = None  # where open_for_agent moved a corrupt file
        self.pending_migration: tuple[int, int] | None = None
        self.schema_version = SCHEMA_VERSION
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the state database: {exc}") from exc
        try:
            self._open(integrity_check)
        except BaseException:
            self.conn.close()
            raise

    @_translated
    def _open(self, integrity_check: bool) -> None:
        self.conn.row_factory = sqlite3.Row
        self._db = _wrapped(self.conn)
        if integrity_check:
            self.integrity()
        found = self._found_version()
        if self.readonly:
            self.schema_version = found or SCHEMA_VERSION
            self.pending_migration = (found, SCHEMA_VERSION) if 0 < found < SCHEMA_VERSION else None
            return
        # Only a database known to be AJR's is switched to WAL: that rewrites its header.
        self.conn.execute("PRAGMA journal_mode = WAL")
        self._migrate(found)
        if self.reserve_bytes:
            self._set_reserve_aside(at_start=True)

    @classmethod
    def open_for_agent(cls, path: Path | str, *, busy_timeout_ms: int = AGENT_BUSY_TIMEOUT_MS,
                       limits: Limits = Limits(), reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                       now: Callable[[], float] = time.time) -> "Store":  # fmt: skip
        """The agent's store: checked at start, a corrupt file moved aside, migrated, with a reserve.

        A corrupt database is renamed to `<name>.corrupt-<time>` (its -wal with it) and a
        new one is started, with a critical log line: the agent goes on recovering jobs
        rather than crash-looping under systemd, and `ajr doctor` reports the moved file
        until an admin deletes it.
        """
        path = Path(path)
        options = dict(busy_timeout_ms=busy_timeout_ms, limits=limits, reserve_bytes=reserve_bytes, now=now)
        try:
            return cls._opened_in_a_full_disk(path, options)
        except StoreCorruptError as exc:
            moved = _quarantine(path, now())
            log.critical("state database %s is corrupt (%s): moved aside to %s and a new, empty one started. What "
                         "AJR knew of the jobs (requeues used, the action journal, their stories) is only in the moved "
                         "file: salvage rows with `sqlite3 %s .recover`. Jobs still in Slurm are managed again from "
                         "the next poll; `ajr doctor` reports the moved file until it is deleted", path, exc.detail,
                         moved, moved)  # fmt: skip
        store = cls._opened_in_a_full_disk(path, options)
        store.quarantined = moved
        return store

    @classmethod
    def _opened_in_a_full_disk(cls, path: Path, options: dict[str, object]) -> "Store":
        """Open; if the disk is too full for SQLite to open the database, give the reserve back first."""
        try:
            return cls(path, integrity_check=True, **options)  # type: ignore[arg-type]
        except StoreFullError:
            if not _give_back(path.with_name(path.name + ".reserve"), path, "at start"):
                raise
        return cls(path, integrity_check=True, **options)  # type: ignore[arg-type]

    @_translated
    def integrity(self) -> None:
        """Raise StoreCorruptError unless PRAGMA quick_check finds the file sound."""
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreCorruptError(self.path, "; ".join(problems))

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self.conn.close()

    # ---- opening and migrating ------------------------------------------------------------------

    def _found_version(self) -> int:
        """The schema of the tables as they are: 0 for an empty file."""
        found = _columns(self._db)
        if not found:
            return 0
        if "meta" not in found:
            raise StoreSchemaError(f"{self.path}: has tables ({', '.join(sorted(found))}) but no meta table: it is "
                                   "not an AJR state database; point state_db at another file")  # fmt: skip
        # The meta table is there (rows_where would read a missing one as empty).
        rows = list(self._db.table("meta").rows_where("key = ?", ["schema_version"], select="value"))
        if not rows:
            raise StoreSchemaError(f"{self.path}: has AJR's tables but says no schema_version: it was not made by "
                                   "AJR, or was changed by hand; point state_db at another file")  # fmt: skip
        version = int(rows[0]["value"])
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"{self.path}: schema version {version} is newer than this AJR understands ({SCHEMA_VERSION}); "
                "upgrade AJR or point state_db elsewhere"
            )
        if version != 1:
            return version
        # f2f5759 changed the tables and kept saying 1: tell the two apart by their columns.
        for candidate in (1, 2):
            if found == _reference_columns(candidate):
                return candidate
        raise StoreSchemaError(
            f"{self.path}: says schema_version 1 but its tables are neither those of schema 1 (AJR up to dbc6637) "
            f"nor of schema 2 (from f2f5759 on); against schema 2, {_differences(found, _reference_columns(2))}. "
            "This AJR cannot migrate it: move it aside (the agent then starts a new one) or point state_db elsewhere"
        )

    def _migrate(self, found: int) -> None:
        if found == SCHEMA_VERSION:
            return
        if found:
            self.backup = self.path.with_name(f"{self.path.name}.bak-v{found}-{_stamp(self._now())}")
            log.info("state database %s is at schema %d: copying it to %s, then migrating it to %d", self.path,
                     found, self.backup, SCHEMA_VERSION)  # fmt: skip
            self._copy_to(self.backup)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            with self._writing():
                for statement in MIGRATIONS[version]:
                    self._run(statement)
                self._run("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", [str(version)])  # fmt: skip
        if found:
            log.warning("state database %s migrated from schema %d to %d; the database as it was is copied to %s",
                        self.path, found, SCHEMA_VERSION, self.backup)  # fmt: skip

    def _copy_to(self, target: Path) -> None:
        """A consistent copy through SQLite's online backup API (the WAL's content included), as one
        self-contained file: opening it later makes no -wal beside it."""
        copy = sqlite3.connect(target)
        try:
            self.conn.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")
        except BaseException:
            copy.close()
            target.unlink(missing_ok=True)
            raise
        copy.close()

    # ---- errors ---------------------------------------------------------------------------------------

    def _error(self, exc: BaseException) -> StoreError:
        """The StoreError that says, in plain words, what `exc` means and what to do."""
        code = _code(exc)
        if self._is_full(exc):
            return StoreFullError(self._full_message(str(exc)))
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StoreLockedError(
                f"state database {self.path} locked by another process for more than {self.busy_timeout_ms} ms: "
                "something else holds a write lock on it (an sqlite3 shell with an open transaction, a backup "
                f"tool, a second ajr-agent); `fuser -v {self.path}` names it. Nothing was written: try again once "
                "it has let go (the agent does, at its next pass)"
            )
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return StoreCorruptError(self.path, str(exc))
        if code == _SQLITE_READONLY:
            return StoreError(f"state database {self.path} cannot be written by this process ({exc}): check the "
                              "permissions of the file and its directory, and the service's "
                              "ReadWritePaths")  # fmt: skip
        return StoreError(f"state database {self.path}: {exc}")

    def _is_full(self, exc: BaseException) -> bool:
        """The disk is full: SQLITE_FULL, ENOSPC, or an I/O error (making the -shm, say) with no space left."""
        if _code(exc) == _SQLITE_FULL or (isinstance(exc, OSError) and exc.errno == 28):  # ENOSPC
            return True
        try:
            return _code(exc) == _SQLITE_IOERR and _free_bytes(self.path.parent) == 0
        except OSError:
            return False

    def _rolled_back(self, lost: _RolledBack) -> StoreFullError:
        return StoreFullError(self._full_message(f"{lost.error}; this write was rolled back, and the reserve given "
                                                 "back so that the next one has room"))  # fmt: skip

    def _full_message(self, detail: str) -> str:
        try:
            free = f"{_size(_free_bytes(self.path.parent))} left"
        except OSError:
            free = "free space unknown"
        return (f"disk full at {self.path}: {free} on its file system ({detail}); free space on that file system "
                f"(`df -h {self.path.parent}`): until then nothing new is recorded")  # fmt: skip

    # ---- writing, and the reserve --------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, taken with the write lock at once; nested ones join the outer."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._mind_the_space()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        self._depth = 1
        try:
            yield
            self._commit()
            if self.low_space:
                self._checkpoint()
        except BaseException:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            # What was counted in memory may not have landed: counted again from the table.
            self._notes.clear()
            self._series.clear()
            raise
        finally:
            self._depth = 0

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it: on a full disk, the space a growing WAL
        holds (up to 4 MiB by SQLite's default) is what lets the journal go on for long."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _mind_the_space(self) -> None:
        """Before a write: give the reserve back when the disk is nearly full, set it aside again when
        space is back."""
        if not self.reserve_bytes:
            return
        if self.low_space:
            if time.monotonic() - self._space_checked >= SPACE_CHECK_SECONDS:
                self.check_space()
            return
        # Before the write rather than after it fails: SQLite rolls a transaction back when its
        # COMMIT finds the disk full, and the caller's transaction() cannot be run again from here.
        # A statvfs costs a microsecond (SQLite's WAL needs a local file system anyway).
        with contextlib.suppress(OSError):
            if _free_bytes(self.path.parent) < self.reserve_bytes // 4:
                self._give_back_reserve("nearly full")

    def _commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if not self._is_full(exc):
                raise self._error(exc) from exc
            freed = self._give_back_reserve("full")
            if not freed:
                raise self._error(exc) from exc
            if not self.conn.in_transaction:
                raise _RolledBack(exc) from exc
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as again:
                raise self._error(again) from again

    def _run(self, sql: str, args: Sequence[object] = (), many: bool = False) -> sqlite3.Cursor:
        """Run one statement; on a full disk, give the reserve back and run it again.

        Every write comes through here, on sqlite3 rather than sqlite-utils' insert/upsert:
        those would run their statements out of reach of this retry, in savepoints of their own.
        """
        call = self.conn.executemany if many else self.conn.execute
        try:
            return call(sql, args)  # type: ignore[operator]
        except sqlite3.Error as exc:
            if not (self._is_full(exc) and self._give_back_reserve("full")):
                raise
            if self._depth and not self.conn.in_transaction:
                raise _RolledBack(exc) from exc
            return call(sql, args)  # type: ignore[operator]

    def _give_back_reserve(self, how: str) -> bool:
        """Delete the reserve file, if there is one, so that SQLite can write; False if there was none."""
        if not _give_back(self.reserve, self.path, how):
            return False
        self.low_space = True
        self._space_checked = time.monotonic()
        return True

    def _set_reserve_aside(self, at_start: bool = False) -> bool:
        """Make the reserve file when there is room for it twice over; whether it is in place."""
        if self.reserve.exists() and self.reserve.stat().st_size == self.reserve_bytes:
            self.low_space = False
            return True
        free = _free_bytes(self.path.parent) + (self.reserve.stat().st_size if self.reserve.exists() else 0)
        # Twice over, or the reserve would leave too little room and be given back at once.
        failure: OSError | None = None
        if free >= 2 * self.reserve_bytes:
            failure = self._write_reserve()
            if failure is None:
                self.low_space = False
                return True
        self.low_space = True
        if at_start:
            log.error("cannot set aside the %s reserve %s: %s free on the file system of %s%s; free space there. "
                      "Until then throughput readings and log notes are not stored", _size(self.reserve_bytes),
                      self.reserve, _size(free), self.path.parent, f" ({failure})" if failure else "")  # fmt: skip
        return False

    def _write_reserve(self) -> OSError | None:
        partial = self.reserve.with_name(self.reserve.name + ".new")
        # Random bytes: a compressing or deduplicating file system cannot store them in less.
        chunk = os.urandom(min(self.reserve_bytes, 1024 * 1024))
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                written = 0
                while written < self.reserve_bytes:
                    written += os.write(fd, chunk[: self.reserve_bytes - written])
                os.fsync(fd)
            finally:
                os.close(fd)
            partial.replace(self.reserve)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            return exc
        return None

    def check_space(self) -> bool:
        """Set the reserve aside again if it was given back and space is back; whether it is in place.

        Writes call this themselves, every SPACE_CHECK_SECONDS at most, while the reserve is spent.
        """
        if not self.reserve_bytes:
            return False
        if not self.low_space:
            return True
        self._space_checked = time.monotonic()
        if not self._set_reserve_aside():
            return False
        left_out, self._left_out = self._left_out, {"readings": 0, "notes": 0}
        log.warning("space is back at %s: the %s reserve %s is set aside again, and everything is stored again "
                    "(%d throughput readings and %d log notes were left out meanwhile)", self.path.parent,
                    _size(self.reserve_bytes), self.reserve, left_out["readings"], left_out["notes"])  # fmt: skip
        return True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them land, or none."""
        try:
            with self._writing():
                yield
        except _RolledBack as lost:
            raise self._rolled_back(lost) from lost.error

    # ---- jobs -------------------------------------------------------------------------------------------

    @_translated
    def save_job(self, job: ManagedJob) -> None:
        """Insert or replace a managed job, and the row of its current attempt."""
        with self._writing():
            self._upsert("jobs", JOB_COLUMNS, ("job_id",), _row(job))
            attempt = job.current_attempt()
            if attempt is not None:
                self._upsert("attempts", ATTEMPT_COLUMNS, ("job_id", "attempt"), _row(attempt))

    def _upsert(self, table: str, columns: Sequence[str], key: Sequence[str], values: Sequence[object]) -> None:
        # One statement, where sqlite-utils' Table.upsert reads the schema first: save_job runs at
        # every decision and every refresh of a job.
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key)
        self._run(f"INSERT INTO {table} ({_quoted(columns)}) VALUES ({_marks(columns)}) "
                  f"ON CONFLICT ({_quoted(key)}) DO UPDATE SET {updates}", values)  # fmt: skip

    def _jobs(self, where: str = "", args: Sequence[object] = ()) -> list[ManagedJob]:
        rows = self._db.query(f"SELECT {_quoted(JOB_COLUMNS)} FROM jobs {where} ORDER BY job_id", args)
        return [_job_from_row(row) for row in rows]

    @_translated
    def attempts(self, job_ids: list[int] | None = None, since: float | None = None) -> list[Attempt]:
        """Attempts (of some jobs, or all; those still running or ended after `since`), in start order."""
        clauses, args = [], []
        if job_ids is not None:
            clauses.append(f"job_id IN ({_marks(job_ids)})")
            args += job_ids
        if since is not None:
            clauses.append("(ended IS NULL OR ended >= ?)")
            args.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.query(f"SELECT {_quoted(ATTEMPT_COLUMNS)} FROM attempts {where} ORDER BY started, job_id",
                              args)  # fmt: skip
        return [Attempt(**{**row, "outcome": Outcome(row["outcome"])}) for row in rows]

    @_translated
    def chain_jobs(self, chain: str) -> list[ManagedJob]:
        """Every job of a singleton chain, oldest first."""
        return self._jobs("WHERE chain = ?", [chain])

    @_translated
    def load_jobs(self, include_gone: bool = False) -> dict[int, ManagedJob]:
        """Managed jobs by id; those that left Slurm only when asked."""
        jobs = self._jobs() if include_gone else self._jobs("WHERE phase != ?", [Phase.GONE.value])
        return {job.job_id: job for job in jobs}

    @_translated
    def job(self, job_id: int) -> ManagedJob | None:
        """One managed job, or None."""
        found = self._jobs("WHERE job_id = ?", [job_id])
        return found[0] if found else None

    @_translated
    def save_unmanaged(self, job: UnmanagedJob) -> None:
        """Remember a job whose APS spec is broken, and why."""
        values = asdict(job)
        with self._writing():
            self._upsert("unmanaged", tuple(values), ("job_id",), tuple(values.values()))

    @_translated
    def unmanaged(self, job_id: int | None = None) -> list[UnmanagedJob]:
        """Jobs whose spec was refused (one, or all)."""
        where, args = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        columns = tuple(f.name for f in fields(UnmanagedJob))
        rows = self._db.query(f"SELECT {_quoted(columns)} FROM unmanaged {where} ORDER BY job_id", args)
        return [UnmanagedJob(**row) for row in rows]

    # ---- events -------------------------------------------------------------------------------------------

    @_translated
    def add_note(self, job_id: int, attempt: int | None, at: float, note: Note, path: str | None = None,
                 line: str | None = None) -> None:  # fmt: skip
        """Append a line to a job's story, within the job's caps (Limits).

        A note past a cap first displaces the job's oldest bulk note (BULK_NOTE_KINDS); when
        there is none left to displace, the new note is counted instead of stored. Either
        way dropped_notes() counts what was dropped. While the disk reserve is spent, bulk
        notes are not stored at all.
        """
        # Plain statements through _run: this runs for every log line that makes a note.
        bulk = note.kind in BULK_NOTE_KINDS
        if bulk and self.low_space:
            self._left_out["notes"] += 1
            return
        with self._writing():
            count = self._notes.get(job_id) or self._load_notes(job_id)
            limits = self.limits
            if count.total >= limits.max_notes_per_job or (bulk and count.bulk >= limits.max_bulk_notes_per_job):
                if not count.bulk:
                    self._count_dropped(job_id, note.kind, at)
                    return
                oldest = self._run(f"SELECT id, kind FROM events WHERE job_id = ? AND kind IN ({_BULK_MARKS}) "
                                   "ORDER BY at, id LIMIT 1", [job_id, *BULK_NOTE_KINDS]).fetchone()  # fmt: skip
                self._run("DELETE FROM events WHERE id = ?", [oldest["id"]])
                self._count_dropped(job_id, oldest["kind"], at)
                count.total -= 1
                count.bulk -= 1
            self._run("INSERT INTO events (job_id, attempt, at, kind, text, path, line) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [job_id, attempt, at, note.kind, excerpt(note.text), path,
                       None if line is None else excerpt(line)])  # fmt: skip
            count.total += 1
            count.bulk += bulk

    def _load_notes(self, job_id: int) -> _NoteCount:
        total, bulk = self._run(f"SELECT count(*), count(CASE WHEN kind IN ({_BULK_MARKS}) THEN 1 END) FROM events "
                                "WHERE job_id = ?", [*BULK_NOTE_KINDS, job_id]).fetchone()  # fmt: skip
        self._notes[job_id] = _NoteCount(total, bulk)
        return self._notes[job_id]

    def _count_dropped(self, job_id: int, kind: str, at: float) -> None:
        self._run("INSERT INTO dropped_notes (job_id, kind, count, last_at) VALUES (?, ?, 1, ?) "
                  "ON CONFLICT (job_id, kind) DO UPDATE SET count = count + 1, "
                  "last_at = max(last_at, excluded.last_at)",
                  [job_id, kind, at])  # fmt: skip

    @_translated
    def events(self, job_id: int) -> list[StoredEvent]:
        """A job's story in time order."""
        rows = self._db.query("SELECT job_id, attempt, at, kind, text, path, line FROM events WHERE job_id = ? "
                              "ORDER BY at, id", [job_id])  # fmt: skip
        return [StoredEvent(**row) for row in rows]

    @_translated
    def dropped_notes(self, job_id: int) -> dict[str, int]:
        """How many notes of each kind the job's caps dropped (or never stored)."""
        rows = self._db.query("SELECT kind, count FROM dropped_notes WHERE job_id = ? ORDER BY kind", [job_id])
        return {row["kind"]: row["count"] for row in rows}

    # ---- the action journal -----------------------------------------------------------------------------

    @_translated
    def journal(self, action: Action, dry_run: bool, now: float, origin: str = "agent") -> Action:
        """Record an action before it runs; the returned copy carries its journal id.

        `origin` says who decided it: the agent, or `operator:<user>` for the CLI's commands.
        """
        with self._writing():
            cursor = self._run(
                "INSERT INTO actions (job_id, attempt, kind, target, nodes, reason, status, origin, dry_run, tries, "
                "created_at, updated_at, next_try_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, NULL)",
                [action.job_id, action.attempt, action.kind.value, action.target, action.nodes, action.reason,
                 ActionStatus.PENDING.value, origin, int(dry_run), now, now],
            )  # fmt: skip
        return replace(action, journal_id=int(cursor.lastrowid))  # type: ignore[arg-type]

    @_translated
    def update_action(self, action: Action, status: ActionStatus, now: float, error: str | None = None,
                      next_try_at: float | None = None, tried: bool = True) -> None:  # fmt: skip
        """Record an action's outcome (or its next try)."""
        if action.journal_id is None:
            raise StoreError(f"action {action} was never journaled")
        with self._writing():
            self._run("UPDATE actions SET status = ?, updated_at = ?, error = ?, next_try_at = ?, tries = tries + ? "
                      "WHERE id = ?",
                      [ActionStatus(status).value, now, error, next_try_at, int(tried), action.journal_id])  # fmt: skip

    @_translated
    def open_actions(self, origin: str = "agent") -> list[JournalEntry]:
        """The agent's actions journaled but not finished: after a crash, these are reconciled with Slurm."""
        rows = self._db.query(f"SELECT * FROM actions WHERE status IN ({_marks(OPEN_STATUSES)}) AND origin = ? "
                              "ORDER BY id", [*OPEN_STATUSES, origin])  # fmt: skip
        return [_entry(row) for row in rows]

    @_translated
    def actions(self, job_id: int) -> list[JournalEntry]:
        """A job's actions in the order they were decided."""
        rows = self._db.query("SELECT * FROM actions WHERE job_id = ? ORDER BY id", [job_id])
        return [_entry(row) for row in rows]

    @_translated
    def drains_since(self, since: float) -> int:
        """Nodes AJR drained (or would have, in dry run) since a time: the hourly budget's use."""
        return self._db.table("actions").count_where(
            "kind = ? AND status IN (?, ?) AND created_at >= ?",
            [ActionKind.DRAIN.value, ActionStatus.DONE.value, ActionStatus.DRY_RUN.value, since],
        )

    # ---- followed log files -------------------------------------------------------------------------------

    @_translated
    def save_files(self, files: list[FollowedFile]) -> None:
        """Persist read positions so a restart resumes where it stopped."""
        rows = [(f.position.path, f.job_id, f.attempt, f.position.inode, f.position.device, f.position.offset)
                for f in files]  # fmt: skip
        # One statement for the lot, on plain executemany: this runs for each read that brought lines
        # (sqlite-utils' upsert_all: eleven statements a call, three quarters of the agent's CPU a line).
        with self._writing():
            self._run(
                "INSERT INTO files (path, job_id, attempt, inode, device, offset) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET job_id = excluded.job_id, attempt = excluded.attempt, "
                "inode = excluded.inode, device = excluded.device, offset = excluded.offset",
                rows, many=True,
            )  # fmt: skip

    @_translated
    def files(self, job_id: int | None = None) -> list[FollowedFile]:
        """Followed files (of one job, or all)."""
        where, args = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        rows = self._db.query(f"SELECT * FROM files {where} ORDER BY path", args)
        return [FollowedFile(row["job_id"], row["attempt"],
                             FilePosition(row["path"], row["inode"], row["device"], row["offset"]))
                for row in rows]  # fmt: skip

    @_translated
    def forget_files(self, job_id: int) -> None:
        """Drop the read positions of a job that left Slurm."""
        with self._writing():
            self._run("DELETE FROM files WHERE job_id = ?", [job_id])

    # ---- attribution and throughput -------------------------------------------------------------------------

    @_translated
    def save_verdict(self, job_id: int, attempt: int, at: float, verdict: Verdict) -> None:
        """Keep a failed attempt's verdict with its evidence (each line an excerpt)."""
        evidence = json.dumps([excerpt(line) for line in verdict.evidence])
        with self._writing():
            self._upsert("verdicts", ("job_id", "attempt", "at", "fault", "nodes", "cause", "evidence"),
                         ("job_id", "attempt"),
                         (job_id, attempt, at, verdict.fault, ",".join(verdict.nodes), excerpt(verdict.cause),
                          evidence))  # fmt: skip

    @_translated
    def verdicts(self, job_ids: list[int]) -> list[tuple[int, int, float, Verdict]]:
        """(job, attempt, when, verdict) of the given jobs' failed attempts."""
        rows = self._db.query(f"SELECT * FROM verdicts WHERE job_id IN ({_marks(job_ids)}) ORDER BY at", job_ids)
        return [
            (r["job_id"], r["attempt"], r["at"],
             Verdict(r["fault"], tuple(n for n in r["nodes"].split(",") if n), r["cause"],
                     tuple(json.loads(r["evidence"]))))
            for r in rows
        ]  # fmt: skip

    @_translated
    def add_throughput(self, readings: list[Reading]) -> None:
        """Record throughput reports, all in one transaction: a backlog brings thousands.

        An attempt keeps at most Limits.max_readings_per_attempt: past it, every second stored
        reading is deleted and from then on only every second new one is stored, so the
        series always spans the whole attempt, evenly. While the disk reserve is spent,
        readings are not stored.
        """
        if self.low_space:
            self._left_out["readings"] += len(readings)
            return
        rows: list[tuple[int, int, float, float]] = []
        with self._writing():
            for reading in readings:
                key = (reading.job_id, reading.attempt)
                series = self._series.get(key) or self._load_series(key)
                series.seen += 1
                if (series.seen - 1) % series.stride:
                    continue
                rows.append((reading.job_id, reading.attempt, reading.at, reading.value))
                series.stored += 1
                if series.stored > self.limits.max_readings_per_attempt:
                    self._insert_readings(rows)
                    rows = []
                    self._thin(key, series)
            self._insert_readings(rows)

    def _load_series(self, key: tuple[int, int]) -> _Series:
        count = self._run("SELECT count(*) FROM throughput WHERE job_id = ? AND attempt = ?", key).fetchone()[0]
        # A restarted agent does not know the stride: it stores every reading until the next thinning.
        self._series[key] = _Series(stored=count)
        return self._series[key]

    def _insert_readings(self, rows: list[tuple[int, int, float, float]]) -> None:
        # executemany: sqlite-utils' insert_all took ten times as long a row, and a backlog brings thousands.
        if rows:
            self._run("INSERT INTO throughput (job_id, attempt, at, value) VALUES (?, ?, ?, ?)", rows, many=True)

    def _thin(self, key: tuple[int, int], series: _Series) -> None:
        deleted = self._run(
            "DELETE FROM throughput WHERE rowid IN (SELECT rowid FROM (SELECT rowid, row_number() OVER "
            "(ORDER BY at, rowid) AS n FROM throughput WHERE job_id = ? AND attempt = ?) WHERE n % 2 = 0)",
            key,
        ).rowcount
        series.stored -= deleted
        series.stride *= 2

    @_translated
    def throughput(self, job_id: int, attempt: int | None = None) -> list[tuple[int, float, float]]:
        """(attempt, at, value) reports of a job, oldest first."""
        where, args = ("job_id = ?", [job_id]) if attempt is None else ("job_id = ? AND attempt = ?", [job_id, attempt])
        rows = self._db.query(f"SELECT attempt, at, value FROM throughput WHERE {where} ORDER BY at, rowid", args)
        return [(r["attempt"], r["at"], r["value"]) for r in rows]

    # ---- retention -----------------------------------------------------------------------------------------

    @_translated
    def prune(self, now: float, keep_seconds: float, max_jobs: int = PRUNE_BATCH_JOBS) -> Pruned:
        """Remove the jobs AJR is done with (FINISHED_PHASES) whose last sign of life (last seen,
        latest note) is older than `keep_seconds`, with all their rows; returns what went.

        A job with an open journal entry stays, and so does a singleton chain while one of
        its jobs does. At most `max_jobs` jobs (whole chains) go per call, each call one
        transaction, so the agent's loop is never held long: `more` says to call again.
        Refused specs first seen before the retention go too, and the operators' closed
        actions on jobs AJR never managed. Operators' `ajr forget` requests stay: they keep
        a long-running job from being managed again.
        """
        cutoff = now - keep_seconds
        finished = tuple(p.value for p in FINISHED_PHASES)
        rows = list(self._db.query(
            f"""SELECT job_id, chain, phase IN ({_marks(finished)}) AS finished,
                       max(coalesce(last_seen, 0),
                           coalesce((SELECT max(at) FROM events e WHERE e.job_id = j.job_id), 0)) AS active,
                       EXISTS (SELECT 1 FROM actions a WHERE a.job_id = j.job_id
                               AND a.status IN ({_marks(OPEN_STATUSES)})) AS open
                FROM jobs j ORDER BY active, job_id""",
            [*finished, *OPEN_STATUSES],
        ))  # fmt: skip
        done = {r["job_id"] for r in rows if r["finished"] and r["active"] < cutoff and not r["open"]}
        kept_chains = {r["chain"] for r in rows if r["chain"] and r["job_id"] not in done}
        groups: dict[object, list[int]] = {}
        for r in rows:
            if r["job_id"] in done and r["chain"] not in kept_chains:
                groups.setdefault(r["chain"] or ("job", r["job_id"]), []).append(r["job_id"])
        taken: list[int] = []
        for members in groups.values():
            if taken and len(taken) + len(members) > max_jobs:
                break
            taken += members
        counts: dict[str, int] = {}
        with self._writing():
            for table in ("attempts", "events", "dropped_notes", "throughput", "verdicts", "files", "actions", "jobs"):
                counts[table] = self._run(f"DELETE FROM {table} WHERE job_id IN ({_marks(taken)})", taken).rowcount
            counts["actions"] += self._run(
                f"DELETE FROM actions WHERE status NOT IN ({_marks(OPEN_STATUSES)}) AND updated_at < ? "
                "AND job_id NOT IN (SELECT job_id FROM jobs)",
                [*OPEN_STATUSES, cutoff],
            ).rowcount  # fmt: skip
            counts["unmanaged"] = self._run("DELETE FROM unmanaged WHERE first_seen < ?", [cutoff]).rowcount
        for job_id in taken:
            self._notes.pop(job_id, None)
        for key in [k for k in self._series if k[0] in taken]:
            del self._series[key]
        return Pruned(**counts, more=sum(map(len, groups.values())) > len(taken))

    # ---- operators' requests --------------------------------------------------------------------------------

    @_translated
    def forget(self, job_id: int, by: str, now: float) -> None:
        """Ask the agent to stop managing a job (it acts at its next poll)."""
        with self._writing():
            self._upsert("forgotten", ("job_id", "by", "at"), ("job_id",), (job_id, by, now))

    @_translated
    def forgotten(self) -> dict[int, str]:
        """Jobs operators told AJR to leave alone, with who did."""
        return {row["job_id"]: row["by"] for row in self._db.query("SELECT job_id, by FROM forgotten")}

    # ---- agent status ---------------------------------------------------------------------------------------

    @_translated
    def set_meta(self, **values: object) -> None:
        """Record facts about the running agent (backend, last poll) for `ajr status`."""
        with self._writing():
            self._run("INSERT INTO meta (key, value) VALUES (?, ?) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                      [(k, json.dumps(v)) for k, v in values.items()], many=True)  # fmt: skip

    @_translated
    def meta(self) -> dict[str, object]:
        """Facts the agent recorded about itself."""
        rows = self._db.query("SELECT key, value FROM meta WHERE key != 'schema_version'")
        return {row["key"]: json.loads(row["value"]) for row in rows}


def _give_back(reserve: Path, database: Path, how: str) -> bool:
    """Delete a database's reserve file, loudly; False if there was none."""
    try:
        size = reserve.stat().st_size
        reserve.unlink()
    except FileNotFoundError:
        return False
    log.critical("disk %s at %s: the reserve %s (%s) is given back so that the action journal and the decisions "
                 "can still be written; free space on that file system. Until there is room again for the reserve, "
                 "throughput readings and log notes are not stored", how, database.parent, reserve,
                 _size(size))  # fmt: skip
    return True


def _quarantine(path: Path, at: float) -> Path:
    """Move a corrupt database (and its -wal) aside under a name that says when; the stale -shm goes."""
    moved = path.with_name(f"{path.name}.corrupt-{_stamp(at)}")
    while moved.exists():
        moved = moved.with_name(moved.name + "-again")
    path.rename(moved)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        wal.rename(moved.with_name(moved.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    return moved


def quarantined_files(path: Path) -> list[Path]:
    """The corrupt databases open_for_agent moved aside from `path`, oldest first."""
    pattern = f"{glob.escape(path.name)}.corrupt-*"
    return sorted(p for p in path.parent.glob(pattern) if not p.name.endswith("-wal"))


def _row(record: ManagedJob | Attempt) -> list[object]:
    """A record's values in column order: enums by value, booleans as integers."""
    row: list[object] = []
    for value in (getattr(record, f.name) for f in fields(record)):
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        row.append(value)
    return row


def _job_from_row(values: dict[str, Any]) -> ManagedJob:
    values["mode"] = ResumeMode(values["mode"])
    values["phase"] = Phase(values["phase"])
    values["attempt_outcome"] = Outcome(values["attempt_outcome"])
    values["attempt_succeeded"] = bool(values["attempt_succeeded"])
    values["straggler_reported"] = bool(values["straggler_reported"])
    values["stop_cause"] = StopCause(values["stop_cause"]) if values["stop_cause"] else None
    values["awaiting"] = Awaiting(values["awaiting"]) if values["awaiting"] else None
    return ManagedJob(**values)


def _entry(row: dict[str, Any]) -> JournalEntry:
    action = Action(ActionKind(row["kind"]), row["job_id"], row["attempt"], row["reason"], target=row["target"],
                    nodes=row["nodes"] or "", journal_id=row["id"])  # fmt: skip
    return JournalEntry(
        id=row["id"], action=action, status=ActionStatus(row["status"]), tries=row["tries"],
        created_at=row["created_at"], updated_at=row["updated_at"], next_try_at=row["next_try_at"],
        error=row["error"], dry_run=bool(row["dry_run"]), origin=row["origin"],
    )  # fmt: skip
