"""Find a job's log files in the directories where its logs may lie.

Users are not trusted: symlinks and anything that is not a regular file are skipped, and
so are files of another user, so that nobody can feed lines into someone else's job.

:class:`LogFinder` remembers what it found: a directory whose mtime has not moved since
it was listed holds the same names, so it is not listed again. Eight jobs sharing a log
directory of 10,000 files each looked through all of it every ``log_scan_interval``, a
third of the idle agent's time; now a look costs a stat of the directory until a file is
created, renamed or removed there.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ajr_agent.adapters.logs.naming import is_job_log_name, log_prefix

log = logging.getLogger(__name__)

# Seconds within which a directory's mtime may not move although a file was created in it:
# Lustre keeps whole seconds, and a file created in the same second as the listing leaves
# the mtime as it was. A directory changed that recently is listed at every look.
COARSE_CLOCK = 2.0
# Even an unchanged directory is listed again this often: a file can become a job's log
# without its directory's mtime moving (a chown to the job's user, a chmod).
RELIST_AFTER = 60.0


def find_job_logs(
    job_name: str, job_id: int, dirs: Iterable[Path], owner_uid: int | None
) -> list[Path]:
    """List the log files of a job found directly in ``dirs``, sorted by file name.

    Each directory is scanned once (directories are compared after resolving
    symlinks) and not recursively; missing or unreadable directories are skipped.
    Symlinks and anything that is not a regular file are skipped. When
    ``owner_uid`` is given, files owned by another user are skipped, so that a user
    cannot feed lines into another user's job.
    """
    return _merged([_scan(directory, job_name, job_id, owner_uid) for directory in _distinct(dirs)])


@dataclass(frozen=True)
class _Listing:
    """What one look at a directory found for one job."""

    identity: tuple[int, int, int]  # the directory's device, inode and mtime (ns) before it was listed
    listed_at: float  # monotonic
    found: tuple[Path, ...]


class LogFinder:
    """:func:`find_job_logs` that lists a directory again only once its mtime moved
    (or after ``relist_after`` seconds)."""

    def __init__(self, relist_after: float = RELIST_AFTER, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` is monotonic; tests pass their own."""
        self._relist_after = relist_after
        self._clock = clock
        self._listings: dict[tuple[str, str, int, int | None], _Listing] = {}
        self._next_sweep = clock() + relist_after

    def find(self, job_name: str, job_id: int, dirs: Iterable[Path], owner_uid: int | None) -> list[Path]:
        """What :func:`find_job_logs` finds, from memory where a directory has not changed."""
        now = self._clock()
        if now >= self._next_sweep:
            # The jobs gone (or whose directories changed) leave their listings behind: dropped
            # once they are too old to be used anyway.
            self._listings = {k: v for k, v in self._listings.items() if now - v.listed_at < self._relist_after}
            self._next_sweep = now + self._relist_after
        return _merged([self._look(directory, job_name, job_id, owner_uid, now) for directory in _distinct(dirs)])

    def _look(self, directory: Path, job_name: str, job_id: int, owner_uid: int | None, now: float) -> tuple[Path, ...]:
        key = (str(directory), job_name, job_id, owner_uid)
        try:
            # Before the listing: a file created during it moves the mtime past what is kept.
            info = os.stat(directory)
        except OSError:
            self._listings.pop(key, None)
            return ()
        identity = (info.st_dev, info.st_ino, info.st_mtime_ns)
        kept = self._listings.get(key)
        if kept is not None and kept.identity == identity and now - kept.listed_at < self._relist_after:
            return kept.found
        found = tuple(_scan(directory, job_name, job_id, owner_uid))
        if info.st_mtime_ns < (time.time() - COARSE_CLOCK) * 1e9:
            self._listings[key] = _Listing(identity, now, found)
        else:
            self._listings.pop(key, None)
        return found


def _distinct(dirs: Iterable[Path]) -> list[Path]:
    """The directories, each once: compared after resolving symlinks."""
    seen: set[str] = set()
    distinct: list[Path] = []
    for directory in dirs:
        # realpath, unlike Path.resolve, does not raise on a symlink loop.
        resolved = os.path.realpath(directory)
        if resolved not in seen:
            seen.add(resolved)
            distinct.append(directory)
    return distinct


def _in_order(found: Iterable[Path]) -> list[Path]:
    return sorted(found, key=lambda path: (path.name, str(path)))


def _merged(parts: list[Sequence[Path]]) -> list[Path]:
    """The files found in each directory (each in order), as one list in order."""
    found = [part for part in parts if part]
    if len(found) == 1:
        return list(found[0])  # the usual case, one directory holding the logs: already in order
    return _in_order(itertools.chain.from_iterable(found))


def _scan(directory: Path, job_name: str, job_id: int, owner_uid: int | None) -> list[Path]:
    """The job's log files directly in ``directory``, in order (none if it cannot be listed)."""
    prefix = log_prefix(job_name, job_id)
    found: list[Path] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                # The prefix test is cheap and rejects most entries of a busy directory.
                if not entry.name.startswith(prefix) or not is_job_log_name(entry.name, job_name, job_id):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                if owner_uid is not None and info.st_uid != owner_uid:
                    log.debug("skipping %s: owned by uid %d, not %d", entry.path, info.st_uid, owner_uid)
                    continue
                found.append(Path(entry.path))
    except OSError as error:
        log.debug("cannot scan %s for logs of job %d: %s", directory, job_id, error)
    return _in_order(found)
