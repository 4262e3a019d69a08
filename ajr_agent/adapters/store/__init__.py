"""AJR's state in SQLite (WAL): jobs, events, the action journal, log offsets.

Callers hold one Store (database.py); the rest of the package is what it is made of:

    connection.py   the sqlite3 connection: transactions, statements, errors told as StoreErrors
    errors.py       StoreError and its subclasses, each message saying what to do
    migrations.py   the schema as numbered SQL migrations; the upgrade, with a backup first
    reserve.py      disk space set aside beside the database, given back when the disk fills
    siblings.py     the files beside the database: reserve, backups, corrupt files moved aside
    jobs.py         managed jobs and attempts, verdicts, refused specs, `ajr forget`
    notes.py        a job's story (events) within its caps
    throughput.py   an attempt's throughput readings, thinned evenly past the cap
    journal.py      the action journal
    nodes.py        the node ledger: blames, nodes' records, AJR's exclusions, operators' forgiveness
    agent_state.py  read positions of followed files, facts for `ajr status`
    prune.py        retention: removing the jobs AJR is done with
    limits.py       what a job may store: excerpts, caps
    records.py      what the store hands back besides the domain's records
    rows.py, sql.py records to rows and back; pieces of SQL

What a job may store is bounded (see Limits): log lines and evidence are kept as excerpts of
at most EXCERPT_BYTES, a job's notes and an attempt's throughput readings are capped, and
prune() removes the jobs that left Slurm longer ago than the site keeps them.

The writes of each log read (save_files, add_throughput, add_note) stay plain execute and
executemany: sqlite-utils' upsert_all ran eleven statements a call, three quarters of the
agent's CPU per live log line, and insert_all took ten times as long a row as executemany.
"""

from ajr_agent.adapters.store.connection import AGENT_BUSY_TIMEOUT_MS, DEFAULT_BUSY_TIMEOUT_MS
from ajr_agent.adapters.store.database import Store
from ajr_agent.adapters.store.errors import (
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreSchemaError,
)
from ajr_agent.adapters.store.limits import BULK_NOTE_KINDS, EXCERPT_BYTES, Limits, excerpt
from ajr_agent.adapters.store.migrations import MIGRATIONS, SCHEMA_VERSION
from ajr_agent.adapters.store.prune import PRUNE_BATCH_JOBS
from ajr_agent.adapters.store.records import ActionStatus, FollowedFile, JournalEntry, Pruned, Reading, StoredEvent
from ajr_agent.adapters.store.reserve import DEFAULT_RESERVE_BYTES
from ajr_agent.adapters.store.siblings import quarantined_files

__all__ = [
    "AGENT_BUSY_TIMEOUT_MS",
    "BULK_NOTE_KINDS",
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_RESERVE_BYTES",
    "EXCERPT_BYTES",
    "MIGRATIONS",
    "PRUNE_BATCH_JOBS",
    "SCHEMA_VERSION",
    "ActionStatus",
    "FollowedFile",
    "JournalEntry",
    "Limits",
    "Pruned",
    "Reading",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreSchemaError",
    "StoredEvent",
    "excerpt",
    "quarantined_files",
]
