"""A job as Slurm reports it at one poll, and what its states mean: plain data, read by the policy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


# Job states in which the job's current attempt is over.
ENDED_STATES = frozenset(
    {"COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED", "BOOT_FAIL", "DEADLINE",
     "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip


# What squeue shows as the Reason of a held job: held by its user (sbatch --hold), by an
# admin, or by a requeuehold (slurmctld sets that one as the job's state description).
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin", "job requeued in held state"})

# Ends that mean the attempt failed on its own, as opposed to success or a user's scancel.
FAILED_STATES = frozenset({"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"})


@dataclass(frozen=True)
class JobSnapshot:
    """One job as Slurm sees it at one poll."""

    job_id: int
    state: str
    user_id: int
    user: str
    restart_count: int
    start_time: float | None
    end_time: float | None
    batch: bool
    requeueable: bool
    nodes: str
    reason: str
    work_dir: str
    stdout: str
    name: str
    comment: str
    partition: str = ""
    tasks: int = 0  # Slurm's NumTasks: where each task runs follows from it (0: not known)

    @property
    def ended(self) -> bool:
        """The current attempt is over."""
        return self.state in ENDED_STATES

    @property
    def running(self) -> bool:
        """The current attempt is running.

        COMPLETING is not: a job AJR just requeued shows COMPLETING with the new restart
        count and the old start time, and must not pass for a new attempt.
        """
        return self.state in ("RUNNING", "CONFIGURING")

    @property
    def held(self) -> bool:
        """The job waits for a release."""
        return self.state == "PENDING" and self.reason in HELD_REASONS

    @property
    def stdout_dir(self) -> str:
        """The directory of the job's standard output, where steps often write their logs too."""
        path = expand_stdout(self.stdout, self) if self.stdout else ""
        return str(Path(path).parent) if path else ""


def expand_stdout(pattern: str, job: JobSnapshot) -> str:
    """Expand the filename patterns squeue leaves in STDOUT: 22.05 in a path given with -o, 24.11
    and 26.05 in every path, the default `slurm-%j.out` too."""
    replacements = {"%j": str(job.job_id), "%A": str(job.job_id), "%x": job.name, "%u": job.user, "%%": "%"}
    return re.sub(r"%[jAxu%]", lambda m: replacements[m.group(0)], pattern)


@dataclass(frozen=True)
class NodeLogLine:
    """A line of a node's own kernel or system log, read for a verdict."""

    node: str
    file: str  # the file's name in the node's log directory
    text: str
