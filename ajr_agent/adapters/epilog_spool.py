"""The EpilogSlurmctld hand-off: files the `ajr-epilog` hook leaves in the spool directory.

slurmctld runs the hook at every job end; it writes `<job>.<restarts>.end` atomically.
The agent reads and removes them each loop: a record is Slurm saying "this job just
ended", so the agent polls at once instead of waiting for its next poll. The record
does not carry the job's final state (the environment has none, and during the hook
squeue still shows COMPLETING): the poll after it does.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".end"
# A spool file is a handful of short lines; anything bigger is not ours.
MAX_RECORD_BYTES = 8192
# The keys the agent reads and the shape of each value: anything else in a record is ignored,
# and a value of another shape is read as missing.
_SHAPES = {
    "job_id": re.compile(r"[0-9]{1,18}"),
    "restart_count": re.compile(r"[0-9]{1,9}"),
    "exit_code": re.compile(r"[0-9]{1,9}:[0-9]{1,9}"),
    "nodes": re.compile(r"[A-Za-z0-9._,\[\]-]{1,4096}"),
}


@dataclass(frozen=True)
class EpilogRecord:
    """What the hook knew when the job ended."""

    job_id: int
    restart_count: int
    exit_code: str  # "3:0": exit status and signal, as Slurm prints them
    nodes: str
    written_at: float


def read_spool(spool_dir: Path) -> list[EpilogRecord]:
    """Read and remove every finished record; a malformed one is set aside as `.bad` and logged."""
    try:
        entries = [e for e in os.scandir(spool_dir) if e.name.endswith(SUFFIX) and not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("cannot read the epilog spool %s: %s", spool_dir, exc)
        return []
    records = []
    for entry in sorted(entries, key=lambda e: e.name):
        path = Path(entry.path)
        try:
            record = _parse(path)
        except (OSError, ValueError) as exc:
            log.error("epilog record %s is malformed (%s); kept as %s.bad", path, exc, path.name)
            path.replace(path.with_name(path.name + ".bad"))
            continue
        path.unlink(missing_ok=True)
        records.append(record)
    return records


def _parse(path: Path) -> EpilogRecord:
    stat = path.lstat()
    if not path.is_file() or path.is_symlink() or stat.st_size > MAX_RECORD_BYTES:
        raise ValueError("not a small regular file")
    fields: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        # The first of each key wins: the hook writes Slurm's values first, and a hook of an older
        # release wrote the job's name and user after them, where a line break can forge a key.
        if sep and key in _SHAPES and key not in fields:
            fields[key] = value.strip() if _SHAPES[key].fullmatch(value.strip()) else ""
    if not fields.get("job_id"):
        raise ValueError("no job_id of digits in it")
    job_id, restarts = int(fields["job_id"]), int(fields.get("restart_count") or 0)
    if path.name != f"{job_id}.{restarts}{SUFFIX}":
        raise ValueError(f"it says job {job_id}, restart {restarts}, and its name says otherwise")
    return EpilogRecord(
        job_id=job_id,
        restart_count=restarts,
        exit_code=fields.get("exit_code", ""),
        nodes=fields.get("nodes", ""),
        written_at=stat.st_mtime,
    )
