"""A Slurm held in memory: the SlurmGateway over plain data, for tests and replays.

It answers what AJR asks as slurmctld does: a requeuehold moves a job to PENDING held
with its restart count one up and its start ~120 s away, a release lifts the hold, an
update sets ExcNodeList, StartTime or a comment, a drain takes a node out of service.
What Slurm refuses it refuses with Slurm's own words, as `scontrol` 22.05.8 prints them
(measured on a live cluster; tests/integration/test_memory_slurm_matches_slurm.py
compares the two), so a SlurmError from here reads like one from the commands. The test
or replay plays the rest of Slurm's part: it puts jobs in `jobs`, starts and ends them
(`start`, `end`), runs the scheduler's pass (`schedule`), lets a slow requeue finish
(`finish_requeue`), loses a node and gets it back (`lose`, `revive`), and scripts the
controller's failures (`fail`, `stall`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, ClassVar, Sequence

from ajr_agent.adapters.slurm.calls import Call, Operation, SlurmAnswer, command_for
from ajr_agent.adapters.slurm.errors import SlurmError, is_transient
from ajr_agent.adapters.slurm.memory_nodes import NodeActions
from ajr_agent.adapters.slurm.releases import SCONTROL_ERROR_SPACE_UNTIL, release_of
from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.hostlist import HostlistError, compress_hostlist, expand_hostlist
from ajr_agent.domain.jobs import ENDED_STATES, HELD_REASONS, JobSnapshot
from ajr_agent.domain.node_states import NodeState

log = logging.getLogger(__name__)

# A requeued job may not start again before this many seconds (its StartTime shows when).
REQUEUE_WAIT = 120.0
# scontrol's relative times: now, now+N with seconds by default.
_RELATIVE_TIME = re.compile(r"now(?:\+([0-9]+)(seconds?|minutes?|hours?|days?|weeks?)?)?")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
# The job fields this Slurm updates; an update of another is a MemorySlurmError, not a guess.
UPDATABLE = ("AdminComment", "Comment", "ExcNodeList", "StartTime")


class MemorySlurmError(AjrError):
    """A test or replay asked the in-memory Slurm for something it does not model or Slurm would not do."""


@dataclass
class _Failure:
    operation: Operation
    target: int | str | None
    error: SlurmError
    left: int


@dataclass(eq=False)
class MemorySlurm(NodeActions):
    """Slurm's jobs, partitions and nodes as plain data, changed by AJR's requests as Slurm would change them.

    `calls` lists every action requested with its arguments, `reads` counts the reads.
    A job in `slow_to_stop` shows COMPLETING after a requeue (new restart count, old start
    and nodes) until `finish_requeue`. Requests may come from several threads at once.
    """

    jobs: dict[int, JobSnapshot] = field(default_factory=dict)
    partitions: dict[str, list[str]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)  # out of service by Slurm's own doing
    lost: dict[str, float] = field(default_factory=dict)  # node -> when Slurm marked it DOWN, not responding
    drained: dict[str, str] = field(default_factory=dict)  # node -> the drain's reason
    excluded: dict[int, list[str]] = field(default_factory=dict)  # job -> its ExcNodeList
    admin_comments: dict[int, str] = field(default_factory=dict)
    slow_to_stop: set[int] = field(default_factory=set)
    slurm_version: str = "22.05.8"
    clock: Callable[[], float] = time.time
    calls: list[Call] = field(default_factory=list)
    reads: Counter[Operation] = field(default_factory=Counter)
    backend: ClassVar[str] = "memory"
    _failures: list[_Failure] = field(default_factory=list, init=False, repr=False)
    _stalls: list[tuple[Operation, int | str | None, threading.Event]] = field(default_factory=list, init=False,
                                                                                repr=False)  # fmt: skip
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    # ---- scripting the controller ----------------------------------------------------------

    def fail(self, operation: Operation, answer: str = SlurmAnswer.UNREACHABLE, *, times: int = 1,
             target: int | str | None = None, transient: bool | None = None) -> None:  # fmt: skip
        """The next `times` requests of `operation` (for `target` alone, when given) fail with `answer`.

        `transient` defaults to what the commands backend would judge of that answer.
        """
        error = SlurmError(command_for(operation, target), str(answer),
                           is_transient(answer) if transient is None else transient)  # fmt: skip
        with self._lock:
            self._failures.append(_Failure(operation, target, error, times))

    def stall(self, operation: Operation, until: threading.Event, target: int | str | None = None) -> None:
        """Requests of `operation` (for `target` alone, when given) wait, as for a controller that does not
        answer, until `until` is set; then they are answered as usual."""
        with self._lock:
            self._stalls.append((operation, target, until))

    # ---- Slurm's own part ----------------------------------------------------------------------

    def start(self, job_id: int, nodes: str = "", at: float | None = None) -> JobSnapshot:
        """The scheduler starts a pending job that is neither held nor waiting for its StartTime."""
        at = self.clock() if at is None else at
        with self._lock:
            job = self._job(job_id)
            if job.state != "PENDING" or job.reason in HELD_REASONS or (job.start_time or 0) > at:
                raise MemorySlurmError(f"job {job_id} cannot start: {job.state}, reason {job.reason!r}, StartTime "
                                       f"{job.start_time}, at {at}")  # fmt: skip
            started = replace(job, state="RUNNING", start_time=at, end_time=None, reason="None",
                              nodes=nodes or job.nodes)  # fmt: skip
            self.jobs[job_id] = started
            return started

    def end(self, job_id: int, state: str = "COMPLETED", reason: str = "None", at: float | None = None) -> JobSnapshot:
        """A running job's attempt ends in `state` (e.g. FAILED with NonZeroExitCode); a pending job only by
        a user's scancel (CANCELLED)."""
        at = self.clock() if at is None else at
        with self._lock:
            job = self._job(job_id)
            if state not in ENDED_STATES or job.ended or (job.state == "PENDING" and state != "CANCELLED"):
                raise MemorySlurmError(f"job {job_id} ({job.state}) cannot end {state}")
            start = at if job.state == "PENDING" else job.start_time
            ended = replace(job, state=state, reason=reason, start_time=start, end_time=at)
            self.jobs[job_id] = ended
            return ended

    def schedule(self, at: float | None = None) -> None:
        """A scheduler pass: a pending job without a hold shows Reason=BeginTime while its StartTime is ahead."""
        at = self.clock() if at is None else at
        with self._lock:
            for job_id, job in self.jobs.items():
                if job.state == "PENDING" and job.reason in ("None", "BeginTime"):
                    waiting = (job.start_time or 0) > at
                    self.jobs[job_id] = replace(job, reason="BeginTime" if waiting else "None")

    def lose(self, node: str, at: float | None = None) -> None:
        """The node's slurmd stops answering and Slurm marks it DOWN, `Not responding`: each job running
        there is requeued (batch and requeueable: pending, one more restart, its start ~120 s away) or
        ends NODE_FAIL, as slurmctld does (kill_running_job_by_node_name)."""
        at = self.clock() if at is None else at
        with self._lock:
            if node not in self._partition_members():
                raise MemorySlurmError(f"no partition has node {node}")
            self.down.add(node)
            self.lost[node] = at
            for job_id, job in list(self.jobs.items()):
                if not job.running or node not in self._job_nodes(job):
                    continue
                if job.batch and job.requeueable:
                    self._requeue(Operation.REQUEUE, job_id, hold=False, reason="BeginTime", at=at)
                else:
                    self.jobs[job_id] = replace(job, state="NODE_FAIL", reason="NodeDown", end_time=at)

    def revive(self, node: str) -> None:
        """The node's slurmd answers again and the node returns to service (ReturnToService=2)."""
        with self._lock:
            self.down.discard(node)
            self.lost.pop(node, None)

    def finish_requeue(self, job_id: int) -> JobSnapshot:
        """A job shown COMPLETING after its requeue has stopped: it shows PENDING, as the requeue left it."""
        with self._lock:
            job = self._job(job_id)
            if job.state != "COMPLETING":
                raise MemorySlurmError(f"job {job_id} is {job.state}, not COMPLETING after a requeue")
            pending = replace(job, state="PENDING", nodes="", start_time=self.clock() + REQUEUE_WAIT)
            self.jobs[job_id] = pending
            return pending

    # ---- the SlurmGateway protocol ---------------------------------------------------------------

    def list_jobs(self) -> list[JobSnapshot]:
        """Every job, in the order it was put in `jobs`."""
        self._read(Operation.LIST_JOBS)
        with self._lock:
            return list(self.jobs.values())

    def requeue_hold(self, job_id: int) -> None:
        """Requeue the job held; refused for a pending job, a job that may not be requeued, an unknown id."""
        self._act(Operation.REQUEUE_HOLD, job_id, {})
        with self._lock:
            self._requeue(Operation.REQUEUE_HOLD, job_id, hold=True)

    def release(self, job_id: int) -> None:
        """Lift a hold. Reason shows None until the scheduler's next pass (`schedule`) says what the job waits for."""
        self._act(Operation.RELEASE, job_id, {})
        with self._lock:
            job = self._known(Operation.RELEASE, job_id)
            if job.ended:
                raise self._refused(Operation.RELEASE, job_id, SlurmAnswer.FINISHED)
            # A running job or a pending one without a hold: scontrol answers 0 and nothing changes.
            if job.state == "PENDING" and job.reason in HELD_REASONS:
                self.jobs[job_id] = replace(job, reason="None")

    def requeue(self, job_id: int) -> None:
        """Requeue the job without a hold; it keeps the Reason its attempt ended with."""
        self._act(Operation.REQUEUE, job_id, {})
        with self._lock:
            self._requeue(Operation.REQUEUE, job_id, hold=False)

    def cancel(self, job_id: int) -> None:
        """Cancel the job; scancel answers 0 for a job already over or unknown, and so does this."""
        self._act(Operation.CANCEL, job_id, {})
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and not job.ended:
                now = self.clock()
                start = now if job.state == "PENDING" else job.start_time
                self.jobs[job_id] = replace(job, state="CANCELLED", start_time=start, end_time=now)

    def update(self, job_id: int, **fields: str) -> None:
        """Set AdminComment, Comment, ExcNodeList or StartTime, all or none: none once the job is over, the
        last two only while it is pending."""
        self._act(Operation.UPDATE, job_id, dict(fields))
        with self._lock:
            self._update(Operation.UPDATE, job_id, fields)

    def exclude_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Add the cluster's nodes among `nodes` to the job's ExcNodeList, as the commands backend does."""
        self._act(Operation.EXCLUDE_NODES, job_id, {"nodes": ",".join(nodes)})
        with self._lock:
            self._known(Operation.EXCLUDE_NODES, job_id)
            known = self._partition_members()
            if unknown := [node for node in nodes if node not in known]:
                log.warning("job %s: %s not excluded: no partition of this cluster has them", job_id,
                            ",".join(unknown))  # fmt: skip
            kept = [node for node in self.excluded.get(job_id, []) if node in known]
            added = [node for node in dict.fromkeys(nodes) if node in known and node not in kept]
            if added:
                self._update(Operation.EXCLUDE_NODES, job_id, {"ExcNodeList": compress_hostlist(kept + added)})

    def drain(self, node: str, reason: str) -> None:
        """Drain the nodes of a host list; Slurm refuses the whole request when one of them does not exist."""
        self._act(Operation.DRAIN, node, {"reason": reason})
        with self._lock:
            known = self._partition_members() | self.down
            try:
                names = expand_hostlist(node, limit=max(len(known), 1))
            except HostlistError:
                names = [node]
            if not names or any(name not in known for name in names):
                raise SlurmError(command_for(Operation.DRAIN, node), f"slurm_update error: {SlurmAnswer.INVALID_NODE}",
                                 transient=False)  # fmt: skip
            for name in names:
                self.drained[name] = reason

    def partition_nodes(self) -> dict[str, list[str]]:
        """Every partition with nodes, and its nodes."""
        self._read(Operation.PARTITION_NODES)
        with self._lock:
            return {name: list(dict.fromkeys(members)) for name, members in self.partitions.items() if members}

    def nodes_out_of_service(self) -> set[str]:
        """Nodes down by Slurm's own doing and nodes drained."""
        self._read(Operation.NODES_OUT_OF_SERVICE)
        with self._lock:
            return set(self.down) | set(self.drained)

    def node_states(self, nodes: Sequence[str]) -> list[NodeState]:
        """The partitions' nodes among `nodes`: lost, drained (draining while a job runs there), allocated to
        a running job, or idle; a node down by Slurm's doing alone shows no reason."""
        self._read(Operation.NODE_STATES)
        with self._lock:
            busy = {name for job in self.jobs.values() if job.running for name in self._job_nodes(job)}
            known = self._partition_members() | self.down
            return [self._node_state(name, name in busy) for name in dict.fromkeys(nodes) if name in known]

    def version(self) -> str:
        """The version this Slurm plays."""
        self._read(Operation.VERSION)
        return self.slurm_version

    # ---- how a request is answered -----------------------------------------------------------------

    def _read(self, operation: Operation) -> None:
        with self._lock:
            self.reads[operation] += 1
        self._answer_or_fail(operation, None)

    def _act(self, operation: Operation, target: int | str, arguments: dict[str, str]) -> None:
        with self._lock:
            self.calls.append(Call(operation, target, arguments))
        self._answer_or_fail(operation, target)

    def _answer_or_fail(self, operation: Operation, target: int | str | None) -> None:
        """Wait out the stalls of this request, then raise its scripted failure, if any."""
        with self._lock:
            stalls = [until for op, on, until in self._stalls if op is operation and on in (None, target)]
        for until in stalls:
            until.wait()
        with self._lock:
            for failure in self._failures:
                if failure.operation is operation and failure.target in (None, target) and failure.left > 0:
                    failure.left -= 1
                    raise failure.error

    def _job(self, job_id: int) -> JobSnapshot:
        if job_id not in self.jobs:
            raise MemorySlurmError(f"job {job_id} is not in this Slurm's jobs")
        return self.jobs[job_id]

    def _known(self, operation: Operation, job_id: int) -> JobSnapshot:
        if job_id not in self.jobs:
            raise self._refused(operation, job_id, SlurmAnswer.INVALID_JOB)
        return self.jobs[job_id]

    def _refused(self, operation: Operation, job_id: int, answer: SlurmAnswer) -> SlurmError:
        message = f"{answer} for job {job_id}"
        if operation is Operation.RELEASE:  # scontrol release reports through slurm_suspend's error too
            release = release_of(self.slurm_version)
            space = "" if release is not None and release >= SCONTROL_ERROR_SPACE_UNTIL else " "
            message += f"\nslurm_suspend error:{space}{answer}"
        if operation is Operation.EXCLUDE_NODES and answer is SlurmAnswer.INVALID_JOB:
            message = f"slurm_load_jobs error: {answer}"  # the squeue that reads the job's exclusions
        return SlurmError(command_for(operation, job_id), message, transient=False)

    def _requeue(self, operation: Operation, job_id: int, hold: bool, reason: str = "",
                 at: float | None = None) -> None:  # fmt: skip
        """Requeue as scontrol does; Slurm's own requeue after a node failure gives its `reason`."""
        job = self._known(operation, job_id)
        if job.state in ("PENDING", "COMPLETING"):  # a requeued job is pending while it completes
            raise self._refused(operation, job_id, SlurmAnswer.PENDING)
        if not job.batch:
            raise self._refused(operation, job_id, SlurmAnswer.BATCH_ONLY)
        if not job.requeueable:
            raise self._refused(operation, job_id, SlurmAnswer.NOT_REQUEUEABLE)
        reason = "job requeued in held state" if hold else reason or job.reason
        if job.running and job_id in self.slow_to_stop:
            self.jobs[job_id] = replace(job, state="COMPLETING", restart_count=job.restart_count + 1, reason=reason)
            return
        at = self.clock() if at is None else at
        self.jobs[job_id] = replace(job, state="PENDING", restart_count=job.restart_count + 1, reason=reason,
                                    start_time=at + REQUEUE_WAIT, end_time=None, nodes="")  # fmt: skip

    def _update(self, operation: Operation, job_id: int, fields: dict[str, str]) -> None:
        """Check every field, then apply them all: one refused field changes nothing."""
        job = self._known(operation, job_id)
        if unmodelled := [key for key in fields if key not in UPDATABLE]:
            raise MemorySlurmError(f"the in-memory Slurm updates {', '.join(UPDATABLE)}, not {', '.join(unmodelled)}")
        if job.ended:  # even a comment: slurmctld refuses any change to a job that is over
            raise self._refused(operation, job_id, SlurmAnswer.FINISHED)
        if {"StartTime", "ExcNodeList"} & set(fields) and job.state not in ("PENDING", "COMPLETING"):
            raise self._refused(operation, job_id, SlurmAnswer.NOT_PENDING)
        begin = self._begin_time(operation, job_id, fields["StartTime"]) if "StartTime" in fields else None
        excluded = self._node_list(operation, job_id, fields["ExcNodeList"]) if "ExcNodeList" in fields else None
        if begin is not None:
            reason = job.reason if job.reason in HELD_REASONS else "None"
            job = replace(job, start_time=begin, reason=reason)
        if "Comment" in fields:
            job = replace(job, comment=fields["Comment"])
        self.jobs[job_id] = job
        if excluded is not None:
            self.excluded[job_id] = excluded
        if "AdminComment" in fields:
            self.admin_comments[job_id] = fields["AdminComment"]

    def _begin_time(self, operation: Operation, job_id: int, value: str) -> float:
        """A StartTime as scontrol reads it: now, now+N[unit], or a local ISO date and time."""
        if found := _RELATIVE_TIME.fullmatch(value):
            count, unit = int(found[1] or 0), (found[2] or "seconds").rstrip("s")
            return self.clock() + count * _UNIT_SECONDS[unit]
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            # scontrol says where its parse stopped; this one does not parse that far.
            raise SlurmError(command_for(operation, job_id), f"Invalid time specification (pos=0): {value}\n"
                                                         f"No changes specified", transient=False) from None  # fmt: skip

    def _node_list(self, operation: Operation, job_id: int, value: str) -> list[str]:
        known = self._partition_members() | self.down
        try:
            names = expand_hostlist(value, limit=max(len(known), 1))
        except HostlistError:
            names = [value]
        if any(name not in known for name in names):
            raise self._refused(operation, job_id, SlurmAnswer.INVALID_NODE)
        return names

    def _node_state(self, name: str, busy: bool) -> NodeState:
        if name in self.lost:
            return NodeState(name, "down", responding=False, reason="Not responding", reason_at=self.lost[name])
        if name in self.down:
            return NodeState(name, "down")
        if name in self.drained:
            return NodeState(name, "draining" if busy else "drained", reason=self.drained[name])
        return NodeState(name, "allocated" if busy else "idle")

    def _job_nodes(self, job: JobSnapshot) -> list[str]:
        try:
            return expand_hostlist(job.nodes, limit=max(len(self._partition_members()), 1)) if job.nodes else []
        except HostlistError:
            return []

    def _partition_members(self) -> set[str]:
        return {node for members in self.partitions.values() for node in members}
