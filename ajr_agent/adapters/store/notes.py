"""A job's story (the events table), kept within the job's caps, and the count of what the
caps dropped (dropped_notes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection
from ajr_agent.adapters.store.limits import BULK_NOTE_KINDS, Limits, excerpt
from ajr_agent.adapters.store.records import StoredEvent
from ajr_agent.domain.model import Note

_BULK_MARKS = sql.marks(tuple(BULK_NOTE_KINDS))


@dataclass
class _NoteCount:
    """A job's stored notes, all and bulk: counted once from the table, then kept up to date."""

    total: int
    bulk: int


class Notes:
    """The events of all jobs. The counts behind the caps are kept in memory (the agent is the
    one writer of notes) and counted again from the table after a rollback."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._counts: dict[int, _NoteCount] = {}
        connection.on_rollback.append(self._counts.clear)

    def add(self, limits: Limits, job_id: int, attempt: int | None, at: float, note: Note, path: str | None,
            line: str | None) -> None:  # fmt: skip
        """Append a line to a job's story, within `limits` (how: Store.add_note)."""
        # Plain statements through run(): this runs for every log line that makes a note.
        connection = self._connection
        bulk = note.kind in BULK_NOTE_KINDS
        if bulk and connection.reserve.low_space:
            connection.reserve.notes_left_out += 1
            return
        with connection.writing():
            count = self._counts.get(job_id) or self._count(job_id)
            if count.total >= limits.max_notes_per_job or (bulk and count.bulk >= limits.max_bulk_notes_per_job):
                if not count.bulk:
                    self._count_dropped(job_id, note.kind, at)
                    return
                oldest = connection.run(f"SELECT id, kind FROM events WHERE job_id = ? AND kind IN ({_BULK_MARKS}) "
                                        "ORDER BY at, id LIMIT 1", [job_id, *BULK_NOTE_KINDS]).fetchone()  # fmt: skip
                connection.run("DELETE FROM events WHERE id = ?", [oldest["id"]])
                self._count_dropped(job_id, oldest["kind"], at)
                count.total -= 1
                count.bulk -= 1
            connection.run("INSERT INTO events (job_id, attempt, at, kind, text, path, line) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [job_id, attempt, at, note.kind, excerpt(note.text), path,
                            None if line is None else excerpt(line)])  # fmt: skip
            count.total += 1
            count.bulk += bulk

    def _count(self, job_id: int) -> _NoteCount:
        counted = self._connection.run(f"SELECT count(*), count(CASE WHEN kind IN ({_BULK_MARKS}) THEN 1 END) "
                                       "FROM events WHERE job_id = ?", [*BULK_NOTE_KINDS, job_id])  # fmt: skip
        total, bulk = counted.fetchone()
        self._counts[job_id] = _NoteCount(total, bulk)
        return self._counts[job_id]

    def _count_dropped(self, job_id: int, kind: str, at: float) -> None:
        self._connection.run("INSERT INTO dropped_notes (job_id, kind, count, last_at) VALUES (?, ?, 1, ?) "
                             "ON CONFLICT (job_id, kind) DO UPDATE SET count = count + 1, "
                             "last_at = max(last_at, excluded.last_at)",
                             [job_id, kind, at])  # fmt: skip

    def events(self, job_id: int) -> list[StoredEvent]:
        """A job's story in time order."""
        rows = self._connection.query("SELECT job_id, attempt, at, kind, text, path, line FROM events "
                                      "WHERE job_id = ? ORDER BY at, id", [job_id])  # fmt: skip
        return [StoredEvent(**row) for row in rows]

    def dropped(self, job_id: int) -> dict[str, int]:
        """How many notes of each kind the job's caps dropped (or never stored)."""
        rows = self._connection.query("SELECT kind, count FROM dropped_notes WHERE job_id = ? ORDER BY kind",
                                      [job_id])  # fmt: skip
        return {row["kind"]: row["count"] for row in rows}

    def forget(self, job_ids: Iterable[int]) -> None:
        """Drop the counts of jobs whose rows are gone."""
        for job_id in job_ids:
            self._counts.pop(job_id, None)
