"""The events the policy decides on: what Slurm, the logs, the verdicts and the executor report.

Events come from Slurm (the poll), from the logs (the rules), from the verdicts worked out
off the loop, and from the executor (an action's outcome). Each says what happened to one
attempt of one job, and when; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from ajr_agent.domain.model import Action, Better, Fault, Verdict


@dataclass(frozen=True)
class AttemptStarted:
    """Slurm runs an attempt (restart count `attempt`) of the job."""

    job_id: int
    attempt: int
    at: float
    nodes: str


@dataclass(frozen=True)
class JobEnded:
    """An attempt ended in Slurm with `slurm_state` (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...)."""

    job_id: int
    attempt: int
    at: float
    slurm_state: str
    reason: str = ""


@dataclass(frozen=True)
class RequeuedBySlurm:
    """The poll shows attempt `attempt` requeued without AJR: pending again, its restart count up.

    Slurm does it itself when it loses a node of a requeueable job; an operator's or the
    user's `scontrol requeue` looks the same in the queue. The verdict tells them apart.
    """

    job_id: int
    attempt: int
    at: float
    restart_count: int


@dataclass(frozen=True)
class JobHeld:
    """A job AJR requeued held is pending again: Slurm has finished the failed attempt."""

    job_id: int
    attempt: int
    at: float


@dataclass(frozen=True)
class AttemptSucceeded:
    """The current attempt has run long enough to count as a successful restart (site criterion)."""

    job_id: int
    attempt: int
    at: float


@dataclass(frozen=True)
class Attributed:
    """The verdict on a failed attempt."""

    job_id: int
    attempt: int
    at: float
    verdict: Verdict
    exclude: tuple[str, ...] = ()  # the blamed nodes that may be excluded (never a partition's last ones)
    # What a drain decision needs, read with the verdict (None when Slurm could not say).
    cluster: NodeFacts | None = None
    cluster_error: str = ""  # why `cluster` is None
    drains_last_hour: int = 0  # AJR's drains in the hour before; the site's budget bounds them
    notes: tuple[str, ...] = ()  # what limited the verdict (a deadline, an unknown partition)
    # Set by the node ledger before the policy decides: the blamed nodes that are lemons on
    # evidence AJR trusts and that AJR has not yet drained or rebooted (lemon_action says which).
    act_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeFacts:
    """The cluster's partitions and the nodes already out of service, as Slurm showed them."""

    partitions: tuple[tuple[str, tuple[str, ...]], ...]
    out_of_service: frozenset[str]


@dataclass(frozen=True)
class VerdictOverdue:
    """The verdict on a failed attempt did not come within its deadline: go on without it."""

    job_id: int
    attempt: int
    at: float
    waited: float


@dataclass(frozen=True)
class StragglerFound:
    """The attempt's throughput has dropped below a fraction of its own baseline for a while."""

    job_id: int
    attempt: int
    at: float
    baseline: float
    recent: tuple[float, ...]
    rule: str = ""  # the throughput rule whose readings dropped
    unit: str = ""  # the rule's unit of them, e.g. "tokens/s", "ms/iter"
    better: Better = Better.HIGHER  # lower: a time per iteration, which rose


@dataclass(frozen=True)
class JobForgotten:
    """An operator told AJR to leave the job alone (`ajr forget`)."""

    job_id: int
    at: float
    by: str


@dataclass(frozen=True)
class JobVanished:
    """The job left slurmctld's memory (MinJobAge passed)."""

    job_id: int
    at: float


@dataclass(frozen=True)
class LemonsChanged:
    """The node ledger's word for one job: the lemon nodes to keep out of its next attempts, and
    the nodes trusted again (or forgiven) whose exclusion AJR made for this job is to be taken back."""

    job_id: int
    at: float
    keep_out: tuple[str, ...]
    take_back: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnomalyFound:
    """A log line of an attempt matched an anomaly rule."""

    job_id: int
    attempt: int
    at: float
    rule: str
    category: str  # the rule's own word for it (site rules may add any)
    fault: Fault  # where the rule puts the blame
    path: str
    line: str


@dataclass(frozen=True)
class CheckpointSaved:
    """A log line of an attempt matched a checkpoint rule."""

    job_id: int
    attempt: int
    at: float
    rule: str
    path: str
    line: str


@dataclass(frozen=True)
class CheckpointStarted:
    """A log line of an attempt said a checkpoint save began (a rule of stage "started").

    Not decided on: a save begun has saved nothing. The log feed keeps it until the save
    completes (a CheckpointSaved) or the attempt fails first (a CheckpointFailed).
    """

    job_id: int
    attempt: int
    at: float
    rule: str
    path: str
    line: str


@dataclass(frozen=True)
class CheckpointFailed:
    """A checkpoint save of the attempt began at `at` (its line `line`) and the attempt failed
    before any save completed: nothing was saved, the work since the last save is lost."""

    job_id: int
    attempt: int
    at: float
    rule: str
    path: str
    line: str


@dataclass(frozen=True)
class ActionDone:
    """Slurm carried out an action (or, in dry run, it would have been).

    `tried` is False when no command ran for it now: a dry run, or an action found
    already done in Slurm after a crash.
    """

    action: Action
    at: float
    dry_run: bool = False
    tried: bool = True


@dataclass(frozen=True)
class ActionFailed:
    """Slurm refused an action, or it kept failing until the agent gave up."""

    action: Action
    at: float
    reason: str
    tried: bool = True
    # A requeuehold refused because the job is pending already: Slurm (or someone) requeued it.
    requeued_already: bool = False


Event = (
    AttemptStarted | AttemptSucceeded | JobEnded | JobHeld | RequeuedBySlurm | JobVanished | JobForgotten | Attributed
    | VerdictOverdue | StragglerFound | AnomalyFound | CheckpointSaved | CheckpointFailed | ActionDone | ActionFailed
    | LemonsChanged
)
