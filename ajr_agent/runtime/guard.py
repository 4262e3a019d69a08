"""Guarding the loop: one job's surprise, or a state database that cannot be written for a
while, must not stop the agent for every other job."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ajr_agent.adapters.store import StoreCorruptError, StoreError
from ajr_agent.domain.errors import AjrError
from ajr_agent.runtime.observers import Observer

log = logging.getLogger("ajr.agent")

# Seconds between two log lines about a state database that keeps failing: one line per
# failed write would bury everything else in the agent's log.
STORE_TROUBLE_LOG_EVERY = 60.0

# Exit codes of ajr-agent. A setting, rule file or database schema it cannot use stays
# wrong until an admin acts: systemd does not restart it (RestartPreventExitStatus).
# A database it can no longer use in place (corrupt, a disk full at start) is worth a
# restart: the next start moves a corrupt file aside, and a disk may get room.
EXIT_NEEDS_ADMIN = 2
EXIT_RESTART = 75  # EX_TEMPFAIL


class Guard:
    """Runs the loop's steps, logs what they fail with, and keeps track of a failing store."""

    def __init__(self, observer: Observer, on_corrupt: Callable[[], None]) -> None:
        self.observer = observer
        self.on_corrupt = on_corrupt  # stops the loop: a corrupt database fails every write from then on
        self.store_trouble: StoreError | None = None  # the last write that failed, until one succeeds
        self.store_trouble_logged = 0.0
        self.store_failures = 0  # failed writes since the trouble was last logged
        self.exit_code = 0

    def run(self, job_id: int, handler: Callable[..., object], *args: object, **kwargs: object) -> Exception | None:
        """Run ``handler``; the error it failed with (logged), or None (job 0: no job in particular)."""
        try:
            handler(*args, **kwargs)
        except StoreError as exc:
            self._store_failed(exc)
            return exc
        except AjrError as exc:
            log.error("job %s: %s", job_id, exc)
            return exc
        except Exception as exc:
            log.exception("job %s: unexpected error; the agent goes on with the other jobs", job_id)
            return exc
        return None

    def store_written(self) -> None:
        """A write succeeded: say so once if writes had been failing."""
        if self.store_trouble is None:
            return
        log.warning("state database can be written again after %d failed writes; the decisions that waited are "
                    "taken now", self.store_failures)  # fmt: skip
        self.store_trouble, self.store_failures = None, 0

    def _store_failed(self, exc: StoreError) -> None:
        """Say in the log that the state database fails, once a minute while it does."""
        self.observer.store_error(exc)
        self.store_failures += 1
        if isinstance(exc, StoreCorruptError):
            # Going on would fail every write from now on; a restart moves the file aside.
            log.critical("%s; stopping so that systemd restarts the agent", exc)
            self.exit_code = EXIT_RESTART
            self.on_corrupt()
        elif self.store_trouble is None or time.monotonic() - self.store_trouble_logged >= STORE_TROUBLE_LOG_EVERY:
            log.error("state database: %s. No job is requeued or released while decisions cannot be saved; "
                      "they are taken again as soon as it can be written (%d writes failed so far)", exc,
                      self.store_failures)  # fmt: skip
            self.store_trouble_logged = time.monotonic()
        self.store_trouble = exc
