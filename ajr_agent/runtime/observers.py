"""What the loop tells the world: hooks that metrics and notifications implement.

The runtime calls these and knows nothing of who listens, so the surfaces (metrics,
notifications) depend on the runtime and never the other way round. Each hook must
return at once: the loop waits for it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ajr_agent.adapters.logs import LogLine
from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.store import StoreError
from ajr_agent.domain.events import Event
from ajr_agent.domain.model import Decision, ManagedJob


class Observer:
    """Every hook does nothing; a listener overrides those it cares about."""

    def decided(self, before: ManagedJob, event: Event, decision: Decision) -> None:
        """The policy decided `decision` on `event` for the job that was `before`."""

    def polled(self, seconds: float, files_tailed: int) -> None:
        """One poll took `seconds` and followed `files_tailed` log files."""

    def lines_read(self, lines: Iterable[LogLine]) -> None:
        """New log lines were read."""

    def slurm_error(self, exc: SlurmError) -> None:
        """A Slurm command failed."""

    def store_error(self, exc: StoreError) -> None:
        """A write to the state database failed."""

    def check_held(self, jobs: Iterable[ManagedJob], now: float) -> None:
        """A chance to look at every managed job once a poll."""


class Observers(Observer):
    """Several observers as one, called in order."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def decided(self, before: ManagedJob, event: Event, decision: Decision) -> None:
        for observer in self.observers:
            observer.decided(before, event, decision)

    def polled(self, seconds: float, files_tailed: int) -> None:
        for observer in self.observers:
            observer.polled(seconds, files_tailed)

    def lines_read(self, lines: Iterable[LogLine]) -> None:
        for observer in self.observers:
            observer.lines_read(lines)

    def slurm_error(self, exc: SlurmError) -> None:
        for observer in self.observers:
            observer.slurm_error(exc)

    def store_error(self, exc: StoreError) -> None:
        for observer in self.observers:
            observer.store_error(exc)

    def check_held(self, jobs: Iterable[ManagedJob], now: float) -> None:
        for observer in self.observers:
            observer.check_held(jobs, now)
