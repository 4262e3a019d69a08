"""Training-time efficiency: how much of a job's wall time went into training that was kept.

Definitions (per job; for a singleton chain, over the attempts of all its jobs):

- elapsed: from the start of the first attempt to the end of the last one, or to now
  while the job is still running or being recovered;
- productive: training whose progress was saved: each attempt from its start to its
  last checkpoint, and a completed attempt whole (a checkpoint is a completed save: a
  save that began and never completed before a failure saved nothing);
- lost: work after the last checkpoint of an attempt that failed or was cancelled
  (the whole attempt when it saved none), plus the time from the end of one attempt
  to the start of the next (detection, requeue, scheduling, start-up);
- at risk: the running attempt's work since its last checkpoint: not lost yet, not
  saved yet; left out of the ratio until it settles either way;
- efficiency = productive / (elapsed - at risk).

Time is cut into intervals of one kind each, so a window (`--since`) clips them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable, Sequence

from ajr_agent.domain.model import Attempt, Outcome


class Kind(StrEnum):
    """What a stretch of a job's wall time was."""

    PRODUCTIVE = "productive"
    LOST_UNSAVED = "lost_unsaved"  # work of a failed or cancelled attempt after its last checkpoint
    LOST_RESTART = "lost_restart"  # between the end of an attempt and the start of the next
    AT_RISK = "at_risk"  # the running attempt's work since its last checkpoint


@dataclass(frozen=True)
class Interval:
    """A stretch of wall time of one kind."""

    kind: Kind
    start: float
    end: float


@dataclass(frozen=True)
class Efficiency:
    """The training-time figures of a job, a chain or a set of jobs (seconds)."""

    elapsed: float
    productive: float
    lost_unsaved: float
    lost_restart: float
    at_risk: float

    @property
    def lost(self) -> float:
        """All lost time."""
        return self.lost_unsaved + self.lost_restart

    @property
    def efficiency(self) -> float | None:
        """productive / settled time; None while nothing has settled."""
        settled = self.elapsed - self.at_risk
        return self.productive / settled if settled > 0 else None

    def __add__(self, other: "Efficiency") -> "Efficiency":
        return Efficiency(
            self.elapsed + other.elapsed,
            self.productive + other.productive,
            self.lost_unsaved + other.lost_unsaved,
            self.lost_restart + other.lost_restart,
            self.at_risk + other.at_risk,
        )


NOTHING = Efficiency(0.0, 0.0, 0.0, 0.0, 0.0)


def timeline(attempts: Sequence[Attempt], now: float, recovering: bool = False) -> list[Interval]:
    """Cut the wall time of one job's (or chain's) attempts into intervals.

    `recovering` says the job is between a failure and its next attempt: the time since
    the last attempt ended counts as lost restart time until now.
    """
    ordered = sorted(attempts, key=lambda a: (a.started, a.job_id, a.attempt))
    intervals: list[Interval] = []
    previous_end: float | None = None
    for attempt in ordered:
        if previous_end is not None and attempt.started > previous_end:
            intervals.append(Interval(Kind.LOST_RESTART, previous_end, attempt.started))
        end = attempt.ended if attempt.ended is not None else now
        intervals.extend(_attempt_intervals(attempt, end))
        previous_end = max(end, previous_end or end)
    if recovering and previous_end is not None and now > previous_end:
        intervals.append(Interval(Kind.LOST_RESTART, previous_end, now))
    return [i for i in intervals if i.end > i.start]


def _attempt_intervals(attempt: Attempt, end: float) -> list[Interval]:
    start = attempt.started
    if attempt.outcome is Outcome.COMPLETED:
        return [Interval(Kind.PRODUCTIVE, start, end)]
    saved = min(attempt.last_checkpoint, end) if attempt.last_checkpoint is not None else start
    tail = Kind.AT_RISK if attempt.outcome is Outcome.RUNNING else Kind.LOST_UNSAVED
    if attempt.outcome is Outcome.ENDED:
        # Preempted or otherwise ended by Slurm: Slurm's business; count nothing as lost.
        tail = Kind.PRODUCTIVE
    return [Interval(Kind.PRODUCTIVE, start, saved), Interval(tail, saved, end)]


def summarize(intervals: Iterable[Interval], since: float | None = None, until: float | None = None) -> Efficiency:
    """Add up intervals, clipped to the window [since, until] when one is given."""
    totals = {kind: 0.0 for kind in Kind}
    for interval in intervals:
        start = max(interval.start, since) if since is not None else interval.start
        end = min(interval.end, until) if until is not None else interval.end
        if end > start:
            totals[interval.kind] += end - start
    return Efficiency(
        elapsed=sum(totals.values()),
        productive=totals[Kind.PRODUCTIVE],
        lost_unsaved=totals[Kind.LOST_UNSAVED],
        lost_restart=totals[Kind.LOST_RESTART],
        at_risk=totals[Kind.AT_RISK],
    )


def of_attempts(attempts: Sequence[Attempt], now: float, recovering: bool = False,
                since: float | None = None) -> Efficiency:  # fmt: skip
    """The figures of one job or chain, optionally within a window ending now."""
    if not attempts:
        return NOTHING
    return summarize(timeline(attempts, now, recovering), since, now if since is not None else None)
