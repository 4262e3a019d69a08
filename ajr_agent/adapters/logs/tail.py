"""Follow log files and read their new complete lines, safely and with bounded memory.

:class:`LogTailer` reads files incrementally from saved offsets with bounded memory per
file, per line and per call, and survives truncation, replacement, vanishing files and
partial lines. Stat polling is the ground truth, because inotify does not see writes made
by other NFS/Lustre/GPFS clients (and NFS attribute caching can hide growth for up to
``actimeo`` seconds).

Users are not trusted: a log path could be swapped for a symlink or a FIFO at any time, so
symlinks are never followed and only regular files are ever read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ajr_agent.adapters.logs.schedule import LookSchedule

# O_NONBLOCK: opening a FIFO a user put in place of their log must not hang the
# agent. O_NOFOLLOW: a symlink swapped in after the stat must not be followed.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class FilePosition:
    """Where reading of a file stopped; persisted so that a restart resumes instead of re-reading."""

    path: str
    inode: int
    device: int
    offset: int  # byte offset just after the last complete line consumed


@dataclass(frozen=True)
class LogLine:
    """One complete line read from a log file.

    ``text`` is decoded as UTF-8 with invalid bytes replaced, without the line
    ending. ``end_offset`` is the byte offset just after the line's newline; for a
    ``truncated`` line (longer than ``max_line_bytes``, cut to that length) whose
    newline has not been read yet, it is the offset where reading stopped.
    ``start_offset`` is where the line begins: reading again from there (see
    :meth:`LogTailer.rewind`) returns this line again.
    """

    path: str
    text: str
    end_offset: int
    truncated: bool
    start_offset: int


class TailNoticeKind(StrEnum):
    """What happened to a followed file (a StrEnum: its text is the value, in notes and comparisons)."""

    TRUNCATED = "truncated"  # shorter than the read offset: read again from the start
    REPLACED = "replaced"  # another file (inode) at the path: read from its start
    VANISHED = "vanished"  # nothing at the path; whatever appears there later is read from 0
    UNREADABLE = "unreadable"  # cannot be stat-ed, opened or read, or not the job user's regular file


@dataclass(frozen=True)
class TailNotice:
    """Something that happened to a followed file that an operator should see."""

    path: str
    kind: TailNoticeKind
    detail: str


@dataclass
class TailResult:
    """What one read produced: new complete lines and notices, in order of occurrence."""

    lines: list[LogLine] = field(default_factory=list)
    notices: list[TailNotice] = field(default_factory=list)


@dataclass
class _FollowedFile:
    """The reading state of one followed path."""

    key: Hashable
    # The uid that must own whatever is read at the path (None: anyone); checked on the
    # file actually opened, at every open, since the path can be renamed over at any time.
    owner_uid: int | None
    # None until the file is first seen, and again after it vanished: whatever
    # appears at the path next is a new file, read from 0.
    inode: int | None
    device: int | None
    offset: int
    # Inside an overlong line whose first max_line_bytes were already returned:
    # the rest is discarded up to the next newline.
    skipping: bool = False
    # File size when the last read reached the end of the file; equal size and
    # identity at the next stat mean nothing new (-1: unknown, read again).
    seen_size: int = -1
    # The kind of the problem notice already given; repeated failures of the same
    # kind stay quiet until the file is read successfully again.
    problem: TailNoticeKind | None = None

    def forget_file(self) -> None:
        """The file read so far is no longer at the path: the next one there is read from 0."""
        self.inode = self.device = None
        self.offset = 0
        self.skipping = False
        self.seen_size = -1


class LogTailer:
    """Follows log files and returns their new complete lines, with bounded memory.

    Nothing is kept open between reads and nothing but offsets is kept between
    reads: a partial last line is read again once its newline has arrived. A line
    longer than ``max_line_bytes`` is returned cut to that length (``truncated``)
    and the rest of it is skipped. One read of one file consumes at most
    ``max_read_bytes``; the rest comes with the next read.
    """

    def __init__(self, max_line_bytes: int = 65536, max_read_bytes: int = 4 * 1024 * 1024,
                 quiet_after: float = float("inf"), quiet_interval: float = 0.0) -> None:  # fmt: skip
        """Create a tailer.

        ``max_read_bytes`` must exceed ``max_line_bytes``, so that a whole line and
        its newline always fit in one read. A file unchanged for ``quiet_after``
        seconds is looked at by :meth:`read_all` at most every ``quiet_interval``
        seconds until it changes again (by default every file at every call).
        """
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
        if max_read_bytes <= max_line_bytes:
            raise ValueError(
                f"max_read_bytes ({max_read_bytes}) must be larger than max_line_bytes ({max_line_bytes})"
            )
        self._max_line_bytes = max_line_bytes
        self._max_read_bytes = max_read_bytes
        self._files: dict[str, _FollowedFile] = {}
        self._schedule = LookSchedule(quiet_after, quiet_interval)

    def follow(self, path: str | Path, key: Hashable, position: FilePosition | None = None,
               owner_uid: int | None = None) -> None:  # fmt: skip
        """Start following ``path`` for ``key`` (a job id); a no-op if ``path`` is already followed.

        With ``owner_uid``, only a file that user owns is ever read at the path: the
        owner of the file actually opened is checked at every open, so a file of
        someone else's renamed over the path later is refused, not read.

        With a saved ``position``, reading resumes at its offset if the file is
        still the same one (same inode and device) and not shorter than the offset;
        otherwise the next read gives a "replaced" or "truncated" notice and reads
        from the start. Without a position, the file is read from the start.
        """
        name = str(path)
        if name in self._files:
            return
        if position is not None and position.path != name:
            raise ValueError(f"position of {position.path!r} given to follow {name!r}")
        if position is None or position.offset == 0:
            # Nothing consumed yet: whatever the file is now, it is read from 0.
            self._files[name] = _FollowedFile(key=key, owner_uid=owner_uid, inode=None, device=None, offset=0)
        else:
            self._files[name] = _FollowedFile(
                key=key, owner_uid=owner_uid, inode=position.inode, device=position.device, offset=position.offset
            )
        self._schedule.add(name)

    def rewind(self, path: str | Path, position: FilePosition | None) -> None:
        """Go back to ``position`` of a followed ``path`` (None: its start), as :meth:`follow`
        would resume there; the lines after it are read again."""
        name = str(path)
        state = self._files.pop(name)
        self._schedule.remove(name)
        self.follow(name, state.key, position, state.owner_uid)

    def unfollow(self, path: str | Path) -> None:
        """Stop following ``path``; a no-op if it is not followed."""
        self._files.pop(str(path), None)
        self._schedule.remove(str(path))

    def unfollow_key(self, key: Hashable) -> None:
        """Stop following every file of ``key``."""
        for name in [name for name, state in self._files.items() if state.key == key]:
            del self._files[name]
            self._schedule.remove(name)

    def followed(self) -> list[str]:
        """Return the followed paths, in the order they were followed."""
        return list(self._files)

    def position(self, path: str | Path) -> FilePosition:
        """Return the position to persist for a followed ``path``.

        Inode and device are 0 while no file has been seen at the path.
        """
        name = str(path)
        state = self._files[name]
        return FilePosition(path=name, inode=state.inode or 0, device=state.device or 0, offset=state.offset)

    def read_all(self, paths: Iterable[str] | None = None, now: float = 0.0) -> dict[Hashable, TailResult]:
        """Read the followed files due at ``now`` (a monotonic time), or those of ``paths`` that are
        followed, due or not; results are grouped by key, only keys with lines or notices appear.

        A file is due at every call while it changes; once a look finds it unchanged for
        ``quiet_after`` seconds, every ``quiet_interval`` seconds until one finds it changed
        (see :class:`LookSchedule`). A call costs a stat per file looked at, and nothing
        for the quiet files not due: at 10,000 followed files, most of them quiet, the pass
        no longer walks them all four times a second.
        """
        results: dict[Hashable, TailResult] = {}
        names = self._schedule.due(now) if paths is None else [p for p in paths if p in self._files]
        files, looked = self._files, self._schedule.looked
        for name in names:
            state = files[name]
            seen = (state.inode, state.seen_size, state.offset)
            result = self._read(name, state)
            if result is None:
                looked(name, now, False)
                continue
            looked(name, now, bool(result.lines or result.notices)
                   or seen != (state.inode, state.seen_size, state.offset))  # fmt: skip
            if result.lines or result.notices:
                grouped = results.setdefault(state.key, TailResult())
                grouped.lines.extend(result.lines)
                grouped.notices.extend(result.notices)
        return results

    def read(self, path: str | Path) -> TailResult:
        """Read the new complete lines of a followed ``path`` (KeyError if it is not followed)."""
        name = str(path)
        result = self._read(name, self._files[name])
        return TailResult() if result is None else result

    def _read(self, name: str, state: _FollowedFile) -> TailResult | None:
        """Read a followed file; None when its size and identity say nothing changed."""
        try:
            info = os.stat(name, follow_symlinks=False)
        except OSError as error:
            return self._stat_failed(name, state, error)
        # The hot path, taken by almost every look at almost every file: one stat, no open,
        # nothing allocated.
        if info.st_size == state.seen_size and info.st_ino == state.inode and info.st_dev == state.device:
            return None
        result = TailResult()
        if not stat.S_ISREG(info.st_mode):
            mode = stat.filemode(info.st_mode)
            self._unreadable(name, state, result, f"not a regular file (mode {mode})")
            return result
        try:
            fd = os.open(name, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            self._vanished(name, state, result)
            return result
        except OSError as error:
            self._unreadable(name, state, result, f"cannot open: {error.strerror}")
            return result
        try:
            # Judge the file actually opened: the path may have changed since the stat.
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                self._unreadable(name, state, result, "not a regular file")
                return result
            if state.owner_uid is not None and opened.st_uid != state.owner_uid:
                self._unreadable(name, state, result, f"owned by uid {opened.st_uid}, not by the job's user "
                                                      f"(uid {state.owner_uid}): not read")  # fmt: skip
                # The followed file no longer lies at the path: whatever the job's user puts
                # there next is a new file, read from its start (as after a vanished file).
                state.forget_file()
                return result
            self._check_identity(name, state, opened, result)
            self._read_lines(fd, name, state, opened.st_size, result)
        except OSError as error:
            self._unreadable(name, state, result, f"cannot read: {error.strerror}")
        finally:
            os.close(fd)
        return result

    def _check_identity(
        self, name: str, state: _FollowedFile, info: os.stat_result, result: TailResult
    ) -> None:
        """Adopt the file's identity; restart from 0, with a notice, when it was replaced or truncated.

        A file deleted and recreated between two reads may get the same inode
        back; it then counts as truncated if it is shorter than the offset, and is
        indistinguishable from the old file otherwise.
        """
        if state.inode is None:
            # First sight of a file at this path (or since it vanished): the offset is already 0.
            pass
        elif (info.st_ino, info.st_dev) != (state.inode, state.device):
            result.notices.append(
                TailNotice(
                    name,
                    TailNoticeKind.REPLACED,
                    f"a new file (inode {info.st_ino}) replaced inode {state.inode};"
                    " reading it from the start",
                )
            )
        elif info.st_size < state.offset:
            result.notices.append(
                TailNotice(
                    name,
                    TailNoticeKind.TRUNCATED,
                    f"size {info.st_size} is below the read offset {state.offset};"
                    " reading again from the start",
                )
            )
        else:
            return
        state.inode, state.device = info.st_ino, info.st_dev
        state.offset = 0
        state.skipping = False

    def _read_lines(
        self, fd: int, name: str, state: _FollowedFile, size: int, result: TailResult
    ) -> None:
        """Read at most max_read_bytes from the offset and turn the complete lines into LogLines."""
        base = state.offset
        data = os.pread(fd, min(self._max_read_bytes, size - base), base)
        limit = self._max_line_bytes
        pos = 0
        if state.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                pos = len(data)
            else:
                pos = newline + 1
                state.skipping = False
        while pos < len(data):
            newline = data.find(b"\n", pos)
            if newline < 0:
                if len(data) - pos <= limit:
                    # A partial line: left unread until its newline arrives.
                    break
                # An overlong line without its newline yet: return its head now and
                # drop the rest as it comes, rather than holding or re-reading it.
                head = data[pos : pos + limit]
                result.lines.append(LogLine(name, _decode(head), base + len(data), True, base + pos))
                pos = len(data)
                state.skipping = True
                break
            raw = data[pos:newline]
            if len(raw) > limit:
                result.lines.append(LogLine(name, _decode(raw[:limit]), base + newline + 1, True, base + pos))
            else:
                text = _decode(raw.removesuffix(b"\r"))
                result.lines.append(LogLine(name, text, base + newline + 1, False, base + pos))
            pos = newline + 1
        state.offset = base + pos
        # Only when the end of the file was reached may an unchanged size mean "nothing new".
        state.seen_size = size if base + len(data) >= size else -1
        state.problem = None

    def _stat_failed(self, name: str, state: _FollowedFile, error: OSError) -> TailResult:
        """The notice (if any) of a file that could not be stat-ed: vanished, or unreadable."""
        result = TailResult()
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            self._vanished(name, state, result)
        else:
            self._unreadable(name, state, result, f"cannot stat: {error.strerror}")
        return result

    def _vanished(self, name: str, state: _FollowedFile, result: TailResult) -> None:
        """Note a missing file once; whatever appears at the path later is read from 0."""
        if state.problem is not TailNoticeKind.VANISHED:
            detail = "the file no longer exists; its path is still followed"
            result.notices.append(TailNotice(name, TailNoticeKind.VANISHED, detail))
        state.problem = TailNoticeKind.VANISHED
        state.forget_file()

    def _unreadable(self, name: str, state: _FollowedFile, result: TailResult, detail: str) -> None:
        """Note a file that cannot be read, once per streak of failures; the position is kept."""
        if state.problem is not TailNoticeKind.UNREADABLE:
            result.notices.append(TailNotice(name, TailNoticeKind.UNREADABLE, detail))
        state.problem = TailNoticeKind.UNREADABLE
        state.seen_size = -1


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
