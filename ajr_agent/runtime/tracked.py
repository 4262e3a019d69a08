"""What the loop holds in memory for one managed job between polls (the store has the rest)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ajr_agent.detect.attribution import Evidence
from ajr_agent.detect.signals import Series
from ajr_agent.domain.model import Better, ManagedJob

# Per attempt: the anomaly lines a verdict rests on; per attempt and throughput rule: the reports
# a straggler is judged by (the latest signals.SERIES_KEPT). Bounded, so that a job that logs
# failures for weeks costs the same.
EVIDENCE_KEPT = 50


@dataclass
class TrackedJob:
    """One managed job as the loop follows it."""

    job: ManagedJob
    files: set[str] = field(default_factory=set)  # paths of its followed log files
    last_scan: float = 0.0  # when its log directories were last looked through
    last_output: float | None = None  # when a line was last read from its files (or the first was found)
    failed_reads: int = 0  # passes in a row whose lines could not be handled
    files_capped: bool = False  # told that it reached max_log_files_per_job
    evidence: dict[int, list[Evidence]] = field(default_factory=dict)
    # Keyed by (attempt, rule): two rules on one line (a time per iteration, a rate) are two quantities.
    series: dict[tuple[int, str], Series] = field(default_factory=dict)
    charted: dict[int, str] = field(default_factory=dict)  # per attempt: the rule whose readings are stored

    def keep_evidence(self, attempt: int, evidence: Evidence) -> None:
        """Remember an anomaly line of `attempt` (the latest EVIDENCE_KEPT)."""
        kept = self.evidence.setdefault(attempt, [])
        kept.append(evidence)
        del kept[:-EVIDENCE_KEPT]

    def keep_reading(self, attempt: int, rule: str, better: Better, value: float) -> Series:
        """Remember a throughput report of `attempt` by `rule`; that rule's series of the attempt so far."""
        kept = self.series.get((attempt, rule))
        if kept is None:
            kept = self.series[attempt, rule] = Series(better)
        kept.add(value)
        return kept
