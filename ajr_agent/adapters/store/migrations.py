"""The schema as numbered migrations, and bringing a database up to the newest.

Each migration is written out as SQL and never derived from the dataclasses: a field added
to ManagedJob needs a migration, and tests/unit/test_store_upgrade.py fails until it has
one. A database of an older schema is copied beside itself (`ajr.db.bak-v1-<time>`) and
migrated in place when it is opened for writing; one of a newer schema is refused.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from pathlib import Path
from typing import Callable

from sqlite_utils import Database

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection, wrapped
from ajr_agent.adapters.store.errors import StoreSchemaError
from ajr_agent.adapters.store.siblings import backup_path

log = logging.getLogger("ajr.store")

SCHEMA_VERSION = 5

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

# Version 5: the node ledger (issue 12): each node's blames with the verdict's basis, its standing
# (lemon, trusted again), AJR's exclusions of it, operators' forgiveness; a job's requeues by cause.
# The rows already there: every requeue so far counted against the job's own budget, every stored
# verdict resting on the job's log (the conservative reading: it drains nothing).
_V5 = (
    "ALTER TABLE jobs ADD COLUMN keep_out TEXT DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN app_requeues INTEGER DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN node_requeues INTEGER DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN infra_requeues INTEGER DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN charged TEXT",
    "UPDATE jobs SET app_requeues = requeues_used",
    "ALTER TABLE verdicts ADD COLUMN basis TEXT DEFAULT 'job_log'",
    """CREATE TABLE node_blames (
        node TEXT NOT NULL, job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, user TEXT, at REAL, basis TEXT,
        cause TEXT, PRIMARY KEY (node, job_id, attempt))""",
    """CREATE TABLE node_states (
        node TEXT PRIMARY KEY, lemon_since REAL, counted_since REAL, in_service INTEGER, in_service_since REAL,
        trusted_at REAL, trusted_by TEXT, acted_at REAL)""",
    """CREATE TABLE node_exclusions (
        node TEXT NOT NULL, job_id INTEGER NOT NULL, at REAL, taken_back_at REAL, PRIMARY KEY (node, job_id))""",
    "CREATE TABLE node_forgiven (id INTEGER PRIMARY KEY, node TEXT NOT NULL, by TEXT, at REAL, applied_at REAL)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}

_SET_VERSION = sql.upsert("meta", ("key", "value"), ("key",))


@functools.cache
def _reference_columns(version: int) -> dict[str, frozenset[str]]:
    """The tables and columns migrations 1..version make."""
    db = wrapped(sqlite3.connect(":memory:"))
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


def found_version(connection: Connection) -> int:
    """The schema of the database's tables as they are: 0 for an empty file.

    Raises StoreSchemaError for tables that are not AJR's, or of a newer AJR.
    """
    path, db = connection.path, connection.db
    found = _columns(db)
    if not found:
        return 0
    if "meta" not in found:
        raise StoreSchemaError(f"{path}: has tables ({', '.join(sorted(found))}) but no meta table: it is "
                               "not an AJR state database; point state_db at another file")  # fmt: skip
    # The meta table is there (rows_where would read a missing one as empty).
    rows = list(db.table("meta").rows_where("key = ?", ["schema_version"], select="value"))
    if not rows:
        raise StoreSchemaError(f"{path}: has AJR's tables but says no schema_version: it was not made by "
                               "AJR, or was changed by hand; point state_db at another file")  # fmt: skip
    version = int(rows[0]["value"])
    if version > SCHEMA_VERSION:
        raise StoreSchemaError(
            f"{path}: schema version {version} is newer than this AJR understands ({SCHEMA_VERSION}); "
            "upgrade AJR or point state_db elsewhere"
        )
    if version != 1:
        return version
    # f2f5759 changed the tables and kept saying 1: tell the two apart by their columns.
    for candidate in (1, 2):
        if found == _reference_columns(candidate):
            return candidate
    raise StoreSchemaError(
        f"{path}: says schema_version 1 but its tables are neither those of schema 1 (AJR up to dbc6637) "
        f"nor of schema 2 (from f2f5759 on); against schema 2, {_differences(found, _reference_columns(2))}. "
        "This AJR cannot migrate it: move it aside (the agent then starts a new one) or point state_db elsewhere"
    )


def migrate(connection: Connection, found: int, now: Callable[[], float]) -> Path | None:
    """Bring a database at schema `found` (0: empty) to SCHEMA_VERSION, one transaction a
    migration; the copy made first of one that had a schema, or None."""
    if found == SCHEMA_VERSION:
        return None
    path = connection.path
    backup = None
    if found:
        backup = backup_path(path, found, now())
        log.info("state database %s is at schema %d: copying it to %s, then migrating it to %d", path, found,
                 backup, SCHEMA_VERSION)  # fmt: skip
        _copy(connection.conn, backup)
    for version in range(found + 1, SCHEMA_VERSION + 1):
        with connection.writing():
            for statement in MIGRATIONS[version]:
                connection.run(statement)
            connection.run(_SET_VERSION, ["schema_version", str(version)])
    if found:
        log.warning("state database %s migrated from schema %d to %d; the database as it was is copied to %s",
                    path, found, SCHEMA_VERSION, backup)  # fmt: skip
    return backup


def _copy(conn: sqlite3.Connection, target: Path) -> None:
    """A consistent copy through SQLite's online backup API (the WAL's content included), as one
    self-contained file: opening it later makes no -wal beside it."""
    copy = sqlite3.connect(target)
    try:
        conn.backup(copy)
        copy.execute("PRAGMA journal_mode = DELETE")
    except BaseException:
        copy.close()
        target.unlink(missing_ok=True)
        raise
    copy.close()
