"""Find a job's log files in the directories where its logs may lie.

Users are not trusted: symlinks and anything that is not a regular file are skipped, and
so are files of another user, so that nobody can feed lines into someone else's job.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ajr_agent.adapters.logs.naming import is_job_log_name, log_prefix

log = logging.getLogger(__name__)


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
    prefix = log_prefix(job_name, job_id)
    seen_dirs: set[str] = set()
    found: list[Path] = []
    for directory in dirs:
        # realpath, unlike Path.resolve, does not raise on a symlink loop.
        resolved = os.path.realpath(directory)
        if resolved in seen_dirs:
            continue
        seen_dirs.add(resolved)
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    # The prefix test is cheap and rejects most entries of a busy directory.
                    if not entry.name.startswith(prefix) or not is_job_log_name(
                        entry.name, job_name, job_id
                    ):
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
    return sorted(found, key=lambda path: (path.name, str(path)))

