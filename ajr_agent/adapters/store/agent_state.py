"""What the agent keeps about its own work: how far it has read each followed log file (so a
restart resumes there), and facts about itself for `ajr status`."""

from __future__ import annotations

import json

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection
from ajr_agent.adapters.store.records import FollowedFile
from ajr_agent.adapters.store.rows import FILE_COLUMNS, file_from_row, file_values

_SAVE_FILE = sql.upsert("files", FILE_COLUMNS, ("path",))
_SET_META = sql.upsert("meta", ("key", "value"), ("key",))


def save_files(connection: Connection, files: list[FollowedFile]) -> None:
    """Insert or update the read positions of followed files."""
    # One statement for the lot, on plain executemany: this runs for each read that brought lines
    # (sqlite-utils' upsert_all: eleven statements a call, three quarters of the agent's CPU a line).
    connection.write(_SAVE_FILE, [file_values(f) for f in files], many=True)


def files(connection: Connection, job_id: int | None) -> list[FollowedFile]:
    """Followed files (of one job, or all), by path."""
    where, args = sql.where_equal(job_id=job_id)
    return [file_from_row(row) for row in connection.query(f"SELECT * FROM files {where} ORDER BY path", args)]


def forget_files(connection: Connection, job_id: int) -> None:
    """Drop the read positions of a job's files."""
    connection.write("DELETE FROM files WHERE job_id = ?", [job_id])


def set_meta(connection: Connection, values: dict[str, object]) -> None:
    """Record facts about the running agent, each value as JSON."""
    connection.write(_SET_META, [(key, json.dumps(value)) for key, value in values.items()], many=True)


def meta(connection: Connection) -> dict[str, object]:
    """The facts the agent recorded about itself (the schema version is the store's own)."""
    rows = connection.query("SELECT key, value FROM meta WHERE key != 'schema_version'")
    return {row["key"]: json.loads(row["value"]) for row in rows}
