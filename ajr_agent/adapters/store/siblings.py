"""The files the store keeps beside a database, and their names: the disk reserve, the copy
made before a migration, and a corrupt database moved aside."""

from __future__ import annotations

import glob
import time
from pathlib import Path


def _stamp(at: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def reserve_path(database: Path) -> Path:
    """Where the agent sets disk space aside for `database` (see reserve.Reserve)."""
    return database.with_name(database.name + ".reserve")


def backup_path(database: Path, version: int, at: float) -> Path:
    """Where `database`, at schema `version`, is copied before it is migrated at time `at`."""
    return database.with_name(f"{database.name}.bak-v{version}-{_stamp(at)}")


def quarantine(path: Path, at: float) -> Path:
    """Move a corrupt database (and its -wal) aside under a name that says when; the stale -shm goes."""
    moved = path.with_name(f"{path.name}.corrupt-{_stamp(at)}")
    while moved.exists():
        moved = moved.with_name(moved.name + "-again")
    path.rename(moved)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        wal.rename(moved.with_name(moved.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    return moved


def quarantined_files(path: Path) -> list[Path]:
    """The corrupt databases open_for_agent moved aside from `path`, oldest first."""
    pattern = f"{glob.escape(path.name)}.corrupt-*"
    return sorted(p for p in path.parent.glob(pattern) if not p.name.endswith("-wal"))
