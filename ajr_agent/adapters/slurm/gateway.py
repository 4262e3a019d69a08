"""What AJR needs from Slurm, whatever the backend, and the choice of backend.

The command backend reads the queue with one `squeue` per poll and acts with
`scontrol`. A pyslurm backend is used instead when an importable pyslurm matches the
running Slurm's major.minor.
"""

from __future__ import annotations

import logging
import shutil
from typing import Protocol, Sequence

from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError
from ajr_agent.adapters.slurm.pyslurm_backend import PyslurmGateway
from ajr_agent.adapters.slurm.releases import release_of
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.node_states import NodeState
from ajr_agent.domain.settings import Settings, SlurmBackend

log = logging.getLogger(__name__)


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

    def unexclude_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Take nodes out of the job's ExcNodeList, keeping the others (the user's own among them)."""

    def drain(self, node: str, reason: str) -> None:
        """Drain a node with a reason (`scontrol update NodeName=.. State=DRAIN Reason=..`)."""

    def reboot(self, node: str, reason: str) -> None:
        """Reboot a node once idle, back in service after (`scontrol reboot ASAP nextstate=RESUME reason=..`)."""

    def partition_nodes(self) -> dict[str, list[str]]:
        """Every partition's nodes, expanded."""

    def nodes_out_of_service(self) -> set[str]:
        """Nodes that are down, drained or draining."""

    def node_states(self, nodes: Sequence[str]) -> list[NodeState]:
        """The state of each of `nodes` that Slurm has, with its reason (`Not responding`, an admin's)."""

    def version(self) -> str:
        """Slurm's version, e.g. `22.05.8`."""


def open_gateway(settings: Settings) -> SlurmGateway:
    """The backend the settings ask for; with `auto`, pyslurm only when it matches the running Slurm.

    The choice and its reason are logged, with what goes through the commands even with
    pyslurm: the backend decides how every poll and action goes.
    """
    commands = CommandGateway(settings.slurm_command_timeout)
    if settings.slurm_backend is SlurmBackend.COMMANDS:
        log.info("Slurm backend: commands (slurm_backend = commands)")
        return commands
    slurm_version = _slurm_version(commands)
    try:
        import pyslurm  # type: ignore[import-not-found]
    except ImportError as exc:
        if settings.slurm_backend is SlurmBackend.PYSLURM:
            raise SlurmError(["import pyslurm"], f"pyslurm is not importable: {exc}", transient=False) from exc
        log.info("Slurm backend: commands (pyslurm is not importable: %s; Slurm %s)", exc, slurm_version)
        return commands
    pyslurm_version = str(getattr(pyslurm, "__version__", ""))
    release = release_of(slurm_version)
    if release is not None and release == release_of(pyslurm_version):
        log.info("Slurm backend: pyslurm (%s matches Slurm %s)", pyslurm_version, slurm_version)
        gateway = PyslurmGateway(settings.slurm_command_timeout, pyslurm)
        log.info("Slurm backend: through Slurm's commands, not pyslurm: %s", gateway.fallbacks())
        return gateway
    if settings.slurm_backend is SlurmBackend.PYSLURM:
        raise SlurmError(
            ["import pyslurm"],
            f"pyslurm {pyslurm_version} does not match Slurm {slurm_version}: install the pyslurm release built for "
            f"this Slurm (pyslurm numbers Slurm 24.05 as 24.5), or set slurm_backend = \"auto\" to use the commands",
            transient=False,
        )  # fmt: skip
    log.info("Slurm backend: commands (pyslurm %s does not match Slurm %s)", pyslurm_version, slurm_version)
    return commands


def _slurm_version(commands: CommandGateway) -> str:
    """The installed Slurm's version, or why it is not known: the log line of the choice names it."""
    if not shutil.which("scontrol"):
        return "unknown (no scontrol on PATH)"
    try:
        return commands.version()
    except SlurmError as exc:
        return f"unknown ({exc})"
