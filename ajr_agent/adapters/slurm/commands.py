"""Slurm through its own commands: one `squeue` reads the queue, `scontrol` acts, each under a timeout.

One `squeue` per poll takes 0.2-0.3 s at 10,000 jobs where `squeue --json` takes 1.7 s
and 470 MB. Every command inherits the environment, so `SLURM_CONF` picks the cluster.
A command is checked against the kernel's size limits before it runs, and a command
that cannot start says why in words an admin can act on.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Mapping, Sequence

from ajr_agent.adapters.slurm.calls import NODE_STATES_COMMAND
from ajr_agent.adapters.slurm.errors import CommandTooLong, SlurmError, SlurmOutputError, is_transient
from ajr_agent.adapters.slurm.squeue import (
    SQUEUE_COMMAND,
    new_token,
    parse_squeue,
    slurm_text,
    split_records,
    squeue_format,
)
from ajr_agent.adapters.slurm.sinfo import parse_node_states
from ajr_agent.adapters.slurm_config import SHOW_CONFIG_COMMAND, parse_show_config
from ajr_agent.adapters.slurm_config import slurm_user as configured_slurm_user
from ajr_agent.domain.hostlist import HostlistError, compress_hostlist, expand_hostlist
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.node_states import NodeState

log = logging.getLogger(__name__)

# The kernel refuses (E2BIG) any one argument over 32 pages (MAX_ARG_STRLEN: 128 KiB with
# 4 KiB pages, its NUL included), and argv with the environment over sysconf(SC_ARG_MAX).
MAX_ARGUMENT_BYTES = 32 * 4096 - 1
# After a begin time, the scheduler pass is asked for this much later: slurmctld compares
# whole seconds, and a pass within the begin second would find the job not yet eligible.
NUDGE_MARGIN = 0.05
# StartTime values a few seconds ahead, as AJR sets them after a release.
_NOW_PLUS_SECONDS = re.compile(r"now\+([0-9]{1,2})(?:s|sec|seconds?)?")
# Failures to start a command that may pass: out of memory or processes, a file being replaced.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EINTR, errno.ETXTBSY, errno.EMFILE, errno.ENFILE})


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


def _seconds_ahead(start_time: str) -> int | None:
    """The N of a StartTime `now+N` (seconds, under 100), None for any other value."""
    found = _NOW_PLUS_SECONDS.fullmatch(start_time)
    return int(found[1]) if found else None


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
            message = slurm_text(done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            raise SlurmError(command, message, transient=is_transient(message))
        return slurm_text(done.stdout)

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
        return configured_slurm_user(parse_show_config(self.run(SHOW_CONFIG_COMMAND))) or "root"

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
        """Update job fields; values go as one argument each, so spaces are safe.

        A StartTime a few seconds ahead (`now+N`) gets a scheduler pass when it comes
        (`schedule_at`): Slurm runs none for a begin time that passes.
        """
        self.run(["scontrol", "update", f"JobId={job_id}", *(f"{key}={value}" for key, value in fields.items())])
        if (delay := _seconds_ahead(fields.get("StartTime", ""))) is not None:
            self.schedule_at(job_id, math.floor(time.time()) + delay)

    def schedule_at(self, job_id: int, begin: float) -> None:
        """Ask slurmctld for a scheduler pass once `begin` (the job's begin time, epoch) has come.

        Slurm's main scheduler runs soon after a job update (at most one such pass every
        batch_sched_delay, 3 s), every sched_interval (60 s), and its backfill every
        bf_interval (30 s); the pass an update asked for comes before a begin time a few
        seconds ahead, so the job would wait for the next periodic pass. An update that
        sets the same begin time again asks for a pass that finds the job eligible.
        """
        timer = threading.Timer(max(0.0, begin - time.time()) + NUDGE_MARGIN, self._nudge, (job_id, begin))
        timer.daemon = True
        timer.start()

    def _nudge(self, job_id: int, begin: float) -> None:
        when = datetime.fromtimestamp(begin).isoformat(timespec="seconds")
        try:
            self.run(["scontrol", "update", f"JobId={job_id}", f"StartTime={when}"])
        except SlurmError as exc:
            # The job started already, or left: nothing to schedule.
            log.debug("job %s: no scheduler pass asked at its begin time: %s", job_id, exc)

    def exclude_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Add `nodes` to the job's ExcNodeList, keeping the user's own exclusions.

        The current list is squeue's ExcNodes under a fresh token, with nothing a user typed
        in front of it (`scontrol show job` prints JobName first, and a name can read
        `x ExcNodeList=...`). Only nodes of the cluster's partitions count: Slurm refuses
        others, and their number bounds the list's expansion.
        """
        known, have = self._exclusions(job_id)
        if unknown := [node for node in nodes if node not in known]:
            log.warning("job %s: %s not excluded: no partition of this cluster has them (sinfo)", job_id,
                        ",".join(unknown))  # fmt: skip
        kept = [node for node in have if node in known]
        added = [node for node in dict.fromkeys(nodes) if node in known and node not in kept]
        if added:
            self.update(job_id, ExcNodeList=compress_hostlist(kept + added))

    def unexclude_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Take `nodes` out of the job's ExcNodeList, keeping every other node in it (the user's own)."""
        known, have = self._exclusions(job_id)
        kept = [node for node in have if node in known and node not in nodes]
        if len(kept) != len([node for node in have if node in known]):
            self.update(job_id, ExcNodeList=compress_hostlist(kept))

    def _exclusions(self, job_id: int) -> tuple[set[str], list[str]]:
        """The cluster's nodes, and the job's ExcNodes as squeue shows them under a fresh token."""
        known = {node for members in self.partition_nodes().values() for node in members}
        token = new_token()
        command = [*SQUEUE_COMMAND, "-j", str(job_id)]
        output = self._squeue(["-j", str(job_id)], SQUEUE_FORMAT=f"%i{token}%x{token}")
        listed = [excluded for shown, excluded in split_records(output, token, 2, command) if shown == str(job_id)]
        if len(listed) != 1:
            raise SlurmOutputError(command, f"squeue listed job {job_id} {len(listed)} times, expected once")
        try:
            return known, expand_hostlist("" if listed[0] == "(null)" else listed[0], limit=len(known))
        except HostlistError as exc:
            raise SlurmOutputError(command, f"job {job_id}'s ExcNodes: {exc}") from exc

    def reboot(self, node: str, reason: str) -> None:
        """Reboot a node once its jobs are done, back in service after (`scontrol reboot ASAP nextstate=RESUME`);
        Slurm drains it meanwhile, with the reason."""
        self.run(["scontrol", "reboot", "ASAP", "nextstate=RESUME", f"reason={reason}", node])

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

    def node_states(self, nodes: Sequence[str]) -> list[NodeState]:
        """The states of `nodes` that Slurm has (sinfo leaves out names it does not know)."""
        if not nodes:
            return []
        return parse_node_states(self.run([*NODE_STATES_COMMAND, "-n", compress_hostlist(list(nodes))]))

    def version(self) -> str:
        """The installed Slurm's version."""
        return self.run(["scontrol", "--version"]).split()[-1]
