"""Slurm through pyslurm where a build matching the running Slurm is importable, the commands where it falls short.

Through pyslurm's C API: the queue read of every poll (`pyslurm.Jobs.load()`: no
subprocess, no text to parse), requeue held, release, requeue and cancel. Through
Slurm's commands (`FALLBACKS`, logged when the backend opens): job updates and
exclusions, the nodes and partitions, drains and reboots. A queue that pyslurm cannot
read (it decodes Slurm's text as strict UTF-8, and a user can name a job in any bytes)
is read through squeue for that poll, with a warning naming the job.
"""

from __future__ import annotations

import logging

from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError, is_transient
from ajr_agent.domain.jobs import JobSnapshot

log = logging.getLogger(__name__)

# What stays on Slurm's commands with this backend, and why.
FALLBACKS = (
    ("job updates and exclusions (scontrol update)",
     "AdminComment, StartTime=now+N and ExcNodeList are read by scontrol's own parsers; the exclusions keep the "
     "user's own, read through squeue"),
    ("node states, partitions, drains (sinfo, scontrol)", "read once per verdict, not per poll"),
    ("reboots (scontrol reboot ASAP nextstate=RESUME)", "pyslurm has no call for a node reboot"),
)  # fmt: skip


class PyslurmGateway(CommandGateway):
    """pyslurm for the queue read and the job actions, the commands for the rest (`FALLBACKS`)."""

    backend = "pyslurm"

    def __init__(self, timeout: float, module: object) -> None:
        super().__init__(timeout)
        self.pyslurm = module
        self.unreadable: set[int] = set()  # jobs already warned of

    def fallbacks(self) -> str:
        """What goes through the commands instead of pyslurm, and why: one line for the log."""
        return "; ".join(f"{what}: {why}" for what, why in FALLBACKS)

    def list_jobs(self) -> list[JobSnapshot]:
        """All jobs through pyslurm's job list; through squeue when pyslurm cannot read a job's text."""
        try:
            jobs = self.pyslurm.Jobs.load()  # type: ignore[attr-defined]
        except Exception as exc:  # pyslurm raises its own RPCError; its message is Slurm's
            raise SlurmError(["pyslurm.Jobs.load()"], str(exc), transient=True) from exc
        snapshots = []
        for job in jobs.values():
            try:
                snapshot = _snapshot_from_pyslurm(job)
            except UnicodeDecodeError as exc:
                self._warn_unreadable(int(job.id), exc)
                return super().list_jobs()
            snapshots.append(snapshot)
        return snapshots

    def _warn_unreadable(self, job_id: int, exc: UnicodeDecodeError) -> None:
        if job_id not in self.unreadable:
            self.unreadable.add(job_id)
            log.warning("pyslurm cannot read job %s (its name, paths or comment are not UTF-8: %s): the queue is "
                        "read through squeue while the job is in it", job_id, exc.reason)  # fmt: skip

    def requeue_hold(self, job_id: int) -> None:
        """Requeue held through pyslurm."""
        self._call(job_id, "requeue", hold=True)

    def release(self, job_id: int) -> None:
        """Release through pyslurm."""
        self._call(job_id, "release")

    def requeue(self, job_id: int) -> None:
        """Requeue through pyslurm."""
        self._call(job_id, "requeue")

    def cancel(self, job_id: int) -> None:
        """Cancel through pyslurm; a job that is over already is not an error, as with scancel."""
        try:
            self._call(job_id, "cancel")
        except SlurmError as exc:
            if "already finished" not in exc.reason:
                raise

    def _call(self, job_id: int, method: str, **kwargs: object) -> None:
        try:
            getattr(self.pyslurm.Job(job_id), method)(**kwargs)  # type: ignore[attr-defined]
        except Exception as exc:  # pyslurm's RPCError carries Slurm's reason
            message = str(exc)
            raise SlurmError([f"pyslurm.Job({job_id}).{method}"], message, is_transient(message)) from exc


def _snapshot_from_pyslurm(job: object) -> JobSnapshot:
    """A JobSnapshot from a `pyslurm.Job` (pyslurm 22.5 to 25.11), as the commands read it from squeue:
    array tasks and heterogeneous components are jobs of their own id there too (`-O JobID`).

    UnicodeDecodeError when a text field is not UTF-8 (pyslurm decodes on access).
    """

    def get(name: str, default: object = "") -> object:
        value = getattr(job, name, default)
        return default if value is None else value

    start, end = get("start_time", 0), get("end_time", 0)
    return JobSnapshot(
        job_id=int(get("id", 0)),  # type: ignore[call-overload]
        state=str(get("state")),
        user_id=int(get("user_id", -1)),  # type: ignore[call-overload]
        user=str(get("user_name")),
        restart_count=int(get("requeue_count", 0)),  # type: ignore[call-overload]
        start_time=float(start) or None,  # type: ignore[arg-type]
        end_time=float(end) or None,  # type: ignore[arg-type]
        batch=bool(get("is_batch_job", True)),
        requeueable=bool(get("is_requeueable", True)),
        nodes=str(get("allocated_nodes")),
        reason=str(get("state_reason")),
        partition=str(get("partition")),
        tasks=int(get("ntasks", 0)),  # type: ignore[call-overload]
        work_dir=str(get("working_directory")),
        stdout=str(get("standard_output")),
        name=str(get("name")),
        comment=str(get("comment")),
    )
