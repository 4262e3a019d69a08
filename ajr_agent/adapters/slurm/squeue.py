"""Reading the queue from squeue's text: the format AJR asks for, its token, and the parse (pure).

Slurm prints job names, paths and comments exactly as users typed them, line breaks
and control characters included, so no character is safe to separate fields or
records with. Every squeue read ends each field with a token drawn for that read
alone (`new_token`) and splits on the token, never on line breaks. The token reaches
squeue through its environment: every user can read a root process's argv in /proc,
not its environment, and no one can type into a job name a token that does not exist
yet.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Sequence

from ajr_agent.adapters.slurm.errors import SlurmOutputError
from ajr_agent.domain.jobs import JobSnapshot


SQUEUE_COMMAND = ("squeue", "-h", "-t", "all")
# Fields Slurm fills from its own state and the admin's names (users, nodes, partitions):
# each ends with \x1f, one byte where a token takes 23 (at 10,000 jobs squeue prints 2 MB
# instead of 4.3 with a token after every field, and both squeue and the parse take less).
SQUEUE_SLURM_FIELDS = (
    "JobID", "State", "UserId", "UserName", "RestartCnt", "StartTime", "EndTime", "BatchFlag", "Requeue",
    "NodeList", "Partition", "NumTasks",
)  # fmt: skip
# Fields with text users choose, each ended by the read's token. Reason comes first: it is
# Slurm's text (`scontrol update JobId=N Reason=...` is refused, even to the job's owner)
# but slurmctld builds some of it from plugins' messages, so it is trusted with nothing:
# as the last field before a token, any \x1f in it stays in it.
SQUEUE_TEXT_FIELDS = ("Reason", "WorkDir", "STDOUT", "Name", "Comment")
SQUEUE_FIELDS = SQUEUE_SLURM_FIELDS + SQUEUE_TEXT_FIELDS
# Array tasks ("12_3", "12_[1-5%2]") and heterogeneous job components ("12+0"): not managed.
_COMPONENT_ID = re.compile(r"[0-9]+[_+][0-9\[\],%-]+")


def slurm_text(data: bytes) -> str:
    """What Slurm printed, as text: bytes that are not UTF-8 become U+FFFD."""
    # Slurm passes users' bytes through as they are. A strict decode would stop the read of
    # everyone's jobs, and surrogate escapes would reach SQLite, JSON and metric labels,
    # which refuse them (for that job, at every poll). The owner of such a path loses only
    # AJR's reading of logs under it.
    return data.decode("utf-8", "replace")


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
        job_id, state, uid, user, restarts, start, end, batch, requeue, nodes, partition, tasks, reason = fields
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
            tasks=int(tasks) if tasks.isdigit() and tasks.isascii() else 0,
            work_dir=work_dir,
            stdout=_whole_stdout(stdout, work_dir, job_id),
            name=name,
            comment=comment if comment != "(null)" else "",
        )
    return list(jobs.values())


def _whole_stdout(stdout: str, work_dir: str, job_id: str) -> str:
    # Slurm 26.05's squeue prints the default output file as sbatch left it, relative to the
    # working directory (`slurm-%j.out`), where 22.05 and 24.11 print it whole.
    if stdout and not stdout.startswith("/") and work_dir.startswith("/"):
        stdout = f"{work_dir.rstrip('/')}/{stdout}"
    # Slurm 22.05's squeue prints the default "WorkDir/slurm-N.out" through a 1024-byte
    # buffer (print.c, _print_job_std_out): under a deep working directory it comes out cut.
    if len(stdout) < 1023 // 4:  # a UTF-8 character takes at most 4 bytes: too short to be cut
        return stdout
    default = f"{work_dir}/slurm-{job_id}.out"
    encoded = default.encode()
    return default if len(encoded) > 1023 and stdout == slurm_text(encoded[:1023]) else stdout

