"""Anomalies read from silence and from numbers: a job that stopped writing, a rank slower than the rest."""

from __future__ import annotations

import statistics
from typing import Sequence

from ajr_agent.domain.events import AnomalyFound
from ajr_agent.domain.model import Fault, ManagedJob, Phase
from ajr_agent.domain.settings import Settings


def hung(job: ManagedJob, last_output: float, now: float, settings: Settings) -> AnomalyFound | None:
    """A `hang` anomaly when a running attempt with log files has written nothing for its heartbeat timeout.

    `last_output` is when a line was last read from the attempt's files (or when the first
    of them was found). An attempt within its start-up grace is never hung.
    """
    if job.phase is not Phase.WATCHING or job.attempt_started is None or job.attempt_ended is not None:
        return None
    timeout = job.heartbeat_timeout or settings.heartbeat_timeout
    silence = now - max(last_output, job.attempt_started)
    if silence < timeout or now - job.attempt_started < settings.hang_startup_grace:
        return None
    return AnomalyFound(job.job_id, job.attempt, now, "heartbeat", "hang", Fault.UNKNOWN, "",
                        f"no log line for {silence:.0f} s (heartbeat timeout {timeout:g} s)")  # fmt: skip


def straggling(values: Sequence[float], settings: Settings) -> tuple[float, tuple[float, ...]] | None:
    """(baseline, recent reports) when the last `straggler_reports` values all fall below the fraction.

    The baseline is the median of the attempt's earlier reports, so one slow warm-up step
    or one fast outlier does not move it; at least as many earlier reports as the window
    are needed before anything is judged.
    """
    window = settings.straggler_reports
    if len(values) < 2 * window:
        return None
    earlier, recent = values[:-window], tuple(values[-window:])
    # The agent asks at every report, so rule a drop out without sorting where possible: the
    # median is at most the largest of any more than half of the earlier reports.
    if recent[-1] >= settings.straggler_fraction * max(earlier[(len(earlier) - 1) // 2 :]):
        return None
    baseline = statistics.median(earlier)
    if baseline > 0 and all(v < settings.straggler_fraction * baseline for v in recent):
        return baseline, recent
    return None
