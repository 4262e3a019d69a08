"""The store's exceptions, and sqlite3's and the OS's errors told as one of them: what is
wrong and what to do, in words an admin can act on."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from ajr_agent.adapters.store.reserve import free_bytes, size_text
from ajr_agent.domain.errors import AjrError

# sqlite3's primary result codes: the low byte of an error's sqlite_errorcode.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26


class StoreError(AjrError):
    """The state database cannot be opened, read or written."""


class StoreSchemaError(StoreError):
    """The database's tables are not a schema this AJR knows (a newer AJR's, or an unknown shape)."""


class StoreFullError(StoreError):
    """The file system of the state database is full."""


class StoreLockedError(StoreError):
    """Another process held the database's write lock for longer than the busy timeout."""


class StoreCorruptError(StoreError):
    """The state database file is damaged or is not an SQLite database; `detail` is SQLite's word on it."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"state database {path} is corrupt ({detail}): the agent moves it aside at its next start "
                         "and begins a new one (systemctl restart ajr-agent); `ajr doctor` then names the moved "
                         "file")  # fmt: skip
        self.detail = detail


class RolledBack(Exception):
    """A write the full disk rolled back just after the reserve was given back: worth one more try."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_full(exc: BaseException, directory: Path) -> bool:
    """The disk is full: SQLITE_FULL, ENOSPC, or an I/O error (making the -shm, say) with no space left."""
    if _code(exc) == _SQLITE_FULL or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return True
    try:
        return _code(exc) == _SQLITE_IOERR and free_bytes(directory) == 0
    except OSError:
        return False


def store_error(exc: BaseException, path: Path, busy_timeout_ms: int) -> StoreError:
    """The StoreError that says, in plain words, what `exc` (met on the database at `path`) means
    and what to do."""
    code = _code(exc)
    if is_full(exc, path.parent):
        return full_error(path, str(exc))
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreLockedError(
            f"state database {path} locked by another process for more than {busy_timeout_ms} ms: "
            "something else holds a write lock on it (an sqlite3 shell with an open transaction, a backup "
            f"tool, a second ajr-agent); `fuser -v {path}` names it. Nothing was written: try again once "
            "it has let go (the agent does, at its next pass)"
        )
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorruptError(path, str(exc))
    if code == _SQLITE_READONLY:
        return StoreError(f"state database {path} cannot be written by this process ({exc}): check the "
                          "permissions of the file and its directory, and the service's "
                          "ReadWritePaths")  # fmt: skip
    return StoreError(f"state database {path}: {exc}")


def full_error(path: Path, detail: str) -> StoreFullError:
    """The disk of the database at `path` is full: how much is left, and what to do."""
    try:
        free = f"{size_text(free_bytes(path.parent))} left"
    except OSError:
        free = "free space unknown"
    return StoreFullError(f"disk full at {path}: {free} on its file system ({detail}); free space on that file "
                          f"system (`df -h {path.parent}`): until then nothing new is recorded")  # fmt: skip


def rolled_back_error(path: Path, lost: RolledBack) -> StoreFullError:
    """The write `lost` is gone for good: the disk of the database at `path` is full."""
    return full_error(path, f"{lost.error}; this write was rolled back, and the reserve given back so that the next "
                            "one has room")  # fmt: skip
