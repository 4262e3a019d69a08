"""Retention: removing the jobs AJR is done with, a few at a time, with all their rows."""

from __future__ import annotations

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection
from ajr_agent.adapters.store.notes import Notes
from ajr_agent.adapters.store.records import OPEN_STATUSES, Pruned
from ajr_agent.adapters.store.throughput import Throughput
from ajr_agent.domain.model import Phase

# Jobs in these phases are done with as far as AJR is concerned: prune() may remove them.
FINISHED_PHASES = (Phase.GONE, Phase.FORGOTTEN)
PRUNE_BATCH_JOBS = 5  # about 50,000 rows of jobs at their caps: 0.04-0.05 s of the loop, measured

# The tables that hold rows of a job.
_JOB_TABLES = ("attempts", "events", "dropped_notes", "throughput", "verdicts", "files", "actions", "jobs")


def _finished_jobs(connection: Connection, cutoff: float, max_jobs: int) -> tuple[list[int], bool]:
    """Up to `max_jobs` finished jobs (whole chains) to remove, the longest quiet first; and
    whether more are left for the next call."""
    finished = tuple(p.value for p in FINISHED_PHASES)
    rows = list(connection.query(
        f"""SELECT job_id, chain, phase IN ({sql.marks(finished)}) AS finished,
                   max(coalesce(last_seen, 0),
                       coalesce((SELECT max(at) FROM events e WHERE e.job_id = j.job_id), 0)) AS active,
                   EXISTS (SELECT 1 FROM actions a WHERE a.job_id = j.job_id
                           AND a.status IN ({sql.marks(OPEN_STATUSES)})) AS open
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
    return taken, sum(map(len, groups.values())) > len(taken)


def prune(connection: Connection, notes: Notes, throughput: Throughput, now: float, keep_seconds: float,
          max_jobs: int) -> Pruned:  # fmt: skip
    """Remove up to `max_jobs` finished jobs past the retention, with all their rows, in one
    transaction (what goes and what stays: Store.prune); `notes` and `throughput` forget them."""
    cutoff = now - keep_seconds
    taken, more = _finished_jobs(connection, cutoff, max_jobs)
    counts: dict[str, int] = {}
    with connection.writing():
        for table in _JOB_TABLES:
            counts[table] = connection.run(f"DELETE FROM {table} WHERE job_id IN ({sql.marks(taken)})",
                                           taken).rowcount  # fmt: skip
        counts["actions"] += connection.run(
            f"DELETE FROM actions WHERE status NOT IN ({sql.marks(OPEN_STATUSES)}) AND updated_at < ? "
            "AND job_id NOT IN (SELECT job_id FROM jobs)",
            [*OPEN_STATUSES, cutoff],
        ).rowcount  # fmt: skip
        counts["unmanaged"] = connection.run("DELETE FROM unmanaged WHERE first_seen < ?", [cutoff]).rowcount
    notes.forget(taken)
    throughput.forget(taken)
    return Pruned(**counts, more=more)
