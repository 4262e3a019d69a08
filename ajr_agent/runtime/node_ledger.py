"""The node ledger kept for the agent: blames from verdicts, nodes' service from Slurm, trust, forgiveness.

The agent hands it each verdict before the policy decides (`prepare`: which blamed nodes
are lemons AJR may drain or reboot), and each decision inside the transaction that saves it
(`record`: the blames, the nodes' records, AJR's exclusions). At each poll `tick` applies
operators' forgiveness, takes in the nodes' states read off the loop every
node_check_interval (partitions, nodes out of service), trusts again the lemons due, and
answers with a LemonsChanged for each job whose lemons to keep out, or exclusions to take
back, have changed. The rules are domain.ledger's.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor as Pool
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from ajr_agent.adapters.slurm import SlurmError, SlurmGateway
from ajr_agent.adapters.store import Store
from ajr_agent.domain import ledger
from ajr_agent.domain.events import ActionDone, ActionFailed, Attributed, Event, LemonsChanged, NodeFacts
from ajr_agent.domain.hostlist import expand_hostlist
from ajr_agent.domain.ledger import Blame, NodeRecord
from ajr_agent.domain.lemons import names
from ajr_agent.domain.model import ActionKind, Decision, Fault, ManagedJob, Note, NoteKind
from ajr_agent.domain.policy import OVER
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.slurm_requeues import judged_attempt

log = logging.getLogger("ajr.nodes")

# The settings the readers need, recorded in the store's meta.
RECORDED = ("lemon_jobs", "lemon_blames", "lemon_window", "trust_after", "lemon_action", "requeue_limit_scope",
            "node_requeue_cap", "infrastructure_requeue_cap", "site_requeue_cap")
# Who trusts a node again when its quiet time in service is over.
BY_AJR = "ajr"


class NodeLedger:
    """The ledger's state in memory (the nodes' records, the last node facts) over the store's rows."""

    def __init__(self, settings: Settings, store: Store, gateway: SlurmGateway, pool: Pool | None = None) -> None:
        """`pool` reads the nodes' states; by default a thread of its own (tests pass one that runs at once)."""
        self.store = store
        self.gateway = gateway
        self.pool = pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="ajr-nodes")
        self.records: dict[str, NodeRecord] = store.nodes.records()
        self.facts: NodeFacts | None = None  # None until the first check has answered
        self.checking: Future[NodeFacts] | None = None
        self.next_check = 0.0
        self.dirty = True  # the jobs' lemons are to be worked out again
        self.taking_back: set[tuple[int, str]] = set()  # asked for, until its outcome comes
        self.settings = settings

    @property
    def settings(self) -> Settings:
        """The agent's settings; the lemon rules and the budgets' caps are written to the store when they
        change (a reload), for the readers (`ajr nodes`, `ajr show`, the cockpit) to count as the agent does."""
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings
        self.store.set_meta(**{key: getattr(settings, key) for key in RECORDED})

    def close(self) -> None:
        """Read no more node states; a read under way finishes in its thread."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- verdicts and decisions -------------------------------------------------------------

    def prepare(self, job: ManagedJob, event: Attributed, now: float) -> Attributed:
        """The verdict with the blamed nodes that are lemons on trusted evidence and not yet drained
        or rebooted, and the nodes known out of service (for the drains' last-node check)."""
        judged = self._judged(job, event, now)
        if not judged:
            return event
        act_on = tuple(r.node for r, standing in judged if r.lemon_since is not None and standing.trusted_evidence
                       and r.acted_at is None)  # fmt: skip
        cluster = event.cluster or self.facts
        if cluster is not None and self.facts is not None:
            cluster = replace(cluster, out_of_service=cluster.out_of_service | self.facts.out_of_service)
        return replace(event, act_on=act_on, cluster=cluster)

    def record(self, job: ManagedJob, event: Event, decision: Decision, now: float) -> None:
        """What a decision means to the ledger, written in the decision's transaction."""
        if isinstance(event, Attributed):
            self._record_blames(job, event, decision, now)
        elif isinstance(event, (ActionDone, ActionFailed)):
            action = event.action
            done = isinstance(event, ActionDone) and not event.dry_run
            if action.kind in (ActionKind.EXCLUDE, ActionKind.KEEP_OUT) and done:
                self.store.nodes.excluded(names(action.nodes), action.acts_on, event.at)
            elif action.kind is ActionKind.UNEXCLUDE:
                self.taking_back -= {(action.acts_on, node) for node in names(action.nodes)}
                if done:
                    self.store.nodes.taken_back(names(action.nodes), action.acts_on, event.at)

    def _blames(self, job: ManagedJob, event: Attributed, now: float) -> list[Blame]:
        # At the agent's time of the decision: the verdict's own is its worker's clock.
        verdict = event.verdict
        # judged_attempt: when the poll saw Slurm's own requeue first, the verdict judges the attempt
        # Slurm requeued, which AJR has not handled yet.
        if event.attempt != judged_attempt(job) or verdict.fault is not Fault.NODE:
            return []
        return [Blame(node, job.job_id, event.attempt, job.user, now, verdict.basis, verdict.cause)
                for node in verdict.nodes]  # fmt: skip

    def _judged(self, job: ManagedJob, event: Attributed, now: float) -> list[tuple[NodeRecord, ledger.Standing]]:
        """Each blamed node's record with this verdict's blame counted, and its standing."""
        new = self._blames(job, event, now)
        if not new:
            return []
        known = self.store.nodes.blames([b.node for b in new])
        judged = []
        for blame in new:
            mine = [b for b in known if b.node == blame.node and (b.job_id, b.attempt) != (job.job_id, event.attempt)]
            record = self.records.get(blame.node) or NodeRecord(blame.node, in_service_since=now)
            judged.append((ledger.judge(record, [*mine, blame], now, self.settings),
                           ledger.standing(record, [*mine, blame], now, self.settings)))  # fmt: skip
        return judged

    def _record_blames(self, job: ManagedJob, event: Attributed, decision: Decision, now: float) -> None:
        judged = self._judged(job, event, now)
        acted = {a.nodes for a in decision.actions if a.kind in (ActionKind.DRAIN, ActionKind.REBOOT)}
        self.store.nodes.add_blames(self._blames(job, event, now))
        for record, standing in judged:
            if record.node in event.act_on and record.node in acted:
                record = replace(record, acted_at=now)
            before = self.records.get(record.node)
            if record.lemon_since is not None and (before is None or before.lemon_since is None):
                self.dirty = True
                text = (f"{record.node} is now a lemon: blamed by {standing.witnesses} witnesses, {standing.recent} "
                        f"times in {self.settings.lemon_window:g} s; kept out of every managed job's next attempts")
                log.warning("job %s: %s", job.job_id, text)
                self.store.add_note(job.job_id, event.attempt, now, Note(NoteKind.VERDICT, text))
            self.records[record.node] = record
        self.store.nodes.save_records(r for r, _ in judged)

    # ---- at each poll -------------------------------------------------------------------------

    def tick(self, now: float, jobs: dict[int, ManagedJob]) -> list[LemonsChanged]:
        """Forgiveness, the nodes' states and trust; then what changed for each job (when anything may have)."""
        self._forgive(now)
        self._take_check(now)
        if now >= self.next_check and self.checking is None:
            self.next_check = now + self.settings.node_check_interval
            self.checking = self.pool.submit(self._read_nodes)
            self._take_check(now)
        if not self.dirty or self.facts is None:
            return []
        self.dirty = False
        return self._changes(now, jobs)

    def _read_nodes(self) -> NodeFacts:
        # In the pool's thread: Slurm only.
        partitions = self.gateway.partition_nodes()
        return NodeFacts(tuple((p, tuple(m)) for p, m in partitions.items()), frozenset(self.gateway.nodes_out_of_service()))

    def _take_check(self, now: float) -> None:
        if self.checking is None or not self.checking.done():
            return
        checking, self.checking = self.checking, None
        try:
            self.facts = checking.result()
        except SlurmError as exc:
            log.warning("cannot read the nodes' states (trust checks wait for the next read): %s", exc)
            return
        changed = []
        for node in sorted({n for _, members in self.facts.partitions for n in members} | set(self.records)):
            record = self.records.get(node) or NodeRecord(node)
            seen = ledger.observe_service(record, node not in self.facts.out_of_service, now)
            if ledger.trust_due(seen, self.store.nodes.blames([node]) if seen.lemon_since else [], now, self.settings):
                log.warning("%s trusted again: %g s in service without new blame", node, self.settings.trust_after)
                seen = ledger.restore(seen, now, BY_AJR)
            if seen != record or node not in self.records:
                changed.append(seen)
        self._save(changed)
        # Pending jobs may have come since: the lemons and take-backs are worked out again.
        self.taking_back.clear()
        self.dirty = True

    def _forgive(self, now: float) -> None:
        for request in self.store.nodes.forgiveness():
            record = self.records.get(request.node) or NodeRecord(request.node, in_service_since=now)
            log.warning("%s forgiven by %s: trusted again", request.node, request.by)
            with self.store.transaction():
                self._save([ledger.restore(record, now, request.by)])
                self.store.nodes.applied(request, now)
            self.dirty = True

    def _save(self, records: list[NodeRecord]) -> None:
        self.store.nodes.save_records(records)
        self.records.update((r.node, r) for r in records)

    def _changes(self, now: float, jobs: dict[int, ManagedJob]) -> list[LemonsChanged]:
        assert self.facts is not None
        lemons = [node for node, record in self.records.items() if record.lemon_since is not None]
        back = ledger.to_take_back(self.store.nodes.exclusions(standing_only=True), self.records)
        partitions = dict(self.facts.partitions)
        events = []
        for job in jobs.values():
            if job.phase in OVER:
                continue
            members = [n for p in job.partition.split(",") for n in partitions.get(p, ())]
            excluded = {*names(job.excluded_nodes), *(names(job.verdict_nodes) if job.verdict == "node" else [])}
            size = len(expand_hostlist(job.nodes)) if job.nodes else 0
            keep = ledger.keep_out(lemons, members, self.facts.out_of_service, excluded,
                                   max(self.settings.drain_keep_nodes, size))
            taking = tuple(n for n in back.get(job.job_id, ()) if (job.job_id, n) not in self.taking_back)
            if job.slurm_state != "PENDING":
                taking = ()
            if keep != tuple(names(job.keep_out)) or taking:
                self.taking_back |= {(job.job_id, n) for n in taking}
                events.append(LemonsChanged(job.job_id, now, keep, taking))
        return events
