"""Verdicts worked out off the decision loop.

A verdict reads the nodes' own logs on shared storage and asks Slurm for the states of the
job's nodes and the partitions:
either can take seconds, or hang on a stuck mount. Each runs in a small pool of threads,
and its Attributed event comes back to the loop, which meanwhile goes on with every other
job. A verdict that has not come by its deadline comes back as VerdictOverdue instead, and
the job is released without it: a held job stranded by a hung file system is the worse harm.
A thread stuck in the kernel cannot be stopped; the pool is bounded, so a mount that hangs
costs at most its threads, and later requests wait in its queue (under their deadlines).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

from ajr_agent.adapters.node_logs import read_node_logs
from ajr_agent.adapters.slurm import SlurmError, SlurmGateway
from ajr_agent.detect.attribution import Evidence, excludable, node_evidence, verdict
from ajr_agent.detect.origins import Layout
from ajr_agent.detect.rules import RuleSet
from ajr_agent.domain.events import Attributed, NodeFacts, VerdictOverdue
from ajr_agent.domain.hostlist import expand_hostlist
from ajr_agent.domain.model import Fault, ManagedJob, Verdict
from ajr_agent.domain.node_states import NodeState
from ajr_agent.domain.settings import Settings

log = logging.getLogger(__name__)

# Threads that read node logs at once: enough for a burst of failures, few enough that a
# hung mount ties up little.
WORKERS = 4
# Beyond the node logs' own deadline and Slurm's command timeouts: the time a busy pool
# may take to start a request.
GRACE = 2.0


@dataclass(frozen=True)
class VerdictRequest:
    """What the loop knows of a failed attempt when it asks for the verdict."""

    job: ManagedJob
    attempt: int
    evidence: tuple[Evidence, ...]  # the attempt's anomaly lines from the job's own logs
    ended_state: str  # Slurm's state when the attempt had ended already, else ""
    failed_at: float
    drains_last_hour: int
    tasks: int = 0  # Slurm's task count of the job, which places ranks on nodes (0: not known)
    slurm_only: bool = False  # Slurm's states of the nodes alone, read again after the verdict (no node logs)


@dataclass
class _Pending:
    request: VerdictRequest
    asked: float  # time.monotonic()
    deadline: float
    future: Future[Attributed]


class Verdicts:
    """Asks for verdicts and hands back the ones that are in, or overdue."""

    def __init__(self, settings: Settings, rules: RuleSet, gateway: SlurmGateway, pool: Executor | None = None) -> None:
        """`pool` runs the work; by default WORKERS threads (tests pass one that runs it at once)."""
        self.settings = settings
        self.rules = rules
        self.gateway = gateway
        self.pool = pool or ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ajr-verdict")
        self.pending: dict[tuple[int, int], _Pending] = {}
        self.late: list[Future[Attributed]] = []  # overdue ones, still recorded when they come

    def ask(self, request: VerdictRequest) -> None:
        """Start working out the verdict (once per job and attempt)."""
        key = (request.job.job_id, request.attempt)
        if key in self.pending:
            return
        settings, asked = self.settings, time.monotonic()
        # Up to three Slurm reads: the nodes' states, the partitions, the nodes out of service.
        deadline = asked + settings.attribution_timeout + 3 * settings.slurm_command_timeout + GRACE
        future = self.pool.submit(self._judge, request, settings, self.rules)
        self.pending[key] = _Pending(request, asked, deadline, future)

    def busy(self) -> bool:
        """Some verdict is being worked out and not yet overdue."""
        return bool(self.pending)

    def take(self, now: float) -> list[Attributed | VerdictOverdue]:
        """The verdicts that came in since the last call, then those that passed their deadline."""
        done: list[Attributed | VerdictOverdue] = []
        clock = time.monotonic()
        for key, pending in list(self.pending.items()):
            if pending.future.done():
                del self.pending[key]
                done.append(pending.future.result())
            elif clock > pending.deadline:
                del self.pending[key]
                self.late.append(pending.future)
                waited = clock - pending.asked
                log.warning("job %s: no verdict on attempt %s after %.0f s (node logs or Slurm do not answer)",
                            key[0], key[1], waited)  # fmt: skip
                done.append(VerdictOverdue(key[0], key[1], now, waited))
        for future in [f for f in self.late if f.done()]:
            self.late.remove(future)
            done.append(future.result())
        return done

    def close(self) -> None:
        """Stop taking requests; threads stuck in a read are left to the process's end."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _judge(self, request: VerdictRequest, settings: Settings, rules: RuleSet) -> Attributed:
        # Whatever goes wrong, an event comes back: the job waits for one.
        try:
            return self._attribute(request, settings, rules)
        except Exception as exc:
            log.exception("job %s: working out the verdict failed", request.job.job_id)
            found = Verdict(Fault.UNKNOWN, (), "unknown", ())
            return Attributed(request.job.job_id, request.attempt, time.time(), found,
                              notes=(f"the verdict could not be worked out: {exc}",))  # fmt: skip

    def _attribute(self, request: VerdictRequest, settings: Settings, rules: RuleSet) -> Attributed:
        job, notes = request.job, []
        nodes = expand_hostlist(job.nodes) if job.nodes else []
        from_nodes: list[Evidence] = []
        if settings.node_log_dir and nodes and not request.slurm_only:
            lines, cut = read_node_logs(settings.node_log_dir, nodes, time.monotonic() + settings.attribution_timeout)
            if cut:
                notes.append(f"attribution cut short after {settings.attribution_timeout:g} s of reading node logs")
            from_nodes = node_evidence(lines, rules, request.failed_at, settings.attribution_window)
        slurm: list[NodeState] = []
        if nodes:
            try:
                slurm = self.gateway.node_states(nodes)
            except SlurmError as exc:
                notes.append(f"Slurm's states of the job's nodes unknown: {exc}")
        addresses = {state.name: state.address for state in slurm if state.address}
        layout = Layout(tuple(nodes), request.tasks, addresses)
        found = verdict(request.evidence, from_nodes, layout, request.ended_state, slurm)
        blames = found.fault is Fault.NODE and bool(found.nodes)
        cluster: NodeFacts | None = None
        cluster_error = ""
        if blames and (settings.exclude_faulty_nodes or settings.drain_faulty_nodes):
            try:
                partitions = self.gateway.partition_nodes()
                out = self.gateway.nodes_out_of_service() if settings.drain_faulty_nodes else set()
                cluster = NodeFacts(tuple((p, tuple(m)) for p, m in partitions.items()), frozenset(out))
            except SlurmError as exc:
                cluster_error = str(exc)
        exclude: tuple[str, ...] = ()
        if blames and settings.exclude_faulty_nodes:
            members = dict(cluster.partitions).get(job.partition, ()) if cluster else ()
            if cluster is None:
                notes.append(f"partition {job.partition} unknown ({cluster_error}); excluding without the "
                             "last-node check")  # fmt: skip
            exclude, why = excludable(found.nodes, job.excluded_nodes.split(","), members)
            if why:
                notes.append(f"{', '.join(found.nodes)} {why}")
        return Attributed(job.job_id, request.attempt, time.time(), found, exclude, cluster, cluster_error,
                          request.drains_last_hour, tuple(notes))  # fmt: skip
