"""What the store hands back besides the domain's records: journal entries, stored events,
followed files, throughput readings, and what a prune removed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from ajr_agent.adapters.logs import FilePosition
from ajr_agent.domain.model import Action


class ActionStatus(StrEnum):
    """Where a journaled action stands (stored by value)."""

    PENDING = "pending"  # decided and journaled, not yet confirmed by Slurm
    RETRY = "retry"  # failed in a way that may pass; tried again at next_try_at
    DONE = "done"
    DRY_RUN = "dry_run"  # decided in dry-run mode: recorded, never run
    FAILED = "failed"  # Slurm refused, or the agent gave up


OPEN_STATUSES = (ActionStatus.PENDING, ActionStatus.RETRY)


@dataclass(frozen=True)
class JournalEntry:
    """One row of the action journal."""

    id: int
    action: Action
    status: ActionStatus
    tries: int
    created_at: float
    updated_at: float
    next_try_at: float | None
    error: str | None
    dry_run: bool
    origin: str


@dataclass(frozen=True)
class StoredEvent:
    """One line of a job's story as stored."""

    job_id: int
    attempt: int | None
    at: float
    kind: str
    text: str
    path: str | None = None
    line: str | None = None


@dataclass(frozen=True)
class FollowedFile:
    """A log file the agent follows, the attempt it belongs to, and how far it has read."""

    job_id: int
    attempt: int
    position: FilePosition


@dataclass(frozen=True)
class Reading:
    """One throughput report (e.g. TFLOP/s per GPU) of an attempt, at the time its line gives."""

    job_id: int
    attempt: int
    at: float
    value: float


@dataclass(frozen=True)
class Pruned:
    """What one prune() removed, by table; `more`: finished jobs past the retention are left for the next call."""

    jobs: int = 0
    attempts: int = 0
    events: int = 0
    dropped_notes: int = 0
    throughput: int = 0
    verdicts: int = 0
    files: int = 0
    actions: int = 0
    unmanaged: int = 0
    more: bool = False

    @property
    def total(self) -> int:
        """Rows removed in all."""
        return sum(v for k, v in asdict(self).items() if k != "more")
