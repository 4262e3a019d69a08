"""The gateway to Slurm: read every job in one light call, and act on one job.

The command backend reads the queue with one `squeue` per poll (0.2-0.3 s at 10,000
jobs where `squeue --json` takes 1.7 s and 470 MB) and acts with `scontrol`, each
call under a timeout. A pyslurm backend is used instead when an importable pyslurm
matches the running Slurm's major.minor. Every command inherits the environment, so
`SLURM_CONF` picks the cluster.

Slurm prints job names, paths and comments exactly as users typed them, line breaks
and control characters included, so no character is safe to separate fields or
records with. Every squeue read ends each field with a token drawn for that read
alone (`new_token`) and splits on the token, never on line breaks. The token reaches
squeue through its environment: every user can read a root process's argv in /proc,
not its environment, and no one can type into a job name a token that does not exist
yet.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from ajr_agent.domain.settings import Settings, SlurmBackend
from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.hostlist import HostlistError, compress_hostlist, expand_hostlist
from ajr_agent.domain.jobs import JobSnapshot

log = logging.getLogger(__name__)

SQUEUE_COMMAND = ("squeue", "-h", "-t", "all")
# Fields Slurm fills from its own state and the admin's names (users, nodes, partitions):
# each ends with \x1f, one byte where a token takes 23 (at 10,000 jobs squeue prints 2 MB
# instead of 4.3 with a token after every field, and both squeue and the parse take less).
SQUEUE_SLURM_FIELDS = (
    "JobID", "State", "UserId", "UserName", "RestartCnt", "StartTime", "EndTime", "BatchFlag", "Requeue",
    "NodeList", "Partition",
)  # fmt: skip
# Fields with text users choose, each ended by the read's token. Reason comes first: it is
# Slurm's text (`scontrol update JobId=N Reason=...` is refused, even to the job's owner)
# but slurmctld builds some of it from plugins' messages, so it is trusted with nothing:
# as the last field before a token, any \x1f in it stays in it.
SQUEUE_TEXT_FIELDS = ("Reason", "WorkDir", "STDOUT", "Name", "Comment")
SQUEUE_FIELDS = SQUEUE_SLURM_FIELDS + SQUEUE_TEXT_FIELDS
# Array tasks ("12_3", "12_[1-5%2]") and heterogeneous job components ("12+0"): not managed.
_COMPONENT_ID = re.compile(r"[0-9]+[_+][0-9\[\],%-]+")
# The kernel refuses (E2BIG) any one argument over 32 pages (MAX_ARG_STRLEN: 128 KiB with
# 4 KiB pages, its NUL included), and argv with the environment over sysconf(SC_ARG_MAX).
MAX_ARGUMENT_BYTES = 32 * 4096 - 1
# Failures to start a command that may pass: out of memory or processes, a file being replaced.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EINTR, errno.ETXTBSY, errno.EMFILE, errno.ENFILE})


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

    def __init__(self, command: Sequence[str], message: str, transient: bool) -> None:
        super().__init__(f"`{_shown(command)}` failed: {message}")
        self.command = list(command)
        self.reason = message
        self.transient = transient


class SlurmOutputError(SlurmError):
    """Slurm answered, but not in the form AJR asked for: nothing of that answer is used."""

    def __init__(self, command: Sequence[str], message: str) -> None:
        super().__init__(command, message, transient=False)


class CommandTooLong(SlurmError):
    """A command AJR was about to run is bigger than the kernel takes; it was not run."""

    def __init__(self, command: Sequence[str], message: str) -> None:
        super().__init__(command, message, transient=False)


def _shown(command: Sequence[str]) -> str:
    """The command as an error message shows it, long arguments cut so that the message stays readable."""
    return " ".join(arg if len(arg) <= 200 else f"{arg[:80]}...[{len(arg)} characters]" for arg in command)


def _text(data: bytes) -> str:
    # Slurm passes users' bytes through as they are. Bytes that are not UTF-8 become U+FFFD:
    # a strict decode would stop the read of everyone's jobs, and surrogate escapes would
    # reach SQLite, JSON and metric labels, which refuse them (for that job, at every poll).
    # The owner of such a path loses only AJR's reading of logs under it.
    return data.decode("utf-8", "replace")


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


def new_token() -> str:
    """A field terminator for one squeue read: \\x1f and 128 random bits in 22 URL-safe base64 characters.

    squeue reads digits right after `Field:` as the field's width (and cuts values to it),
    and a comma would end the field; \\x1f is neither, and base64's URL-safe alphabet has no
    comma. As that first character appears nowhere else in the token, no text ending in a
    part of the token can form, with the real token after it, a match that starts early.
    """
    return "\x1f" + secrets.token_urlsafe(16)


def squeue_format(token: str) -> str:
    """The SQUEUE_FORMAT2 of a queue read: every field whole (no width), Slurm's ended by \\x1f, text by `token`."""
    slurm = [f"{field}:\x1f" for field in SQUEUE_SLURM_FIELDS]
    return ",".join(slurm + [f"{field}:{token}" for field in SQUEUE_TEXT_FIELDS])


def split_records(output: str, token: str, width: int, command: Sequence[str]) -> list[list[str]]:
    """squeue's output under a format with `width` fields ended by `token`: each record's pieces between tokens.

    squeue prints a newline after each record's last token, so the output split on the
    token is `width` pieces per record and a last piece "\\n", and every record but the
    first starts with the newline that ended the one before. Anything else is a
    SlurmOutputError: no user can print the token, so it means squeue did not print what
    AJR asked for. (Fields ended by something else than the token stay in the piece of the
    next field that is.)
    """
    if not output:
        return []
    pieces = output.split(token)
    tail = pieces.pop()
    if tail != "\n" or len(pieces) % width:
        raise SlurmOutputError(
            command,
            f"the output is not whole records of {width} fields each ended by the token AJR passed in "
            f"SQUEUE_FORMAT/SQUEUE_FORMAT2 ({len(pieces)} fields, then {tail[:80]!r}); does this squeue "
            f"read those variables? (`squeue --version`; a SLURM_CLUSTERS or -M header breaks it too)",
        )  # fmt: skip
    records = [pieces[start : start + width] for start in range(0, len(pieces), width)]
    for fields in records[1:]:
        if not fields[0].startswith("\n"):
            raise SlurmOutputError(command, f"a record does not start on a line of its own: {fields[0][:80]!r}")
        fields[0] = fields[0][1:]
    return records


def parse_time(value: str) -> float | None:
    """Slurm's local ISO time to an epoch; its placeholders (N/A, Unknown, None) to None."""
    if not value or not value[0].isdigit():
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse_squeue(output: str, token: str) -> list[JobSnapshot]:
    """The jobs of a queue read: `squeue -h -t all` run with SQUEUE_FORMAT2 = `squeue_format(token)`.

    Array tasks and heterogeneous job components are left out: AJR does not manage them.
    Anything else this parser cannot read, and a job listed twice, fail the whole read
    (SlurmOutputError): a record left out would pass for a job gone from Slurm, and of two
    records for one job neither can be trusted.
    """
    jobs: dict[int, JobSnapshot] = {}
    times: dict[str, float | None] = {}  # jobs submitted together share their times
    width = len(SQUEUE_SLURM_FIELDS)
    for slurm_part, work_dir, stdout, name, comment in split_records(output, token, len(SQUEUE_TEXT_FIELDS),
                                                                     SQUEUE_COMMAND):  # fmt: skip
        fields = slurm_part.split("\x1f", width)
        if len(fields) != width + 1:
            raise SlurmOutputError(SQUEUE_COMMAND, f"a record with {len(fields)} of Slurm's {width} fields and Reason: "
                                                   f"{slurm_part[:200]!r}; nothing of this read is used")  # fmt: skip
        job_id, state, uid, user, restarts, start, end, batch, requeue, nodes, partition, reason = fields
        if _COMPONENT_ID.fullmatch(job_id):
            continue
        if not (job_id.isdigit() and uid.isdigit() and restarts.isdigit() and (job_id + uid + restarts).isascii()):
            raise SlurmOutputError(
                SQUEUE_COMMAND,
                f"a record with JobID={job_id[:40]!r} UserId={uid[:40]!r} RestartCnt={restarts[:40]!r} is no job "
                f"AJR can read; nothing of this read is used",
            )  # fmt: skip
        for value in (start, end):
            if value not in times:
                times[value] = parse_time(value)
        if int(job_id) in jobs:
            raise SlurmOutputError(
                SQUEUE_COMMAND,
                f"squeue listed job {job_id} twice in one read; nothing of this read is used (does a federation "
                f"with FedParams=fed_display show the job once per cluster?)",
            )  # fmt: skip
        jobs[int(job_id)] = JobSnapshot(
            job_id=int(job_id),
            state=state.partition(" ")[0],
            user_id=int(uid),
            user=user,
            restart_count=int(restarts),
            start_time=times[start],
            end_time=times[end],
            batch=batch == "1",
            requeueable=requeue == "1",
            nodes=nodes if nodes not in ("(null)", "") else "",
            reason=reason,
            partition=partition,
            work_dir=work_dir,
            stdout=_whole_stdout(stdout, work_dir, job_id),
            name=name,
            comment=comment if comment != "(null)" else "",
        )
    return list(jobs.values())


def _whole_stdout(stdout: str, work_dir: str, job_id: str) -> str:
    # Slurm 22.05's squeue prints the default "WorkDir/slurm-N.out" through a 1024-byte
    # buffer (print.c, _print_job_std_out): under a deep working directory it comes out cut.
    if len(stdout) < 1023 // 4:  # a UTF-8 character takes at most 4 bytes: too short to be cut
        return stdout
    default = f"{work_dir}/slurm-{job_id}.out"
    encoded = default.encode()
    return default if len(encoded) > 1023 and stdout == _text(encoded[:1023]) else stdout


def _check_size(command: Sequence[str], env: Mapping[str, str]) -> None:
    """CommandTooLong when the kernel would refuse to start `command` for its size (E2BIG)."""
    for index, arg in enumerate(command):
        if (size := len(os.fsencode(arg))) > MAX_ARGUMENT_BYTES:
            raise CommandTooLong(command, f"argument {index} is {size} bytes, over the {MAX_ARGUMENT_BYTES} the "
                                          f"kernel takes for one argument; not run")  # fmt: skip
    # Each string counts with its NUL and its pointer.
    total = sum(len(os.fsencode(arg)) + 9 for arg in command)
    total += sum(len(os.fsencode(key)) + len(os.fsencode(value)) + 10 for key, value in env.items())
    if total > (limit := os.sysconf("SC_ARG_MAX")):
        raise CommandTooLong(command, f"its arguments and environment take {total} bytes, over the {limit} the "
                                      f"kernel takes (getconf ARG_MAX); not run")  # fmt: skip


def _start_failure(command: Sequence[str], exc: OSError, env: Mapping[str, str]) -> str:
    """What an admin needs to know when the kernel would not start a command."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    candidates = [Path(folder or ".") / command[0] for folder in env.get("PATH", os.defpath).split(":")]
    where = next((str(path) for path in candidates if path.exists()), command[0])
    if exc.errno == errno.E2BIG:
        largest = sorted(env.items(), key=lambda item: len(item[1]), reverse=True)[:3]
        sizes = ", ".join(f"{key} ({len(value)} bytes)" for key, value in largest)
        return (f"the kernel refused to start it (E2BIG: {exc.strerror}): one argument or environment variable is "
                f"over {MAX_ARGUMENT_BYTES} bytes, or all of them over getconf ARG_MAX; the largest variables of "
                f"the environment it was given: {sizes}")  # fmt: skip
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC):
        return (f"{where} cannot be executed ({code}: {exc.strerror}): check its mode, owner and first line, and that "
                f"its filesystem is not mounted noexec")  # fmt: skip
    if exc.errno in _TRANSIENT_ERRNOS:
        return f"could not start {where} ({code}: {exc.strerror}): the host is short of memory or processes"
    return f"could not start {where} ({code}: {exc.strerror})"


class CommandGateway:
    """Slurm through its own commands, each under a timeout."""

    backend = "commands"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def run(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        """Run one Slurm command (in `env`, else the agent's environment); its output.

        A SlurmError (transient or not) when it cannot start, fails or hangs; CommandTooLong,
        without running it, when the kernel would refuse it for its size.
        """
        environment = os.environ if env is None else env
        _check_size(command, environment)
        try:
            done = subprocess.run(list(command), capture_output=True, timeout=self.timeout, check=False, env=env)
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(command, f"no answer within {self.timeout:g} s", transient=True) from exc
        except FileNotFoundError as exc:
            raise SlurmError(command, f"{command[0]} is not installed or not on PATH", transient=False) from exc
        except OSError as exc:
            raise SlurmError(command, _start_failure(command, exc, environment),
                             transient=exc.errno in _TRANSIENT_ERRNOS) from exc  # fmt: skip
        if done.returncode != 0:
            message = _text(done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            raise SlurmError(command, message, transient=bool(_TRANSIENT.search(message)))
        return _text(done.stdout)

    def _squeue(self, args: Sequence[str], **format_variable: str) -> str:
        """squeue with its output format (and so its token) in the environment, out of other users' sight."""
        # squeue takes SQUEUE_FORMAT over SQUEUE_FORMAT2, and other SQUEUE_* variables filter
        # or repeat jobs (SQUEUE_USERS, SQUEUE_PARTITION, SQUEUE_PRIORITY...): a job they hid
        # would pass for gone. None of the agent's own environment applies.
        env = {key: value for key, value in os.environ.items() if not key.startswith("SQUEUE_")}
        return self.run([*SQUEUE_COMMAND, *args], env={**env, **format_variable})

    def _read_jobs(self, args: Sequence[str]) -> list[JobSnapshot]:
        """The jobs `squeue args` lists, read under a fresh token."""
        token = new_token()
        return parse_squeue(self._squeue(args, SQUEUE_FORMAT2=squeue_format(token)), token)

    def list_jobs(self) -> list[JobSnapshot]:
        """All jobs in slurmctld's memory (finished ones stay for MinJobAge), one squeue call."""
        return self._read_jobs([])

    def job(self, job_id: int) -> JobSnapshot | None:
        """One job (for the CLI; the agent reads all jobs at once); None when Slurm does not know it."""
        try:
            jobs = self._read_jobs(["-j", str(job_id)])
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
        """Add `nodes` to the job's ExcNodeList, keeping the user's own exclusions.

        The current list is squeue's ExcNodes under a fresh token, with nothing a user typed
        in front of it (`scontrol show job` prints JobName first, and a name can read
        `x ExcNodeList=...`). Only nodes of the cluster's partitions count: Slurm refuses
        others, and their number bounds the list's expansion.
        """
        known = {node for members in self.partition_nodes().values() for node in members}
        token = new_token()
        command = [*SQUEUE_COMMAND, "-j", str(job_id)]
        output = self._squeue(["-j", str(job_id)], SQUEUE_FORMAT=f"%i{token}%x{token}")
        listed = [excluded for shown, excluded in split_records(output, token, 2, command) if shown == str(job_id)]
        if len(listed) != 1:
            raise SlurmOutputError(command, f"squeue listed job {job_id} {len(listed)} times, expected once")
        try:
            have = expand_hostlist("" if listed[0] == "(null)" else listed[0], limit=len(known))
        except HostlistError as exc:
            raise SlurmOutputError(command, f"job {job_id}'s ExcNodes: {exc}") from exc
        if unknown := [node for node in nodes if node not in known]:
            log.warning("job %s: %s not excluded: no partition of this cluster has them (sinfo)", job_id,
                        ",".join(unknown))  # fmt: skip
        kept = [node for node in have if node in known]
        added = [node for node in dict.fromkeys(nodes) if node in known and node not in kept]
        if added:
            self.update(job_id, ExcNodeList=compress_hostlist(kept + added))

    def drain(self, node: str, reason: str) -> None:
        """Drain one node; the reason tells admins which job and evidence made AJR do it."""
        self.run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])

    def partition_nodes(self) -> dict[str, list[str]]:
        """Partition name to node names, from `scontrol -o show partition` (the admin's text alone).

        Not sinfo: it hides FUTURE nodes, which are the partition's all the same (a job
        excluded from its only running node waits for them). `Nodes=ALL` is every node
        sinfo lists. Hidden partitions are included; a partition without nodes is left out.
        """
        command = ["scontrol", "-o", "show", "partition"]
        partitions: dict[str, list[str]] = {}
        for line in self.run(command).splitlines():
            fields = dict(item.partition("=")[::2] for item in line.split())
            name, nodes = fields.get("PartitionName", ""), fields.get("Nodes", "")
            if not name:
                raise SlurmOutputError(command, f"a line without PartitionName=: {line[:100]!r}")
            if nodes == "ALL":
                members = self.run(["sinfo", "-h", "-a", "-N", "-o", "%N"]).split()
            else:
                try:
                    members = expand_hostlist("" if nodes == "(null)" else nodes)
                except HostlistError as exc:
                    raise SlurmOutputError(command, f"partition {name}'s Nodes: {exc}") from exc
            if members:
                partitions[name] = list(dict.fromkeys(members))
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
