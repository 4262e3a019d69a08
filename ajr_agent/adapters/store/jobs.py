"""The jobs AJR manages and their attempts, the verdicts on failed attempts, the jobs whose
spec was refused, and the jobs operators told AJR to forget."""

from __future__ import annotations

from typing import Sequence

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection
from ajr_agent.adapters.store.rows import (
    ATTEMPT_COLUMNS,
    JOB_COLUMNS,
    UNMANAGED_COLUMNS,
    VERDICT_COLUMNS,
    attempt_from_row,
    job_from_row,
    values,
    verdict_from_row,
    verdict_values,
)
from ajr_agent.domain.model import Attempt, ManagedJob, UnmanagedJob, Verdict

_SAVE_JOB = sql.upsert("jobs", JOB_COLUMNS, ("job_id",))
_SAVE_ATTEMPT = sql.upsert("attempts", ATTEMPT_COLUMNS, ("job_id", "attempt"))
_SAVE_UNMANAGED = sql.upsert("unmanaged", UNMANAGED_COLUMNS, ("job_id",))
_SAVE_VERDICT = sql.upsert("verdicts", VERDICT_COLUMNS, ("job_id", "attempt"))
_FORGET = sql.upsert("forgotten", ("job_id", "by", "at"), ("job_id",))


def save_job(connection: Connection, job: ManagedJob) -> None:
    """Insert or replace a managed job, and the row of its current attempt, in one transaction."""
    with connection.writing():
        connection.run(_SAVE_JOB, values(job))
        attempt = job.current_attempt()
        if attempt is not None:
            connection.run(_SAVE_ATTEMPT, values(attempt))


def jobs(connection: Connection, where: str = "", args: Sequence[object] = ()) -> list[ManagedJob]:
    """The managed jobs a WHERE clause (on `jobs`) selects, by id."""
    rows = connection.query(f"SELECT {sql.quoted(JOB_COLUMNS)} FROM jobs {where} ORDER BY job_id", args)
    return [job_from_row(row) for row in rows]


def attempts(connection: Connection, job_ids: list[int] | None, since: float | None) -> list[Attempt]:
    """Attempts (of some jobs, or all; those still running or ended after `since`), in start order."""
    clauses, args = [], []
    if job_ids is not None:
        clauses.append(f"job_id IN ({sql.marks(job_ids)})")
        args += job_ids
    if since is not None:
        clauses.append("(ended IS NULL OR ended >= ?)")
        args.append(since)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = connection.query(f"SELECT {sql.quoted(ATTEMPT_COLUMNS)} FROM attempts {where} ORDER BY started, job_id",
                            args)  # fmt: skip
    return [attempt_from_row(row) for row in rows]


def save_unmanaged(connection: Connection, job: UnmanagedJob) -> None:
    """Insert or replace a job whose spec was refused."""
    connection.write(_SAVE_UNMANAGED, values(job))


def unmanaged(connection: Connection, job_id: int | None) -> list[UnmanagedJob]:
    """Jobs whose spec was refused (one, or all), by id."""
    where, args = sql.where_equal(job_id=job_id)
    rows = connection.query(f"SELECT {sql.quoted(UNMANAGED_COLUMNS)} FROM unmanaged {where} ORDER BY job_id", args)
    return [UnmanagedJob(**row) for row in rows]


def save_verdict(connection: Connection, job_id: int, attempt: int, at: float, verdict: Verdict) -> None:
    """Insert or replace the verdict on a failed attempt."""
    connection.write(_SAVE_VERDICT, verdict_values(job_id, attempt, at, verdict))


def verdicts(connection: Connection, job_ids: list[int]) -> list[tuple[int, int, float, Verdict]]:
    """(job, attempt, when, verdict) of the given jobs' failed attempts, oldest first."""
    rows = connection.query(f"SELECT * FROM verdicts WHERE job_id IN ({sql.marks(job_ids)}) ORDER BY at", job_ids)
    return [(row["job_id"], row["attempt"], row["at"], verdict_from_row(row)) for row in rows]


def forget(connection: Connection, job_id: int, by: str, now: float) -> None:
    """Record an operator's request to stop managing a job."""
    connection.write(_FORGET, (job_id, by, now))


def forgotten(connection: Connection) -> dict[int, str]:
    """Jobs operators told AJR to leave alone, with who did."""
    return {row["job_id"]: row["by"] for row in connection.query("SELECT job_id, by FROM forgotten")}
