"""Anomalies read from silence, from numbers and from the order of lines: a job that stopped
writing, a rank slower than the rest, a checkpoint save that began and never completed."""

from __future__ import annotations

import statistics
from collections import deque
from typing import Sequence

from ajr_agent.domain.events import AnomalyFound, CheckpointFailed, CheckpointStarted
from ajr_agent.domain.model import Better, Fault, ManagedJob, Phase
from ajr_agent.domain.settings import Settings

SERIES_KEPT = 500
"""Reports of one throughput series the straggler check looks back on (the latest ones)."""


def hang_due(last_output: float, started: float, timeout: float, startup_grace: float) -> float:
    """When a hang fires for an attempt started at `started` whose last line was read at `last_output`:
    after `timeout` seconds of silence, and never within the attempt's start-up grace."""
    return max(max(last_output, started) + timeout, started + startup_grace)


def hung(job: ManagedJob, last_output: float, now: float, settings: Settings) -> AnomalyFound | None:
    """A `hang` anomaly when a running attempt with log files has written nothing for its heartbeat timeout.

    `last_output` is when a line was last read from the attempt's files (or when the first
    of them was found). An attempt within its start-up grace is never hung.
    """
    if job.phase is not Phase.WATCHING or job.attempt_started is None or job.attempt_ended is not None:
        return None
    timeout = job.heartbeat_timeout or settings.heartbeat_timeout
    if now < hang_due(last_output, job.attempt_started, timeout, settings.hang_startup_grace):
        return None
    silence = now - max(last_output, job.attempt_started)
    return AnomalyFound(job.job_id, job.attempt, now, "heartbeat", "hang", Fault.UNKNOWN, "",
                        f"no log line for {silence:.0f} s (heartbeat timeout {timeout:g} s)")  # fmt: skip


def straggling(values: Sequence[float], settings: Settings,
               better: Better = Better.HIGHER) -> tuple[float, tuple[float, ...]] | None:  # fmt: skip
    """(baseline, recent reports) when the last `straggler_reports` values are all worse than the fraction.

    For a rate (higher is better) worse is below `straggler_fraction` of the baseline; for a
    time per iteration (lower is better) it is above the baseline divided by it: the same
    drop of the rate. The baseline is the median of the attempt's earlier reports, so one
    slow warm-up step or one fast outlier does not move it; at least as many earlier
    reports as the window are needed before anything is judged.
    """
    window = settings.straggler_reports
    if len(values) < 2 * window:
        return None
    earlier, recent = values[:-window], tuple(values[-window:])
    fraction = settings.straggler_fraction
    # The agent asks at every report, so rule a drop out without sorting where possible: the
    # median lies between the smallest and the largest of any more than half of the earlier reports.
    if better is Better.LOWER:
        if recent[-1] * fraction <= min(earlier[: len(earlier) // 2 + 1]):
            return None
    elif recent[-1] >= fraction * max(earlier[(len(earlier) - 1) // 2 :]):
        return None
    baseline = statistics.median(earlier)
    if baseline <= 0:
        return None
    if better is Better.LOWER:
        slow = all(v * fraction > baseline for v in recent)
    else:
        slow = all(v < fraction * baseline for v in recent)
    return (baseline, recent) if slow else None


class Series:
    """One throughput rule's reports in an attempt (the latest SERIES_KEPT) and the straggler check on them.

    The check runs at every report, and nearly every report is no drop at all: the window's
    best value (its largest rate, its smallest time), kept as reports come, is a bound of the
    median that rules most of them out at once. Otherwise `straggling` decides.
    """

    def __init__(self, better: Better = Better.HIGHER) -> None:
        self.better = better
        self.values: list[float] = []
        self._seen = 0
        self._best: deque[tuple[int, float]] = deque()  # (report number, value), best first

    def add(self, value: float) -> None:
        """Take the next report."""
        self._seen += 1
        self.values.append(value)
        del self.values[:-SERIES_KEPT]
        best = self._best
        lower = self.better is Better.LOWER
        while best and (best[-1][1] >= value if lower else best[-1][1] <= value):
            best.pop()
        best.append((self._seen, value))
        if best[0][0] <= self._seen - SERIES_KEPT:
            best.popleft()

    def straggling(self, settings: Settings) -> tuple[float, tuple[float, ...]] | None:
        """`straggling` of the reports so far, (baseline, recent reports) or None."""
        last, best, fraction = self.values[-1], self._best[0][1], settings.straggler_fraction
        # The median of the earlier reports lies between the window's best and its worst.
        if (last * fraction <= best) if self.better is Better.LOWER else (last >= fraction * best):
            return None
        return straggling(self.values, settings, self.better)


class PendingSaves:
    """The checkpoint saves that began and have not completed, the latest of each job.

    A save that completes is forgotten; when the attempt it belongs to fails first, it is
    a failed save. The log feed keeps one per job; `ajr replay` pairs a log's lines the same way.
    """

    def __init__(self) -> None:
        self._started: dict[int, CheckpointStarted] = {}

    def started(self, save: CheckpointStarted) -> None:
        """A save of `save.attempt` began (a later start replaces an earlier one still open)."""
        self._started[save.job_id] = save

    def completed(self, job_id: int, attempt: int) -> None:
        """A save of the attempt completed: whatever began before it is saved."""
        save = self._started.get(job_id)
        if save is not None and save.attempt <= attempt:
            del self._started[job_id]

    def open(self) -> list[CheckpointStarted]:
        """The saves begun and not completed, of every job."""
        return list(self._started.values())

    def failed(self, job_id: int, attempt: int) -> CheckpointFailed | None:
        """The attempt failed: its open save, if it has one, is a failed save (and forgotten)."""
        save = self._started.get(job_id)
        if save is None or save.attempt != attempt:
            return None
        del self._started[job_id]
        return CheckpointFailed(save.job_id, save.attempt, save.at, save.rule, save.path, save.line)

    def forget(self, job_id: int) -> None:
        """The job is no longer followed."""
        self._started.pop(job_id, None)
