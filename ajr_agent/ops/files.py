"""Putting files and directories in place, idempotently: each only when missing or different.

A second run changes nothing and says so; what belongs to the admin is left as it is
and reported, never overwritten.
"""

from __future__ import annotations

import grp
import os
import pwd
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Callable

from ajr_agent.domain.errors import AjrError


class InstallError(AjrError):
    """The installation cannot go on; the message says what to fix first."""


class Status(StrEnum):
    """What the installer did to one path."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    KEPT = "kept"  # differs from what AJR ships, but belongs to the admin: left alone


@dataclass(frozen=True)
class Change:
    """One installed path and what happened to it."""

    path: Path
    status: Status
    detail: str = ""
    directory: bool = False


def in_root(prefix: Path, path: Path) -> Path:
    """Where the absolute `path` lies under the install prefix ("/" on a real host)."""
    if not path.is_absolute():
        raise InstallError(f"{path} is not an absolute path: a service has no working directory to resolve it "
                           "from; give the full path in the configuration")  # fmt: skip
    return prefix / path.relative_to("/")


def put_file(path: Path, content: str, mode: int, dry_run: bool,
             keep: Callable[[str], str | None] = lambda current: None) -> Change:  # fmt: skip
    """Create or update a file to `content` and `mode`.

    `keep` looks at an existing file that differs and says why it must stay as it is
    (the admin's configuration, a site's own job_submit.lua), or None to replace it.
    """
    if not path.exists():
        if not dry_run:
            _write(path, content, mode)
        return Change(path, Status.CREATED)
    try:
        current = path.read_text(errors="replace")
    except OSError as exc:
        raise InstallError(f"{path}: cannot be read ({exc.strerror}); fix or remove it, then run again") from exc
    current_mode = path.stat().st_mode & 0o7777
    if current == content and current_mode == mode:
        return Change(path, Status.UNCHANGED)
    reason = keep(current) if current != content else None
    if reason:
        return Change(path, Status.KEPT, reason)
    if not dry_run:
        if current == content:
            path.chmod(mode)
        else:
            _write(path, content, mode)
    return Change(path, Status.UPDATED, f"mode {mode:04o}" if current == content else "")


def put_dir(path: Path, uid: int, gid: int, mode: int, dry_run: bool, enforce: bool) -> Change:
    """Create a directory owned by uid:gid; with `enforce`, also fix an existing one's owner and mode.

    Parents are created as root with the usual 0755.
    """
    owner = f"owner {_user_name(uid)}:{_group_name(gid)}, mode {mode:04o}"
    if not path.exists():
        if not dry_run:
            path.mkdir(parents=True, exist_ok=True)
            _own(path, uid, gid, mode)
        return Change(path, Status.CREATED, owner, directory=True)
    if not path.is_dir():
        raise InstallError(f"{path} exists and is not a directory: move it away, then run again")
    stat = path.stat()
    if not enforce or (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (uid, gid, mode):
        return Change(path, Status.UNCHANGED, directory=True)
    if not dry_run:
        _own(path, uid, gid, mode)
    return Change(path, Status.UPDATED, owner, directory=True)


def _write(path: Path, content: str, mode: int) -> None:
    """Replace a file atomically: slurmctld may read job_submit.lua at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    try:
        os.chown(path, uid, gid)
    except PermissionError as exc:
        raise InstallError(f"cannot give {path} to {_user_name(uid)}: run `ajr install` as root") from exc
    path.chmod(mode)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
