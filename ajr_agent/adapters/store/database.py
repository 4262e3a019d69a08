"""The Store: one open state database, the one object the agent, the CLI and the cockpit hold.

The agent is the only writer of the jobs' story; the CLI and the cockpit read beside it
(WAL lets both run at once) and journal operators' requests. Decisions are written in one
transaction with the actions they journal, so a crash leaves either both or neither.

Each method runs through Connection.guarded, so sqlite3's and the OS's errors come out as
StoreErrors; the SQL and the mapping of rows are in the modules beside this one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Callable, Concatenate, ParamSpec, TypeVar

from ajr_agent.adapters.store import agent_state, jobs, journal
from ajr_agent.adapters.store.connection import DEFAULT_BUSY_TIMEOUT_MS, AGENT_BUSY_TIMEOUT_MS, Connection
from ajr_agent.adapters.store.errors import StoreCorruptError, StoreError, StoreFullError
from ajr_agent.adapters.store.limits import Limits
from ajr_agent.adapters.store.migrations import SCHEMA_VERSION, found_version, migrate
from ajr_agent.adapters.store.nodes import NodeRows
from ajr_agent.adapters.store.notes import Notes
from ajr_agent.adapters.store.prune import PRUNE_BATCH_JOBS, prune
from ajr_agent.adapters.store.records import ActionStatus, FollowedFile, JournalEntry, Pruned, Reading, StoredEvent
from ajr_agent.adapters.store.reserve import DEFAULT_RESERVE_BYTES, Reserve, give_back
from ajr_agent.adapters.store.siblings import quarantine, reserve_path
from ajr_agent.adapters.store.throughput import Throughput
from ajr_agent.domain.model import Action, Attempt, ManagedJob, Note, Phase, UnmanagedJob, Verdict

log = logging.getLogger("ajr.store")

P = ParamSpec("P")
T = TypeVar("T")


def _guarded(method: Callable[Concatenate[Store, P], T]) -> Callable[Concatenate[Store, P], T]:
    """A Store method run through its connection's guarded(): StoreErrors out, and a write the
    full disk rolled back tried once more."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._connection.guarded(functools.partial(method, self, *args, **kwargs))

    return wrapper


class Store:
    """The state database. Open one per process; the agent writes, the CLI reads."""

    def __init__(self, path: Path | str, *, readonly: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
                 limits: Limits = Limits(), reserve_bytes: int = 0, integrity_check: bool = False,
                 now: Callable[[], float] = time.time, wal: bool = True) -> None:  # fmt: skip
        """Open (or create) the database at `path` and bring it to SCHEMA_VERSION, with a backup first.

        `readonly` opens it as it is, creating and migrating nothing (`ajr doctor`):
        pending_migration then says what a writer would do. `reserve_bytes` > 0 keeps a
        reserve file of that size beside the database, given back when the disk fills.
        `integrity_check` runs PRAGMA quick_check before anything else. `wal` False keeps
        the database in SQLite's rollback journal instead of WAL: WAL's shared memory works
        only between processes of one host, so a database that agents on two controller
        hosts open in turn (failover) must not use it.
        """
        self.path = Path(path)
        self.wal = wal
        self.readonly = readonly
        self.busy_timeout_ms = busy_timeout_ms
        self.limits = limits  # read at each write: a reload may replace it
        self.backup: Path | None = None  # the copy made before migrating, at this open
        self.quarantined: Path | None = None  # where open_for_agent moved a corrupt file
        self.pending_migration: tuple[int, int] | None = None
        self.schema_version = SCHEMA_VERSION
        self._now = now
        self._reserve = Reserve(self.path, reserve_bytes)
        self._connection = Connection(self.path, readonly=readonly, busy_timeout_ms=busy_timeout_ms,
                                      reserve=self._reserve)  # fmt: skip
        self.conn = self._connection.conn
        self._notes = Notes(self._connection)
        self._throughput = Throughput(self._connection)
        self.nodes = NodeRows(self._connection)  # the node ledger's rows
        try:
            self._open(integrity_check)
        except BaseException:
            self.close()
            raise

    @_guarded
    def _open(self, integrity_check: bool) -> None:
        if integrity_check:
            self._connection.check_integrity()
        found = found_version(self._connection)
        if self.readonly:
            self.schema_version = found or SCHEMA_VERSION
            self.pending_migration = (found, SCHEMA_VERSION) if 0 < found < SCHEMA_VERSION else None
            return
        # Only a database known to be AJR's is switched to WAL (or back): that rewrites its header.
        self.conn.execute(f"PRAGMA journal_mode = {'WAL' if self.wal else 'DELETE'}")
        self.backup = migrate(self._connection, found, self._now)
        if self._reserve.size:
            self._reserve.set_aside(at_start=True)

    @classmethod
    def open_for_agent(cls, path: Path | str, *, busy_timeout_ms: int = AGENT_BUSY_TIMEOUT_MS,
                       limits: Limits = Limits(), reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                       now: Callable[[], float] = time.time, wal: bool = True) -> Store:  # fmt: skip
        """The agent's store: checked at start, a corrupt file moved aside, migrated, with a reserve.

        A corrupt database is renamed to `<name>.corrupt-<time>` (its -wal with it) and a
        new one is started, with a critical log line: the agent goes on recovering jobs
        rather than crash-looping under systemd, and `ajr doctor` reports the moved file
        until an admin deletes it.
        """
        path = Path(path)
        opening = functools.partial(cls, path, integrity_check=True, busy_timeout_ms=busy_timeout_ms, limits=limits,
                                    reserve_bytes=reserve_bytes, now=now, wal=wal)  # fmt: skip
        try:
            return _opened_in_a_full_disk(path, opening)
        except StoreCorruptError as exc:
            moved = quarantine(path, now())
            log.critical("state database %s is corrupt (%s): moved aside to %s and a new, empty one started. What "
                         "AJR knew of the jobs (requeues used, the action journal, their stories) is only in the moved "
                         "file: salvage rows with `sqlite3 %s .recover`. Jobs still in Slurm are managed again from "
                         "the next poll; `ajr doctor` reports the moved file until it is deleted", path, exc.detail,
                         moved, moved)  # fmt: skip
        store = _opened_in_a_full_disk(path, opening)
        store.quarantined = moved
        return store

    @_guarded
    def integrity(self) -> None:
        """Raise StoreCorruptError unless PRAGMA quick_check finds the file sound."""
        self._connection.check_integrity()

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._connection.close()

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group writes: all of them land, or none."""
        return self._connection.transaction()

    # ---- the disk reserve ---------------------------------------------------------------------------

    @property
    def low_space(self) -> bool:
        """The disk reserve is given back: throughput readings and bulk notes are not stored."""
        return self._reserve.low_space

    def check_space(self) -> bool:
        """Set the reserve aside again if it was given back and space is back; whether it is in place.

        Writes call this themselves, every SPACE_CHECK_SECONDS at most, while the reserve is spent.
        """
        return self._reserve.check()

    # ---- jobs -------------------------------------------------------------------------------------------

    @_guarded
    def save_job(self, job: ManagedJob) -> None:
        """Insert or replace a managed job, and the row of its current attempt."""
        jobs.save_job(self._connection, job)

    @_guarded
    def attempts(self, job_ids: list[int] | None = None, since: float | None = None) -> list[Attempt]:
        """Attempts (of some jobs, or all; those still running or ended after `since`), in start order."""
        return jobs.attempts(self._connection, job_ids, since)

    @_guarded
    def chain_jobs(self, chain: str) -> list[ManagedJob]:
        """Every job of a singleton chain, oldest first."""
        return jobs.jobs(self._connection, "WHERE chain = ?", [chain])

    @_guarded
    def load_jobs(self, include_gone: bool = False) -> dict[int, ManagedJob]:
        """Managed jobs by id; those that left Slurm only when asked."""
        where, args = ("", []) if include_gone else ("WHERE phase != ?", [Phase.GONE.value])
        return {job.job_id: job for job in jobs.jobs(self._connection, where, args)}

    @_guarded
    def job(self, job_id: int) -> ManagedJob | None:
        """One managed job, or None."""
        found = jobs.jobs(self._connection, "WHERE job_id = ?", [job_id])
        return found[0] if found else None

    @_guarded
    def save_unmanaged(self, job: UnmanagedJob) -> None:
        """Remember a job whose APS spec is broken, and why."""
        jobs.save_unmanaged(self._connection, job)

    @_guarded
    def unmanaged(self, job_id: int | None = None) -> list[UnmanagedJob]:
        """Jobs whose spec was refused (one, or all)."""
        return jobs.unmanaged(self._connection, job_id)

    @_guarded
    def save_verdict(self, job_id: int, attempt: int, at: float, verdict: Verdict) -> None:
        """Keep a failed attempt's verdict with its evidence (each line an excerpt)."""
        jobs.save_verdict(self._connection, job_id, attempt, at, verdict)

    @_guarded
    def verdicts(self, job_ids: list[int]) -> list[tuple[int, int, float, Verdict]]:
        """(job, attempt, when, verdict) of the given jobs' failed attempts."""
        return jobs.verdicts(self._connection, job_ids)

    # ---- a job's story ------------------------------------------------------------------------------------

    @_guarded
    def add_note(self, job_id: int, attempt: int | None, at: float, note: Note, path: str | None = None,
                 line: str | None = None) -> None:  # fmt: skip
        """Append a line to a job's story, within the job's caps (Limits).

        A note past a cap first displaces the job's oldest bulk note (BULK_NOTE_KINDS); when
        there is none left to displace, the new note is counted instead of stored. Either
        way dropped_notes() counts what was dropped. While the disk reserve is spent, bulk
        notes are not stored at all.
        """
        self._notes.add(self.limits, job_id, attempt, at, note, path, line)

    @_guarded
    def events(self, job_id: int) -> list[StoredEvent]:
        """A job's story in time order."""
        return self._notes.events(job_id)

    @_guarded
    def dropped_notes(self, job_id: int) -> dict[str, int]:
        """How many notes of each kind the job's caps dropped (or never stored)."""
        return self._notes.dropped(job_id)

    @_guarded
    def add_throughput(self, readings: list[Reading]) -> None:
        """Record throughput reports, all in one transaction: a backlog brings thousands.

        An attempt keeps at most Limits.max_readings_per_attempt: past it, every second stored
        reading is deleted and from then on only every second new one is stored, so the
        series always spans the whole attempt, evenly. While the disk reserve is spent,
        readings are not stored.
        """
        self._throughput.add(self.limits, readings)

    @_guarded
    def throughput(self, job_id: int, attempt: int | None = None) -> list[tuple[int, float, float]]:
        """(attempt, at, value) reports of a job, oldest first."""
        return self._throughput.series(job_id, attempt)

    # ---- the action journal -----------------------------------------------------------------------------

    @_guarded
    def journal(self, action: Action, dry_run: bool, now: float, origin: str = "agent") -> Action:
        """Record an action before it runs; the returned copy carries its journal id.

        `origin` says who decided it: the agent, or `operator:<user>` for the CLI's commands.
        """
        return journal.record(self._connection, action, dry_run, now, origin)

    @_guarded
    def update_action(self, action: Action, status: ActionStatus, now: float, error: str | None = None,
                      next_try_at: float | None = None, tried: bool = True) -> None:  # fmt: skip
        """Record an action's outcome (or its next try)."""
        if action.journal_id is None:
            raise StoreError(f"action {action} was never journaled")
        journal.update(self._connection, action.journal_id, status, now, error, next_try_at, tried)

    @_guarded
    def open_actions(self, origin: str = "agent") -> list[JournalEntry]:
        """The agent's actions journaled but not finished: after a crash, these are reconciled with Slurm."""
        return journal.open_entries(self._connection, origin)

    @_guarded
    def actions(self, job_id: int) -> list[JournalEntry]:
        """A job's actions in the order they were decided."""
        return journal.entries(self._connection, job_id)

    @_guarded
    def drains_since(self, since: float) -> int:
        """Nodes AJR drained (or would have, in dry run) since a time: the hourly budget's use."""
        return journal.drains_since(self._connection, since)

    # ---- the agent's own state ----------------------------------------------------------------------------

    @_guarded
    def save_files(self, files: list[FollowedFile]) -> None:
        """Persist read positions so a restart resumes where it stopped."""
        agent_state.save_files(self._connection, files)

    @_guarded
    def files(self, job_id: int | None = None) -> list[FollowedFile]:
        """Followed files (of one job, or all)."""
        return agent_state.files(self._connection, job_id)

    @_guarded
    def forget_files(self, job_id: int) -> None:
        """Drop the read positions of a job that left Slurm."""
        agent_state.forget_files(self._connection, job_id)

    @_guarded
    def set_meta(self, **values: object) -> None:
        """Record facts about the running agent (backend, last poll) for `ajr status`."""
        agent_state.set_meta(self._connection, values)

    @_guarded
    def meta(self) -> dict[str, object]:
        """Facts the agent recorded about itself."""
        return agent_state.meta(self._connection)

    # ---- operators' requests, and retention -------------------------------------------------------------------

    @_guarded
    def forget(self, job_id: int, by: str, now: float) -> None:
        """Ask the agent to stop managing a job (it acts at its next poll)."""
        jobs.forget(self._connection, job_id, by, now)

    @_guarded
    def forgotten(self) -> dict[int, str]:
        """Jobs operators told AJR to leave alone, with who did."""
        return jobs.forgotten(self._connection)

    @_guarded
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
        return prune(self._connection, self._notes, self._throughput, now, keep_seconds, max_jobs)


def _opened_in_a_full_disk(path: Path, opening: Callable[[], Store]) -> Store:
    """Open; if the disk is too full for SQLite to open the database, give the reserve back first."""
    try:
        return opening()
    except StoreFullError:
        if not give_back(reserve_path(path), path, "at start"):
            raise
    return opening()
