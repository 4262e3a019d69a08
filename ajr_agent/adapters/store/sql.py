"""Pieces of the SQL the store's statements are made of."""

from __future__ import annotations

import functools
from typing import Iterable, Sequence


def marks(values: Sequence[object]) -> str:
    """One `?` per value, comma-separated, for an IN (...) or a VALUES (...)."""
    return ",".join("?" * len(values))


def quoted(columns: Iterable[str]) -> str:
    """Column names quoted for SQL ("limit" is a keyword), comma-separated."""
    return ", ".join(f'"{c}"' for c in columns)


@functools.cache
def upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    """One INSERT of `columns` that updates the row already there under `key` instead.

    One statement, where sqlite-utils' Table.upsert reads the schema first: save_job runs at
    every decision and every refresh of a job, save_files at every read that brought lines.
    """
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key)
    return (f"INSERT INTO {table} ({quoted(columns)}) VALUES ({marks(columns)}) "
            f"ON CONFLICT ({quoted(key)}) DO UPDATE SET {updates}")  # fmt: skip


def where_equal(**values: object) -> tuple[str, list[object]]:
    """A WHERE clause that each column given a value other than None must equal, and its
    arguments; ("", []) when no value is given, which matches every row."""
    given = {column: value for column, value in values.items() if value is not None}
    if not given:
        return "", []
    return "WHERE " + " AND ".join(f'"{c}" = ?' for c in given), list(given.values())
