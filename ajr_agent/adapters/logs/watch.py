"""Wake the agent early when a watched log directory changes.

Where the file system sends change events (inotify on local disks), a written log is read
at once instead of at the next stat pass. Polling stays the ground truth, because inotify
does not see writes made by other NFS/Lustre/GPFS clients.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from watchdog.events import (
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

log = logging.getLogger(__name__)


class _WakeHandler(FileSystemEventHandler):
    """Notes which files of a watched directory were written, created or moved, and wakes the waiter."""

    def __init__(self, changed: threading.Event) -> None:
        super().__init__()
        self._changed = changed
        self._lock = threading.Lock()
        self.paths: set[str] = set()

    def _note(self, *paths: str | bytes) -> None:
        with self._lock:
            self.paths.update(os.fsdecode(p) for p in paths if p)
        self._changed.set()

    def take(self) -> set[str]:
        """The paths noted since the last call."""
        with self._lock:
            paths, self.paths = self.paths, set()
        return paths

    def on_modified(self, event: FileSystemEvent) -> None:
        self._note(event.src_path)

    def on_created(self, event: FileSystemEvent) -> None:
        self._note(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._note(event.src_path, getattr(event, "dest_path", ""))


# Only these are asked of inotify: the tailer opens every file it reads, and its
# own opens must not wake the agent.
_WAKE_EVENTS: list[type[FileSystemEvent]] = [FileModifiedEvent, FileCreatedEvent, FileMovedEvent]


class ChangeWatcher:
    """Wakes the agent early when a watched directory changes.

    Polling stays the ground truth, because inotify does not see writes from other
    NFS/Lustre/GPFS clients.
    """

    def __init__(self) -> None:
        """Create a watcher and start its observer thread."""
        self._changed = threading.Event()
        self._handler = _WakeHandler(self._changed)
        self._observer = Observer()
        # Started before any directory is scheduled, so that a directory that cannot
        # be watched fails in its own schedule() call and leaves nothing behind.
        self._observer.start()
        self._watches: dict[str, ObservedWatch] = {}

    def watch(self, directory: str | Path) -> None:
        """Watch ``directory`` (not recursively); idempotent.

        A directory that does not exist or cannot be watched (inotify limits) is
        logged at debug level and ignored: polling still covers it.
        """
        resolved = os.path.realpath(directory)
        if resolved in self._watches:
            return
        if not os.path.isdir(resolved):
            log.debug("not watching %s: not a directory", directory)
            return
        try:
            watch = self._observer.schedule(
                self._handler, resolved, recursive=False, event_filter=_WAKE_EVENTS
            )
        except OSError as error:
            log.debug("not watching %s: %s", directory, error)
            return
        self._watches[resolved] = watch

    def unwatch(self, directory: str | Path) -> None:
        """Stop watching ``directory``; a no-op if it is not watched."""
        watch = self._watches.pop(os.path.realpath(directory), None)
        if watch is not None:
            self._observer.unschedule(watch)

    def wait(self, timeout: float) -> bool:
        """Block until a change or ``timeout`` seconds; return True if a change woke us, and clear it."""
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed

    def take_changed(self) -> set[str]:
        """The paths the file system reported written, created or moved since the last call."""
        return self._handler.take()

    def close(self) -> None:
        """Stop watching everything and stop the observer thread."""
        self._watches.clear()
        self._observer.stop()
        self._observer.join()
