"""The requests of the SlurmGateway protocol as data: what was asked, the command it is, Slurm's words for no.

The in-memory Slurm records AJR's requests as Calls and refuses them with SlurmAnswers,
naming in each SlurmError the command the commands backend would have run, so that
what reads errors (logs, metrics labels) sees the same from both.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from ajr_agent.adapters.slurm.squeue import SQUEUE_COMMAND

# The nodes' states, one line each, the reason last: it is the only field with free text.
NODE_STATES_COMMAND = ("sinfo", "-h", "-N", "-a", "-o", "%N|%o|%T|%H|%E")


class Operation(StrEnum):
    """The requests of the SlurmGateway protocol, each named as its method."""

    LIST_JOBS = "list_jobs"
    REQUEUE_HOLD = "requeue_hold"
    RELEASE = "release"
    REQUEUE = "requeue"
    CANCEL = "cancel"
    UPDATE = "update"
    EXCLUDE_NODES = "exclude_nodes"
    DRAIN = "drain"
    UNEXCLUDE_NODES = "unexclude_nodes"
    REBOOT = "reboot"
    PARTITION_NODES = "partition_nodes"
    NODES_OUT_OF_SERVICE = "nodes_out_of_service"
    NODE_STATES = "node_states"
    VERSION = "version"


class SlurmAnswer(StrEnum):
    """Slurm's words (slurm_strerror) for what it refuses or cannot do; scontrol adds "for job N"."""

    INVALID_JOB = "Invalid job id specified"
    PENDING = "Job is pending execution"
    NOT_PENDING = "Job is no longer pending execution"
    FINISHED = "Job has already finished"
    NOT_REQUEUEABLE = "Requested operation is presently disabled"
    BATCH_ONLY = "Only batch jobs are accepted or processed"  # not measured: no non-batch job here
    INVALID_NODE = "Invalid node name specified"
    UNREACHABLE = "Unable to contact slurm controller (connect failure)"


class Call(NamedTuple):
    """One action AJR asked of Slurm, answered or refused: ("update", 7, {"StartTime": "now+2"})."""

    operation: Operation
    target: int | str  # a job id, or the node list of a drain
    arguments: dict[str, str]

    def __str__(self) -> str:
        return " ".join([self.operation.value, str(self.target), *(f"{k}={v}" for k, v in self.arguments.items())])


def command_for(operation: Operation, target: int | str | None) -> list[str]:
    """The command the commands backend runs for this request: what the in-memory Slurm's errors name."""
    where = [] if target is None else [str(target)]
    commands = {
        Operation.LIST_JOBS: list(SQUEUE_COMMAND),
        Operation.REQUEUE_HOLD: ["scontrol", "requeuehold", *where],
        Operation.RELEASE: ["scontrol", "release", *where],
        Operation.REQUEUE: ["scontrol", "requeue", *where],
        Operation.CANCEL: ["scancel", *where],
        Operation.UPDATE: ["scontrol", "update", *(f"JobId={t}" for t in where)],
        Operation.EXCLUDE_NODES: ["scontrol", "update", *(f"JobId={t}" for t in where)],
        Operation.DRAIN: ["scontrol", "update", *(f"NodeName={t}" for t in where), "State=DRAIN"],
        Operation.UNEXCLUDE_NODES: ["scontrol", "update", *(f"JobId={t}" for t in where)],
        Operation.REBOOT: ["scontrol", "reboot", "ASAP", "nextstate=RESUME", *where],
        Operation.PARTITION_NODES: ["scontrol", "-o", "show", "partition"],
        Operation.NODES_OUT_OF_SERVICE: ["sinfo", "-h", "-N", "-o", "%N|%T"],
        Operation.NODE_STATES: list(NODE_STATES_COMMAND),
        Operation.VERSION: ["scontrol", "--version"],
    }
    return commands[operation]
