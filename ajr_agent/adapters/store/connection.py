"""One open SQLite connection of the store: its write transactions, the statements run on it,
and its errors told as StoreErrors.

sqlite-utils wraps the connection: its autocommit mode, busy timeout, row factory and
read-only opening, and the transactions, stay the store's, and the wrapper sets no PRAGMA
and runs no plugin on it. It reads the schema (table_names, columns) and runs the reads'
SELECTs (query, count_where), rows as dicts; a missing table is an error there, where
rows_where would read it as empty. sqlite-utils 4's query wraps each SELECT in a savepoint,
which inside the store's transactions only nests; it writes nothing, so a read-only store
stays read-only. The writes stay on sqlite3, each statement through Connection.run: that is
where a full disk gives the reserve back and the statement runs again, which sqlite-utils'
write methods, in savepoints of their own, would bypass.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from sqlite_utils import Database

from ajr_agent.adapters.store.errors import (
    RolledBack,
    StoreCorruptError,
    StoreError,
    is_full,
    rolled_back_error,
    store_error,
)
from ajr_agent.adapters.store.reserve import Reserve

# How long a write waits for another process's write lock. The agent's: the CLI's and the
# cockpit's own writes (an operator's request) take milliseconds, so this is a wide margin for
# them; only a stray lock holder (an sqlite3 shell with an open transaction, a second agent)
# waits it out, and then a write of the agent's single loop costs at most this much instead of
# 5 s: detection stays within its 1 s target even when one write per pass waits in full.
AGENT_BUSY_TIMEOUT_MS = 200
# Everyone else's (the CLI, the cockpit's threads): a person waits, and the agent's largest
# writes (a backlog's readings in one transaction) may hold the lock for a second.
DEFAULT_BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")


def wrapped(conn: sqlite3.Connection) -> Database:
    """sqlite-utils over `conn`, issuing nothing of its own: no recursive_triggers PRAGMA (it would
    be the only setting the store did not choose) and no plugins' prepare_connection hooks."""
    return Database(conn, recursive_triggers=False, execute_plugins=False)


class Connection:
    """The store's connection to the database at `path`; `reserve` is given back when the disk fills."""

    def __init__(self, path: Path, *, readonly: bool, busy_timeout_ms: int, reserve: Reserve) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.reserve = reserve
        # Called when a write transaction rolls back: what was counted in memory may not have landed.
        self.on_rollback: list[Callable[[], None]] = []
        self._depth = 0  # nesting of write transactions
        self._calls = 0  # nesting of guarded() operations
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the state database: {exc}") from exc
        self.conn.row_factory = sqlite3.Row
        self.db = wrapped(self.conn)

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self.conn.close()

    def guarded(self, operation: Callable[[], T]) -> T:
        """Run one of the store's operations; sqlite3's and the OS's errors come out as StoreErrors.

        A write the full disk rolled back right after the reserve was given back is run once
        more, in the room the reserve left, when nothing else is under way: not inside the
        caller's transaction(), whose body only the caller can run again.
        """
        in_transaction = bool(self._depth)
        self._calls += 1
        try:
            try:
                return operation()
            except RolledBack:
                if self._calls > 1 or in_transaction:
                    raise
                return operation()
        except RolledBack as lost:
            if self._calls > 1:
                raise  # the outermost operation decides
            raise rolled_back_error(self.path, lost) from lost.error
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from exc
        finally:
            self._calls -= 1

    def check_integrity(self) -> None:
        """Raise StoreCorruptError unless PRAGMA quick_check finds the file sound."""
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreCorruptError(self.path, "; ".join(problems))

    def query(self, sql: str, args: Sequence[object] = ()) -> Iterator[dict[str, Any]]:
        """The rows of one SELECT, as dicts (through sqlite-utils: a missing table is an error)."""
        return self.db.query(sql, args)

    def run(self, sql: str, args: Sequence[object] = (), many: bool = False) -> sqlite3.Cursor:
        """Run one statement (`many`: once per row of `args`); on a full disk, give the reserve back
        and run it again."""
        call = self.conn.executemany if many else self.conn.execute
        try:
            return call(sql, args)  # type: ignore[operator]
        except sqlite3.Error as exc:
            if not (is_full(exc, self.path.parent) and self.reserve.give_back("full")):
                raise
            if self._depth and not self.conn.in_transaction:
                raise RolledBack(exc) from exc
            return call(sql, args)  # type: ignore[operator]

    def write(self, sql: str, args: Sequence[object] = (), many: bool = False) -> sqlite3.Cursor:
        """Run one writing statement in a transaction of its own (or the caller's, if one is open)."""
        with self.writing():
            return self.run(sql, args, many)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One write transaction, taken with the write lock at once; nested ones join the outer."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.reserve.before_write()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        self._depth = 1
        try:
            yield
            self._commit()
            if self.reserve.low_space:
                self._checkpoint()
        except BaseException:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            for forget in self.on_rollback:
                forget()
            raise
        finally:
            self._depth = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them land, or none."""
        try:
            with self.writing():
                yield
        except RolledBack as lost:
            raise rolled_back_error(self.path, lost) from lost.error

    def _commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if not (is_full(exc, self.path.parent) and self.reserve.give_back("full")):
                raise self._error(exc) from exc
            if not self.conn.in_transaction:
                raise RolledBack(exc) from exc
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as again:
                raise self._error(again) from again

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it: on a full disk, the space a growing WAL
        holds (up to 4 MiB by SQLite's default) is what lets the journal go on for long."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _error(self, exc: BaseException) -> StoreError:
        return store_error(exc, self.path, self.busy_timeout_ms)
