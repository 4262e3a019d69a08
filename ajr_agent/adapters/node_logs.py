"""The nodes' own logs on shared storage (`node_log_dir`, e.g. /shared/syslog/{node}): their last lines.

Read off the decision loop, under a deadline checked between files: a file system that
hangs inside one read holds up only the verdict that asked, never the agent.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Sequence

from ajr_agent.domain.jobs import NodeLogLine

log = logging.getLogger(__name__)

# How much of each node log file is read, from its end: enough for minutes of kernel
# messages, bounded whatever the file's size.
TAIL_BYTES = 1024 * 1024


def read_node_logs(template: str, nodes: Sequence[str], deadline: float) -> tuple[list[NodeLogLine], bool]:
    """The last lines of every regular file in each node's log directory.

    `deadline` is a time.monotonic() value. Returns the lines and whether the deadline cut
    the reading short. A directory or file that cannot be read is skipped (logged at debug:
    most nodes of most clusters keep no such logs).
    """
    found: list[NodeLogLine] = []
    for node in nodes:
        directory = Path(template.format(node=node))
        try:
            # A FIFO or device planted in the directory is no log, and opening it could block.
            files = sorted(e.path for e in os.scandir(directory) if e.is_file(follow_symlinks=False))
        except OSError as exc:
            log.debug("node log directory %s unreadable: %s", directory, exc)
            continue
        for path in files:
            if time.monotonic() > deadline:
                return found, True
            found += [NodeLogLine(node, Path(path).name, line) for line in tail_lines(path)]
    return found, False


def tail_lines(path: str) -> list[str]:
    """The lines of the file's last TAIL_BYTES (the first one dropped when it is likely cut)."""
    try:
        # O_NONBLOCK: a file swapped for a FIFO between the listing and the open must not block.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("node log %s unreadable: %s", path, exc)
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, max(0, size - TAIL_BYTES), os.SEEK_SET)
        data = os.read(fd, TAIL_BYTES)
    except OSError as exc:
        log.debug("node log %s unreadable: %s", path, exc)
        return []
    finally:
        os.close(fd)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > TAIL_BYTES else lines
