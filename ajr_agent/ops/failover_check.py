"""`ajr doctor` under failover: this host is a controller, the state database lies on storage the
controller hosts share, and every host's agent sees the same controllers.

The hosts cannot see each other's doctor, but they see the shared storage: each run leaves
a record of its host and of the controllers it sees in `<state_db>.hosts/`, and reads the
others'. Another controller's record found there proves the storage is shared; its
controller list must be this host's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.domain.control import ControllerPing, FailoverMode, NotAController, Role, judge
from ajr_agent.domain.settings import Settings
from ajr_agent.ops.check import Check

# File systems one host alone sees: a failover's state database must not lie on one of them.
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat",
                                "ramfs"})  # fmt: skip


def file_system_of(path: Path, mounts: str) -> str:
    """The type of the file system holding `path`, from /proc/mounts' text ('' if none matches)."""
    best, kind = "", ""
    resolved = str(path.resolve())
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


# What is wrong with a state database on host-local storage under failover, and what to do.
HOST_LOCAL = "a file system of this host alone, which the other controllers cannot reach"
MOVE_STATE_DB = "move state_db to storage every controller host mounts (NFS, Lustre, GPFS)"


def storage_of(directory: Path, mounts: str) -> tuple[str, bool]:
    """The file system type holding `directory` ('' if not known), and whether only this host sees it."""
    kind = file_system_of(directory, mounts)
    return kind, kind in LOCAL_FILE_SYSTEMS


def check_failover(settings: Settings, host: str, ping: Callable[[], Sequence[ControllerPing]],
                   mounts: str) -> list[Check]:  # fmt: skip
    """The failover checks; none when `failover` is off."""
    if settings.failover is FailoverMode.OFF:
        return []
    try:
        pings = list(ping())
    except SlurmError as exc:
        return [Check("failover", False, f"cannot list the controllers: {exc}", "start slurmctld")]
    me = settings.ha_host or host
    hosts = [p.host for p in pings]
    try:
        role = judge(me, pings, Role.STANDBY)
    except NotAController as exc:
        return [Check("failover", False, str(exc), "set ha_host in ajr.toml to this host's name in SlurmctldHost")]
    checks = [Check("failover", len(pings) > 1,
                            f"this host is {me}, one of {', '.join(hosts)}; its agent would be {role.role.value}: "
                            f"{role.reason}" if len(pings) > 1 else
                            f"slurm.conf names one SlurmctldHost ({hosts[0]}): there is no failover to follow",
                            "" if len(pings) > 1 else "add the backup's SlurmctldHost, or set failover = \"off\"")]  # fmt: skip
    directory = settings.state_db.parent
    kind, local = storage_of(directory, mounts)
    checks.append(Check(
        "failover_storage", not local,
        f"{directory} is on {kind or 'an unknown file system'}" + (f": {HOST_LOCAL}" if local else ""),
        MOVE_STATE_DB if local else "",
    ))  # fmt: skip
    checks.append(_compare_hosts(settings, me, hosts))
    return checks


def _compare_hosts(settings: Settings, me: str, hosts: list[str]) -> Check:
    """Leave this host's record beside the database and compare it with the other controllers' records."""
    folder = settings.state_db.with_name(settings.state_db.name + ".hosts")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f".{me}.tmp").write_text(json.dumps({"host": me, "controllers": hosts}))
        os.replace(folder / f".{me}.tmp", folder / f"{me}.json")
    except OSError as exc:
        return Check("failover_hosts", False, f"cannot write {folder}: {exc}", "check the storage's permissions")
    missing, differing = [], []
    for other in (h for h in hosts if h != me):
        try:
            seen = json.loads((folder / f"{other}.json").read_text())["controllers"]
        except (OSError, ValueError, KeyError):
            missing.append(other)
            continue
        if seen != hosts:
            differing.append(f"{other} sees {', '.join(map(str, seen))}")
    if differing:
        return Check("failover_hosts", False, f"this host sees {', '.join(hosts)} but {'; '.join(differing)}",
                             "give every controller host the same slurm.conf")  # fmt: skip
    if missing:
        return Check("failover_hosts", False,
                             f"no record of {', '.join(missing)} in {folder}: `ajr doctor` has not run there, or "
                             f"state_db is not on storage those hosts share",
                             f"run `ajr doctor` on {', '.join(missing)}, then here again")  # fmt: skip
    return Check("failover_hosts", True, f"{', '.join(hosts)} share {folder.parent} and see the same controllers")
