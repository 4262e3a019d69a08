"""Job ends Slurm reports through the EpilogSlurmctld hook: those jobs are polled at once.

During the hook Slurm still shows the job COMPLETING, so the loop polls quickly until it
does not (or end_settle_seconds pass). A record of a job the agent does not know yet (it
ran between two polls) waits for the poll that adopts the job.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Container

from ajr_agent.adapters.epilog_spool import EpilogRecord, read_spool
from ajr_agent.domain.jobs import JobSnapshot

log = logging.getLogger("ajr.agent")


class JobEnds:
    """The ends reported and not yet settled."""

    def __init__(self, spool_dir: Path, settle_seconds: float) -> None:
        self.spool_dir = spool_dir
        self.settle_seconds = settle_seconds
        self.awaiting: dict[int, float] = {}  # job id -> poll quickly until then
        self.unadopted: dict[int, EpilogRecord] = {}

    def take(self, now: float, known: Container[int]) -> list[EpilogRecord]:
        """The records the hook left since the last call, for the `known` jobs (others wait)."""
        records = []
        for record in read_spool(self.spool_dir):
            log.info("job %s: Slurm reports its end (exit %s on %s, restart count %d)", record.job_id,
                     record.exit_code or "?", record.nodes or "?", record.restart_count)  # fmt: skip
            self.awaiting[record.job_id] = now + self.settle_seconds
            if record.job_id in known:
                records.append(record)
            else:
                self.unadopted[record.job_id] = record
        return records

    def adopted(self, job_id: int) -> EpilogRecord | None:
        """The record that waited for the job just adopted, if any."""
        return self.unadopted.pop(job_id, None)

    def settle(self, snapshots: dict[int, JobSnapshot], now: float) -> None:
        """Stop polling quickly for the jobs Slurm no longer shows COMPLETING."""
        for job_id, deadline in list(self.awaiting.items()):
            snapshot = snapshots.get(job_id)
            if snapshot is None or snapshot.state != "COMPLETING" or now >= deadline:
                del self.awaiting[job_id]
                self.unadopted.pop(job_id, None)
