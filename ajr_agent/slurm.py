"""The gateway to Slurm: read every job in one light call, and act on one job.

The command backend reads the queue with one `squeue -O` per poll (0.1 s at 10,000
jobs where `squeue --json` takes 1-2 s and 470 MB) and acts with `scontrol`, each
call under a timeout. A pyslurm backend is used instead when an importable pyslurm
matches the running Slurm's major.minor. Every command inherits the environment, so
`SLURM_CONF` picks the cluster.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, Sequence

from .config import Settings, SlurmBackend
from .errors import AjrError

log = logging.getLogger(__name__)

# Unit separator: it cannot appear in job names, paths or JSON comments typed by users,
# unlike '|' or spaces.
SEP = "\x1f"
# Comment goes last: whatever it holds, it ends the line.
SQUEUE_FIELDS = (
    "JobID", "State", "UserId", "UserName", "RestartCnt", "StartTime", "EndTime", "BatchFlag",
    "Requeue", "NodeList", "Reason", "Partition", "WorkDir", "STDOUT", "Name", "Comment",
)  # fmt: skip
SQUEUE_FORMAT = ",".join(f"{field}:{SEP}" for field in SQUEUE_FIELDS)

# Job states in which the job's current attempt is over.
ENDED_STATES = frozenset(
    {"COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED", "BOOT_FAIL", "DEADLINE",
     "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip
# Ends that mean the attempt failed on its own, as opposed to success or a user's scancel.
FAILED_STATES = frozenset({"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"})

# scontrol's answers that mean "try again later" rather than "Slurm said no".
_TRANSIENT = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|Transport endpoint|"
    r"Resource temporarily unavailable|Zero Bytes were transmitted|Communication connection failure|"
    # What a controller that is restarting answers.
    r"Unexpected message received|Slurm backup controller in standby mode",
    re.IGNORECASE,
)


class SlurmError(AjrError):
    """A Slurm command failed. `transient` says whether trying again may help."""

    def __init__(self, command: list[str], message: str, transient: bool) -> None:
        super().__init__(f"`{' '.join(command)}` failed: {message}")
        self.command = command
        self.reason = message
        self.transient = transient


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
    def stdout_dir(self) -> str:
        """The directory of the job's standard output, where steps often write their logs too."""
        path = expand_stdout(self.stdout, self) if self.stdout else ""
        return str(Path(path).parent) if path else ""


class SlurmGateway(Protocol):
    """What the agent needs from Slurm, whatever the backend."""

    backend: str

    def list_jobs(self) -> list[JobSnapshot]:
        """Every job slurmctld knows, in one call."""

    def requeue_hold(self, job_id: int) -> None:
        """Kill the job if it runs and requeue it held (`scontrol requeuehold`)."""

    def release(self, job_id: int) -> None:
        """Release a held job (`scontrol release`)."""

    def requeue(self, job_id: int) -> None:
        """Requeue the job without holding it (`scontrol requeue`)."""

    def cancel(self, job_id: int) -> None:
        """Cancel the job (`scancel`); a job already over is not an error."""

    def update(self, job_id: int, **fields: str) -> None:
        """Change job fields (`scontrol update JobId=N Key=Value ...`)."""

    def exclude_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Add nodes to the job's ExcNodeList, keeping the ones the user excluded."""

    def drain(self, node: str, reason: str) -> None:
        """Drain a node with a reason (`scontrol update NodeName=.. State=DRAIN Reason=..`)."""

    def partition_nodes(self) -> dict[str, list[str]]:
        """Every partition's nodes, expanded."""

    def nodes_out_of_service(self) -> set[str]:
        """Nodes that are down, drained or draining."""

    def version(self) -> str:
        """Slurm's version, e.g. `22.05.8`."""


def parse_time(value: str) -> float | None:
    """Slurm's local ISO time to an epoch; its placeholders (N/A, Unknown, None) to None."""
    if not value or not value[0].isdigit():
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse_squeue(output: str) -> list[JobSnapshot]:
    """Parse the output of `squeue -h -t all -O SQUEUE_FORMAT`; a malformed line is logged and skipped."""
    jobs = []
    width = len(SQUEUE_FIELDS)
    for line in output.splitlines():
        if not line:
            continue
        parts = line.split(SEP, width - 1)
        if len(parts) != width:
            log.warning("squeue line with %d fields instead of %d skipped: %.200r", len(parts), width, line)
            continue
        (job_id, state, uid, user, restarts, start, end, batch, requeue, nodes, reason, partition, work_dir, stdout,
         name, comment) = parts  # fmt: skip
        # A trailing separator follows the last field too.
        comment = comment[:-1] if comment.endswith(SEP) else comment
        if not (job_id.isdigit() and uid.isdigit()):
            # Array tasks ("12_3") are not managed; int() would read "12_3" as 123.
            log.debug("squeue line with a non-numeric id skipped: %.200r", line)
            continue
        try:
            jobs.append(
                JobSnapshot(
                    job_id=int(job_id),
                    state=state.split()[0] if state else "",
                    user_id=int(uid),
                    user=user,
                    restart_count=int(restarts or 0),
                    start_time=parse_time(start),
                    end_time=parse_time(end),
                    batch=batch.strip() == "1",
                    requeueable=requeue.strip() == "1",
                    nodes=nodes if nodes not in ("(null)", "") else "",
                    reason=reason,
                    partition=partition,
                    work_dir=work_dir,
                    stdout=stdout,
                    name=name,
                    comment=comment if comment != "(null)" else "",
                )
            )
        except ValueError:
            log.warning("squeue line with a malformed number skipped: %.200r", line)
    return jobs


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand Slurm's compact node lists: `gpu-[01-03,7],login1` -> gpu-01, gpu-02, gpu-03, gpu-7, login1."""
    names: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", hostlist):
        found = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not found:
            names.append(item)
            continue
        prefix, ranges, suffix = found.groups()
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not high:
                names.append(f"{prefix}{low}{suffix}")
                continue
            width = len(low) if low.startswith("0") else 0
            names += [f"{prefix}{n:0{width}d}{suffix}" for n in range(int(low), int(high) + 1)]
    return names


def expand_stdout(pattern: str, job: JobSnapshot) -> str:
    """Expand the filename patterns Slurm 22.05 leaves in STDOUT (newer Slurm expands them itself)."""
    replacements = {"%j": str(job.job_id), "%A": str(job.job_id), "%x": job.name, "%u": job.user, "%%": "%"}
    return re.sub(r"%[jAxu%]", lambda m: replacements[m.group(0)], pattern)


class CommandGateway:
    """Slurm through its own commands, each under a timeout."""

    backend = "commands"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def run(self, command: list[str]) -> str:
        """Run one Slurm command; SlurmError (transient or not) when it fails or hangs."""
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(command, f"no answer within {self.timeout:g} s", transient=True) from exc
        except FileNotFoundError as exc:
            raise SlurmError(command, f"{command[0]} is not installed or not on PATH", transient=False) from exc
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            raise SlurmError(command, message, transient=bool(_TRANSIENT.search(message)))
        return done.stdout

    def list_jobs(self) -> list[JobSnapshot]:
        """All jobs in slurmctld's memory (finished ones stay for MinJobAge), one squeue call."""
        return parse_squeue(self.run(["squeue", "-h", "-t", "all", "-O", SQUEUE_FORMAT]))

    def job(self, job_id: int) -> JobSnapshot | None:
        """One job (for the CLI; the agent reads all jobs at once); None when Slurm does not know it."""
        try:
            jobs = parse_squeue(self.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-O", SQUEUE_FORMAT]))
        except SlurmError as exc:
            if "Invalid job id" in exc.reason:
                return None
            raise
        return next((j for j in jobs if j.job_id == job_id), None)

    def slurm_user(self) -> str:
        """The SlurmUser of the cluster: besides root, the one allowed AJR's operator commands."""
        for line in self.run(["scontrol", "show", "config"]).splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "SlurmUser":
                return value.strip().split("(")[0]
        return "root"

    def requeue_hold(self, job_id: int) -> None:
        """Kill and requeue held."""
        self.run(["scontrol", "requeuehold", str(job_id)])

    def release(self, job_id: int) -> None:
        """Release a held job."""
        self.run(["scontrol", "release", str(job_id)])

    def requeue(self, job_id: int) -> None:
        """Requeue without a hold."""
        self.run(["scontrol", "requeue", str(job_id)])

    def cancel(self, job_id: int) -> None:
        """scancel; it answers 0 for a job that is already over, which is what AJR wants."""
        self.run(["scancel", str(job_id)])

    def update(self, job_id: int, **fields: str) -> None:
        """Update job fields; values go as one argument each, so spaces are safe."""
        self.run(["scontrol", "update", f"JobId={job_id}", *(f"{key}={value}" for key, value in fields.items())])

    def exclude_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Read the job's ExcNodeList, add `nodes`, write it back (a user's own --exclude stays)."""
        shown = self.run(["scontrol", "-o", "show", "job", str(job_id)])
        current = re.search(r"(?:^|\s)ExcNodeList=(\S*)", shown)
        have = expand_hostlist(current.group(1)) if current and current.group(1) != "(null)" else []
        wanted = have + [n for n in nodes if n not in have]
        self.update(job_id, ExcNodeList=",".join(wanted))

    def drain(self, node: str, reason: str) -> None:
        """Drain one node; the reason tells admins which job and evidence made AJR do it."""
        self.run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])

    def partition_nodes(self) -> dict[str, list[str]]:
        """Partition name to node names, from `scontrol show partition -o`."""
        partitions: dict[str, list[str]] = {}
        for line in self.run(["scontrol", "-o", "show", "partition"]).splitlines():
            name = re.search(r"PartitionName=(\S+)", line)
            nodes = re.search(r"(?:^|\s)Nodes=(\S+)", line)
            if name:
                partitions[name.group(1)] = expand_hostlist(nodes.group(1)) if nodes and nodes.group(1) != "(null)" else []
        return partitions

    def nodes_out_of_service(self) -> set[str]:
        """Nodes sinfo shows down, drained, draining, failing or in maintenance."""
        out = self.run(["sinfo", "-h", "-N", "-o", "%N|%T"])
        bad = ("down", "drain", "fail", "maint", "unknown", "not_responding", "future", "power")
        return {n for n, _, state in (l.partition("|") for l in out.splitlines()) if any(b in state for b in bad)}

    def version(self) -> str:
        """The installed Slurm's version."""
        return self.run(["scontrol", "--version"]).split()[-1]


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
            raise SlurmError([f"pyslurm.Job({job_id}).{method}"], message, bool(_TRANSIENT.search(message))) from exc


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


def open_gateway(settings: Settings) -> SlurmGateway:
    """The backend the settings ask for; with `auto`, pyslurm only when it matches the running Slurm."""
    commands = CommandGateway(settings.slurm_command_timeout)
    if settings.slurm_backend is SlurmBackend.COMMANDS:
        return commands
    try:
        import pyslurm  # type: ignore[import-not-found]
    except ImportError as exc:
        if settings.slurm_backend is SlurmBackend.PYSLURM:
            raise SlurmError(["import pyslurm"], f"pyslurm is not importable: {exc}", transient=False) from exc
        return commands
    slurm_version = commands.version() if shutil.which("scontrol") else ""
    pyslurm_version = str(getattr(pyslurm, "__version__", ""))
    if _major_minor(slurm_version) and _major_minor(slurm_version) == _major_minor(pyslurm_version):
        return PyslurmGateway(settings.slurm_command_timeout, pyslurm)
    if settings.slurm_backend is SlurmBackend.PYSLURM:
        raise SlurmError(
            ["import pyslurm"],
            f"pyslurm {pyslurm_version} does not match Slurm {slurm_version}; install the pyslurm release built for it",
            transient=False,
        )
    log.info("pyslurm %s does not match Slurm %s: using the Slurm commands", pyslurm_version, slurm_version)
    return commands


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2]) if version.count(".") >= 1 else ()
