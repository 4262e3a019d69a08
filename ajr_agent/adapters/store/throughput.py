"""Throughput readings of each attempt (e.g. TFLOP/s per GPU), thinned evenly past the cap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ajr_agent.adapters.store import sql
from ajr_agent.adapters.store.connection import Connection
from ajr_agent.adapters.store.limits import Limits
from ajr_agent.adapters.store.records import Reading


@dataclass
class _Series:
    """Where an attempt's stored throughput stands: rows in the table, one reading in `stride` kept."""

    stored: int
    stride: int = 1
    seen: int = 0


class Throughput:
    """The readings of all attempts. Where each series stands is kept in memory (the agent is
    the one writer of readings) and counted again from the table after a rollback."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._series: dict[tuple[int, int], _Series] = {}
        connection.on_rollback.append(self._series.clear)

    def add(self, limits: Limits, readings: list[Reading]) -> None:
        """Record readings in one transaction, each attempt within `limits` (how: Store.add_throughput)."""
        reserve = self._connection.reserve
        if reserve.low_space:
            reserve.readings_left_out += len(readings)
            return
        rows: list[tuple[int, int, float, float]] = []
        with self._connection.writing():
            for reading in readings:
                key = (reading.job_id, reading.attempt)
                series = self._series.get(key) or self._load(key)
                series.seen += 1
                if (series.seen - 1) % series.stride:
                    continue
                rows.append((reading.job_id, reading.attempt, reading.at, reading.value))
                series.stored += 1
                if series.stored > limits.max_readings_per_attempt:
                    self._insert(rows)
                    rows = []
                    self._thin(key, series)
            self._insert(rows)

    def _load(self, key: tuple[int, int]) -> _Series:
        count = self._connection.run("SELECT count(*) FROM throughput WHERE job_id = ? AND attempt = ?",
                                     key).fetchone()[0]  # fmt: skip
        # A restarted agent does not know the stride: it stores every reading until the next thinning.
        self._series[key] = _Series(stored=count)
        return self._series[key]

    def _insert(self, rows: list[tuple[int, int, float, float]]) -> None:
        # executemany: sqlite-utils' insert_all took ten times as long a row, and a backlog brings thousands.
        if rows:
            self._connection.run("INSERT INTO throughput (job_id, attempt, at, value) VALUES (?, ?, ?, ?)", rows,
                                 many=True)  # fmt: skip

    def _thin(self, key: tuple[int, int], series: _Series) -> None:
        deleted = self._connection.run(
            "DELETE FROM throughput WHERE rowid IN (SELECT rowid FROM (SELECT rowid, row_number() OVER "
            "(ORDER BY at, rowid) AS n FROM throughput WHERE job_id = ? AND attempt = ?) WHERE n % 2 = 0)",
            key,
        ).rowcount
        series.stored -= deleted
        series.stride *= 2

    def series(self, job_id: int, attempt: int | None) -> list[tuple[int, float, float]]:
        """(attempt, at, value) readings of a job (of one attempt, or all), oldest first."""
        where, args = sql.where_equal(job_id=job_id, attempt=attempt)
        rows = self._connection.query(f"SELECT attempt, at, value FROM throughput {where} ORDER BY at, rowid", args)
        return [(r["attempt"], r["at"], r["value"]) for r in rows]

    def forget(self, job_ids: Iterable[int]) -> None:
        """Drop where the series of jobs whose rows are gone stood."""
        gone = set(job_ids)
        for key in [k for k in self._series if k[0] in gone]:
            del self._series[key]
