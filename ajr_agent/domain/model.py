"""The plain data the policy works on: managed jobs and their attempts, verdicts, actions out.

The policy turns (job, event) into a Decision: a new job, actions and notes. The events
themselves are in domain.events. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ajr_agent.domain.spec import ResumeMode


class Phase(StrEnum):
    """Where a managed job stands in AJR's recovery cycle."""

    WATCHING = "watching"  # the current attempt is pending or running; no failure to handle
    HOLDING = "holding"  # requeuehold decided, not yet confirmed by Slurm
    HELD = "held"  # requeued held; Slurm is still finishing the failed attempt
    RELEASING = "releasing"  # held after a failure; release decided, not yet confirmed
    RESTARTING = "restarting"  # released; waiting for the next attempt to start
    HANDING_OVER = "handing_over"  # singleton chain: stopping this job and releasing the next one
    HANDED_OVER = "handed_over"  # singleton chain: the next job of the chain carries on
    STOPPED = "stopped"  # AJR will not recover it again (limit, crash-loop, refusal); left as it is
    FINISHED = "finished"  # ended well, cancelled by its user, or its chain ended; nothing to do
    GONE = "gone"  # no longer in slurmctld's memory
    FORGOTTEN = "forgotten"  # an operator told AJR to leave it alone


class StopCause(StrEnum):
    """Why AJR stopped recovering a job (STOPPED), or why its recovery ended (FINISHED, FORGOTTEN).

    Code reads this; `stop_reason` is the sentence for people, with the details.
    """

    CRASH_LOOP = "crash_loop"  # crashloop_threshold failed attempts in a row without a new checkpoint
    LIMIT = "limit"  # the requeue limit is used up
    SLURM_REFUSED = "slurm_refused"  # Slurm refused the requeuehold (the job is not requeueable, ...)
    RELEASE_FAILED = "release_failed"  # the held job could not be released
    CANCEL_FAILED = "cancel_failed"  # singleton: the failing job could not be stopped; its successor stays held
    SUCCESSOR_RELEASE_FAILED = "successor_release_failed"  # singleton: the next job could not be released
    CHAIN_ENDED = "chain_ended"  # singleton: no held job of the chain was left to release
    FORGOTTEN = "forgotten"  # an operator told AJR to leave it alone
    NODE_LIMIT = "node_limit"  # the cap on requeues after failures put on a node is used up
    INFRASTRUCTURE_LIMIT = "infrastructure_limit"  # the cap on requeues after infrastructure failures is used up


class Awaiting(StrEnum):
    """A step the policy waits for before it goes on with a job."""

    # The failed attempt's verdict, worked out off the loop: the release (or, in a singleton
    # chain, the successor's release) waits for it, so that a faulty node is kept out.
    VERDICT = "verdict"
    # Slurm requeued the job itself: the verdict says whether it lost one of the job's nodes
    # (a failure, counted and recovered) or someone requeued it (left to Slurm, not counted).
    LOST_NODE = "lost_node"
    # The held job's release (or a NODE_FAIL end) waits for Slurm's states of the failed attempt's
    # nodes read once more: a node whose slurmd died with the job is given up by Slurm only after
    # SlurmdTimeout, often after the failure line has been judged.
    NODE_STATES = "node_states"


class Fault(StrEnum):
    """Where a failure's fault lies; a node fault keeps the node out."""

    NODE = "node"
    APPLICATION = "application"
    INFRASTRUCTURE = "infrastructure"
    UNKNOWN = "unknown"


class Budget(StrEnum):
    """Whose failure a requeue is counted against: each has its own counter and cap."""

    APPLICATION = "application"  # the job's own (and unknown) failures
    NODE = "node"
    INFRASTRUCTURE = "infrastructure"


class Basis(StrEnum):
    """What a verdict rests on: whether AJR may act on it beyond the user's own job."""

    JOB_LOG = "job_log"  # a line of the job's own log: its user wrote it, and could name any node
    NODE_LOG = "node_log"  # the node's own kernel or system log under node_log_dir
    SLURM = "slurm"  # Slurm's own word: the job ended NODE_FAIL, a node it lost


class Better(StrEnum):
    """Which way a throughput reading improves: a rate rises, a time per iteration falls."""

    HIGHER = "higher"
    LOWER = "lower"


class NoteKind(StrEnum):
    """What a line of a job's story is about (the cockpit and `ajr show` group by it)."""

    MANAGED = "managed"
    ATTEMPT = "attempt"
    CHECKPOINT = "checkpoint"
    CHECKPOINT_FAILED = "checkpoint_failed"  # a save that started and never completed before the failure
    FAILURE = "failure"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    ACTION = "action"
    VERDICT = "verdict"
    HELD = "held"
    ENDED = "ended"
    NOT_REQUEUED = "not_requeued"
    CHAIN_ENDED = "chain_ended"
    STRAGGLER = "straggler"
    THROUGHPUT = "throughput"  # which rule's readings an attempt's throughput chart shows, in what unit
    SUCCESS = "success"
    EPILOG = "epilog"
    LOG = "log"
    WARNING = "warning"
    FORGOTTEN = "forgotten"
    GONE = "gone"


class Outcome(StrEnum):
    """How an attempt ended, as far as training time is concerned."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ENDED = "ended"  # ended otherwise (preempted, ...): neither counted as lost nor as success


@dataclass(frozen=True)
class Attempt:
    """One run of a job (one restart count); in a singleton chain, each job is an attempt of the chain."""

    job_id: int
    attempt: int
    started: float
    ended: float | None
    outcome: Outcome
    end_reason: str
    first_checkpoint: float | None
    last_checkpoint: float | None
    nodes: str


@dataclass(frozen=True)
class ManagedJob:
    """What AJR knows of one job that opted in: the policy's state plus what operators see."""

    job_id: int
    name: str
    user: str
    user_id: int
    mode: ResumeMode
    requested_limit: int | None  # the job's max_requeue_times, None when it set none
    limit: int  # effective: min(requested, site cap)
    phase: Phase = Phase.WATCHING
    requeues_used: int = 0  # in a singleton chain: releases of chain jobs so far
    attempt: int = 0  # Slurm's restart count of the attempt last seen
    handled_attempt: int | None = None  # attempt whose failure has been dealt with
    failure_streak: int = 0  # failed attempts in a row that saved no checkpoint
    stop_reason: str | None = None  # for people; code reads stop_cause
    stop_cause: StopCause | None = None
    awaiting: Awaiting | None = None
    chain: str = ""  # singleton mode: "name@first_job_id", the jobs that took over from one another
    heartbeat_timeout: int | None = None  # the job's own hang threshold (seconds), None: the site's
    partition: str = ""
    verdict: str = ""  # where the handled failure's fault lies: node, application, infrastructure, unknown
    verdict_nodes: str = ""  # comma-separated nodes a node verdict blamed and AJR may keep out
    excluded_nodes: str = ""  # nodes AJR has excluded from the job's next attempts
    keep_out: str = ""  # lemon nodes (domain.ledger) to keep out of the job's next attempts, comma-separated
    app_requeues: int = 0  # requeues counted against the job's own failures (Budget.APPLICATION)
    node_requeues: int = 0  # requeues after failures a verdict put on a node
    infra_requeues: int = 0  # requeues after failures a verdict put on the shared infrastructure
    charged: Budget | None = None  # the budget the handled failure is counted against
    straggler_reported: bool = False  # the current attempt's throughput drop has been reported
    successor: int | None = None  # singleton mode: the held job released after this one failed
    slurm_state: str = ""
    nodes: str = ""
    work_dir: str = ""
    stdout_dir: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    attempt_started: float | None = None
    attempt_ended: float | None = None
    attempt_outcome: Outcome = Outcome.RUNNING
    attempt_end_reason: str = ""
    attempt_first_checkpoint: float | None = None
    attempt_last_checkpoint: float | None = None
    attempt_succeeded: bool = False  # the restart criterion (first checkpoint, or run time) was met
    last_checkpoint: float | None = None
    last_anomaly: str | None = None
    last_action: str | None = None

    @property
    def attempt_saved(self) -> bool:
        """The current attempt has saved a checkpoint."""
        return self.attempt_first_checkpoint is not None

    def current_attempt(self) -> Attempt | None:
        """The current attempt as a record of its own, once it has started."""
        if self.attempt < 0 or self.attempt_started is None:
            return None
        return Attempt(
            job_id=self.job_id,
            attempt=self.attempt,
            started=self.attempt_started,
            ended=self.attempt_ended,
            outcome=self.attempt_outcome,
            end_reason=self.attempt_end_reason,
            first_checkpoint=self.attempt_first_checkpoint,
            last_checkpoint=self.attempt_last_checkpoint,
            nodes=self.nodes,
        )


@dataclass(frozen=True)
class UnmanagedJob:
    """A job whose comment mentions APS but whose spec is broken: kept so the CLI can say why."""

    job_id: int
    name: str
    user: str
    comment: str
    problem: str
    first_seen: float


# ---- verdicts -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Where a failure's fault lies, and the lines that say so."""

    fault: Fault
    nodes: tuple[str, ...]  # the nodes at fault, for a node verdict when they are known
    cause: str  # the root cause, e.g. "gpu_hardware (xid_79)"
    evidence: tuple[str, ...]  # the log lines it rests on, "source: line"
    basis: Basis = Basis.JOB_LOG  # where those lines come from; only NODE_LOG and SLURM may drain


# ---- actions ------------------------------------------------------------------------


class ActionKind(StrEnum):
    """The Slurm operations AJR performs."""

    REQUEUE_HOLD = "requeue_hold"  # scontrol requeuehold
    RELEASE = "release"  # scontrol release (and StartTime=now+2)
    CANCEL = "cancel"  # scancel: a failing singleton job must stop before its successor runs
    ANNOTATE = "annotate"  # scontrol update AdminComment=: the decision trail users see
    REQUEUE = "requeue"  # scontrol requeue: an operator's own request
    EXCLUDE = "exclude"  # scontrol update ExcNodeList=: keep a faulty node out of the next attempt
    DRAIN = "drain"  # scontrol update NodeName= State=DRAIN: take a faulty node out of service
    REBOOT = "reboot"  # scontrol reboot ASAP nextstate=RESUME: a lemon node rebooted once it is idle
    KEEP_OUT = "keep_out"  # scontrol update ExcNodeList=: keep a lemon node out of a pending job
    UNEXCLUDE = "unexclude"  # take AJR's exclusion of a node trusted again out of a pending job's ExcNodeList


@dataclass(frozen=True)
class Action:
    """One Slurm operation decided for one job's attempt.

    `target` is the job the command acts on when it is not the deciding job itself:
    in a singleton chain the failing job releases its successor.
    """

    kind: ActionKind
    job_id: int
    attempt: int
    reason: str
    target: int | None = None
    nodes: str = ""  # for exclude, keep_out, unexclude, drain and reboot: comma-separated node names
    # Set by the journal: the row that tracks this action from decision to outcome.
    journal_id: int | None = None

    @property
    def acts_on(self) -> int:
        """The Slurm job the command is run for."""
        return self.target if self.target is not None else self.job_id


@dataclass(frozen=True)
class Note:
    """A line of a job's story: what happened and what AJR made of it."""

    kind: NoteKind
    text: str


@dataclass(frozen=True)
class Decision:
    """The policy's answer to one event: the job's new state, what to do, what to record."""

    job: ManagedJob
    actions: tuple[Action, ...] = field(default_factory=tuple)
    notes: tuple[Note, ...] = field(default_factory=tuple)
    verdict: Verdict | None = None  # the verdict on the handled failure to keep on record, when taken
