"""When the tailer looks at each followed file next, so that a pass costs what changes, not
how many files are followed.

A file that changed within ``quiet_after`` seconds is *active*: every pass looks at it. A
file unchanged for longer is *quiet*: it waits in a queue until it is due, ``quiet_interval``
seconds after its last look, and a pass takes only the quiet files that are due. So a pass
over 10,000 followed files of which 20 are being written touches those 20 and the few
hundred quiet ones due, instead of walking all 10,000.

Every quiet file waits the same interval, so with a monotonic clock the queue is in due
order as it is filled: a deque is enough, no heap. (Were ``now`` to go backwards, a file
would wait behind one due later, never longer than the clock went back.)
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass


@dataclass
class _Entry:
    """The schedule of one followed file."""

    order: int  # when it was added: a pass looks at files in the order they were followed
    changed_at: float  # when a look last found it changed (-inf: never yet)
    # When the quiet file is due (its place in the queue); None while it is active. Queue
    # entries whose time and order are not this file's are stale and skipped.
    due: float | None = None


class LookSchedule:
    """Which followed files a pass looks at: the active ones, and the quiet ones that are due."""

    def __init__(self, quiet_after: float, quiet_interval: float) -> None:
        """A file unchanged for ``quiet_after`` seconds is looked at every ``quiet_interval``
        seconds until it changes again."""
        self._quiet_after = quiet_after
        self._quiet_interval = quiet_interval
        self._entries: dict[str, _Entry] = {}
        self._active: dict[str, int] = {}  # name -> its order
        self._quiet: deque[tuple[float, int, str]] = deque()  # (due, order, name), in due order
        self._counter = itertools.count()

    def add(self, name: str) -> None:
        """Schedule a newly followed file: active, so the next pass looks at it."""
        entry = self._entries[name] = _Entry(next(self._counter), float("-inf"))
        self._active[name] = entry.order

    def remove(self, name: str) -> None:
        """Stop scheduling ``name``; its queue entry, if any, is dropped when it comes up."""
        self._entries.pop(name, None)
        self._active.pop(name, None)

    def due(self, now: float) -> list[str]:
        """The files a pass at ``now`` looks at, in the order they were added.

        The quiet files that are due become active here, before they are looked at: a
        pass that fails half-way looks at them again next time, it never loses one.
        """
        queue, entries = self._quiet, self._entries
        while queue and queue[0][0] <= now:
            due, order, name = queue.popleft()
            entry = entries.get(name)
            if entry is not None and (entry.due, entry.order) == (due, order):
                entry.due = None
                self._active[name] = order
        return sorted(self._active, key=self._active.__getitem__)

    def looked(self, name: str, now: float, changed: bool) -> None:
        """Note a look at ``name`` at ``now`` that found it ``changed`` or not; a no-op for a
        file no longer scheduled."""
        entry = self._entries.get(name)
        if entry is None:
            return
        if changed:
            entry.changed_at = now
            if entry.due is not None:
                entry.due = None  # its queue entry is stale now
                self._active[name] = entry.order
        elif entry.due is None and now - entry.changed_at >= self._quiet_after:
            entry.due = now + self._quiet_interval
            del self._active[name]
            self._quiet.append((entry.due, entry.order, name))
