"""The two small files of failover: the lease beside the state database, and this host's role record.

The lease lives beside the state database, on the storage both controller hosts reach; only
the active agent writes it. It is replaced whole (write a temporary file, rename it over):
a reader on another host sees the old lease or the new one, never half of either, on local
file systems and on NFS alike. The role record is local (`/run/ajr/control.json`): every
agent, active or standing by, says there what it is, for `ajr status` on that host.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ajr_agent.domain.control import Control, Lease, Role
from ajr_agent.domain.errors import AjrError


class ControlFileError(AjrError):
    """A failover file cannot be read or written."""


class ControlRecord(BaseModel):
    """What an agent says of itself in its host's role record."""

    host: str
    pid: int
    role: Role
    in_control: str
    reason: str
    since: float  # when it took this role (epoch seconds)
    checked_at: float  # when it last asked Slurm


def _replace(path: Path, text: str) -> None:
    """Write `path` whole: readers see the old content or the new, never a mix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ControlFileError(f"{path}: cannot write it: {exc}") from exc


class LeaseFile:
    """The lease at `path`: who acts on the shared state database."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> Lease | None:
        """The lease as it is now; None when there is none.

        A lease that cannot be parsed still counts as held (by whoever wrote it): its content
        stands for its serial, so it goes stale like any other once it stops changing.
        """
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ControlFileError(f"{self.path}: cannot read the lease: {exc}") from exc
        try:
            data = json.loads(text)
            return Lease(str(data["holder"]), int(data["serial"]), bool(data.get("released", False)))
        except (ValueError, KeyError, TypeError):
            return Lease(f"unreadable lease {text[:60]!r}", zlib.crc32(text.encode()))

    def write(self, lease: Lease) -> None:
        """Take or renew the lease."""
        _replace(self.path, json.dumps({"holder": lease.holder, "serial": lease.serial, "released": lease.released}))


class ControlRecordFile:
    """This host's role record at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: ControlRecord) -> None:
        """Say what this agent is now."""
        _replace(self.path, record.model_dump_json())

    def read(self) -> ControlRecord | None:
        """The record, None when no agent on this host wrote one (or it cannot be understood)."""
        try:
            return ControlRecord.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError):
            return None


def record_of(control: Control, host: str, since: float, checked_at: float) -> ControlRecord:
    """The role record for a judgement of this agent's role."""
    return ControlRecord(host=host, pid=os.getpid(), role=control.role, in_control=control.in_control,
                         reason=control.reason, since=since, checked_at=checked_at)  # fmt: skip
