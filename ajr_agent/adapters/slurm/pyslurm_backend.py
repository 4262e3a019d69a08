"""Slurm through pyslurm, where a build matching the running Slurm is importable."""

from __future__ import annotations

from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError, is_transient
from ajr_agent.domain.jobs import JobSnapshot


class PyslurmGateway(CommandGateway):
    """pyslurm for reading and acting, where a build matching the running Slurm is importable.

    Reads the queue through `pyslurm.Jobs.load()` (no subprocess, no text parsing) and
    acts through the job object; anything pyslurm lacks falls back to the commands.
    """

    backend = "pyslurm"

    def __init__(self, timeout: float, module: object) -> None:
        super().__init__(timeout)
        self.pyslurm = module

    def list_jobs(self) -> list[JobSnapshot]:
        """All jobs through pyslurm's job list."""
        try:
            jobs = self.pyslurm.Jobs.load()  # type: ignore[attr-defined]
        except Exception as exc:  # pyslurm raises its own RPCError; its message is Slurm's
            raise SlurmError(["pyslurm.Jobs.load()"], str(exc), transient=True) from exc
        return [_snapshot_from_pyslurm(job) for job in jobs.values()]

    def requeue_hold(self, job_id: int) -> None:
        """Requeue held through pyslurm."""
        self._call(job_id, "requeue", hold=True)

    def release(self, job_id: int) -> None:
        """Release through pyslurm."""
        self._call(job_id, "release")

    def requeue(self, job_id: int) -> None:
        """Requeue through pyslurm."""
        self._call(job_id, "requeue")

    def _call(self, job_id: int, method: str, **kwargs: object) -> None:
        try:
            getattr(self.pyslurm.Job(job_id), method)(**kwargs)  # type: ignore[attr-defined]
        except Exception as exc:  # pyslurm's RPCError carries Slurm's reason
            message = str(exc)
            raise SlurmError([f"pyslurm.Job({job_id}).{method}"], message, is_transient(message)) from exc


def _snapshot_from_pyslurm(job: object) -> JobSnapshot:
    """A JobSnapshot from a `pyslurm.Job` (attribute names of pyslurm 23.x-25.x)."""

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
        work_dir=str(get("working_directory")),
        stdout=str(get("standard_output")),
        name=str(get("name")),
        comment=str(get("comment")),
    )
