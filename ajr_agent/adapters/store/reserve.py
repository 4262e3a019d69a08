"""The disk reserve: space the agent sets aside beside its database and gives back when the
disk fills, so that the action journal and the decisions can still be written.

While the reserve is spent (`low_space`), throughput readings and bulk log notes are not
stored; writes look every SPACE_CHECK_SECONDS whether there is room for the reserve again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from ajr_agent.adapters.store.siblings import reserve_path

log = logging.getLogger("ajr.store")

# Room for about 18,000 journal entries, each with its decision note (281 per 256 KiB,
# measured on a full tmpfs, the WAL checkpointed after each write while the reserve is spent).
DEFAULT_RESERVE_BYTES = 16 * 1024 * 1024
# While the reserve is spent, a write looks whether there is room for it again this often.
SPACE_CHECK_SECONDS = 30.0


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on the file system of `directory`."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def size_text(count: float) -> str:
    """A size in bytes as a person reads it: `512 bytes`, `1.5 MiB`."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def give_back(reserve: Path, database: Path, how: str) -> bool:
    """Delete a database's reserve file, loudly; False if there was none."""
    try:
        size = reserve.stat().st_size
        reserve.unlink()
    except FileNotFoundError:
        return False
    log.critical("disk %s at %s: the reserve %s (%s) is given back so that the action journal and the decisions "
                 "can still be written; free space on that file system. Until there is room again for the reserve, "
                 "throughput readings and log notes are not stored", how, database.parent, reserve,
                 size_text(size))  # fmt: skip
    return True


class Reserve:
    """The reserve file of one database, `size` bytes (0: none is set aside, but one found is
    still given back when the disk fills), and what was left out while it was spent."""

    def __init__(self, database: Path, size: int) -> None:
        self.database = database
        self.path = reserve_path(database)
        self.size = size
        self.low_space = False
        self.readings_left_out = 0
        self.notes_left_out = 0
        self._checked = 0.0

    def before_write(self) -> None:
        """Give the reserve back when the disk is nearly full; set it aside again when space is back."""
        if not self.size:
            return
        if self.low_space:
            if time.monotonic() - self._checked >= SPACE_CHECK_SECONDS:
                self.check()
            return
        # Before the write rather than after it fails: SQLite rolls a transaction back when its
        # COMMIT finds the disk full, and the caller's transaction() cannot be run again from here.
        # A statvfs costs a microsecond (SQLite's WAL needs a local file system anyway).
        with contextlib.suppress(OSError):
            if free_bytes(self.database.parent) < self.size // 4:
                self.give_back("nearly full")

    def give_back(self, how: str) -> bool:
        """Delete the reserve file, if there is one, so that SQLite can write; False if there was none."""
        if not give_back(self.path, self.database, how):
            return False
        self.low_space = True
        self._checked = time.monotonic()
        return True

    def set_aside(self, at_start: bool = False) -> bool:
        """Make the reserve file when there is room for it twice over; whether it is in place."""
        if self.path.exists() and self.path.stat().st_size == self.size:
            self.low_space = False
            return True
        free = free_bytes(self.database.parent) + (self.path.stat().st_size if self.path.exists() else 0)
        # Twice over, or the reserve would leave too little room and be given back at once.
        failure: OSError | None = None
        if free >= 2 * self.size:
            failure = self._write()
            if failure is None:
                self.low_space = False
                return True
        self.low_space = True
        if at_start:
            log.error("cannot set aside the %s reserve %s: %s free on the file system of %s%s; free space there. "
                      "Until then throughput readings and log notes are not stored", size_text(self.size),
                      self.path, size_text(free), self.database.parent,
                      f" ({failure})" if failure else "")  # fmt: skip
        return False

    def _write(self) -> OSError | None:
        partial = self.path.with_name(self.path.name + ".new")
        # Random bytes: a compressing or deduplicating file system cannot store them in less.
        chunk = os.urandom(min(self.size, 1024 * 1024))
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                written = 0
                while written < self.size:
                    written += os.write(fd, chunk[: self.size - written])
                os.fsync(fd)
            finally:
                os.close(fd)
            partial.replace(self.path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            return exc
        return None

    def check(self) -> bool:
        """Set the reserve aside again if it was given back and space is back; whether it is in place."""
        if not self.size:
            return False
        if not self.low_space:
            return True
        self._checked = time.monotonic()
        if not self.set_aside():
            return False
        readings, notes = self.readings_left_out, self.notes_left_out
        self.readings_left_out = self.notes_left_out = 0
        log.warning("space is back at %s: the %s reserve %s is set aside again, and everything is stored again "
                    "(%d throughput readings and %d log notes were left out meanwhile)", self.database.parent,
                    size_text(self.size), self.path, readings, notes)  # fmt: skip
        return True
