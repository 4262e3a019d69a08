"""The agent: one loop that reads Slurm and the logs, asks the policy, and acts.

The poll and the log lines become events; the policy turns each event into a new job
state and actions; the store records both in one transaction; the executor's outcomes
come back as events. Verdicts, which read node logs on shared storage, are worked out
off the loop and come back as events too: one job's slow file system holds up no other.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor as Pool
from dataclasses import replace
from typing import Callable

from ajr_agent.adapters.epilog_spool import EpilogRecord
from ajr_agent.adapters.logs import ChangeWatcher
from ajr_agent.adapters.slurm import SlurmError, SlurmGateway
from ajr_agent.adapters.store import Store, StoreError
from ajr_agent.detect.rules import RuleSet, default_rules_dir
from ajr_agent.domain import adoption
from ajr_agent.domain import policy, slurm_requeues
from ajr_agent.domain.events import ActionDone, ActionFailed, Attributed, Event, JobForgotten, VerdictOverdue
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import Awaiting, ManagedJob, Note, NoteKind, Phase, UnmanagedJob
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import SPEC_KEY, parse_comment
from ajr_agent.runtime.executor import Executor
from ajr_agent.runtime.guard import Guard
from ajr_agent.runtime.job_ends import JobEnds
from ajr_agent.runtime.log_feed import LogFeed
from ajr_agent.runtime.node_ledger import NodeLedger
from ajr_agent.runtime.observers import Observer
from ajr_agent.runtime.tracked import TrackedJob
from ajr_agent.runtime.verdicts import VerdictRequest, Verdicts

log = logging.getLogger("ajr.agent")

# Shortest pause between two passes over the followed files when writes keep waking the loop.
READ_GAP = 0.05


def load_rules(settings: Settings) -> RuleSet:
    """The shipped rules, then every site rules directory in order (later files win by name)."""
    return RuleSet.load([default_rules_dir(), *settings.rules_dirs])


class Agent:
    """Watches managed jobs and recovers the ones that fail.

    `pool` runs Slurm commands and verdicts; by default each has threads of its own
    (runtime.inline_pool steps the loop by hand).
    """

    def __init__(self, settings: Settings, store: Store, gateway: SlurmGateway, rules: RuleSet,
                 watcher: ChangeWatcher | None = None, observer: Observer | None = None,
                 pool: Pool | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.rules = rules
        self.watcher = watcher
        self.observer = observer or Observer()
        self.executor = Executor(gateway, store, settings, self.observer, pool)
        self.verdicts = Verdicts(settings, rules, gateway, pool)
        self.nodes = NodeLedger(settings, store, gateway, pool)
        self.forgotten: dict[int, str] = store.forgotten()
        self.tracked: dict[int, TrackedJob] = {
            job_id: TrackedJob(job) for job_id, job in store.load_jobs().items() if job.phase is not Phase.FORGOTTEN
        }
        self.feed = LogFeed(settings, store, rules, self.tracked, self, watcher, self.observer)
        self.unmanaged: dict[int, str] = {job.job_id: job.comment for job in store.unmanaged()}
        self.snapshots: dict[int, JobSnapshot] = {}  # the opted-in jobs of the last poll
        self.ends = JobEnds(settings.spool_dir, settings.end_settle_seconds)
        # Action outcomes whose decision the store could not save: they cannot be seen again in
        # Slurm or the logs, so they are kept here and decided again at the next poll.
        self.unsaved_outcomes: dict[int, list[Event]] = {}
        self.guard = Guard(self.observer, on_corrupt=self.stop)
        self.next_prune = 0.0
        try:
            settings.spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("epilog spool %s cannot be created (%s): job ends are seen at the next poll only",
                        settings.spool_dir, exc)  # fmt: skip
        if watcher is not None:
            watcher.watch(settings.spool_dir)
        self.stop_requested = threading.Event()
        self.reconciled = False
        self.watching_since = float(store.meta().get("watching_since") or 0) or time.time()
        store.set_meta(watching_since=self.watching_since)
        self.feed.restore()

    @property
    def jobs(self) -> dict[int, ManagedJob]:
        """Every managed job the loop follows, by id."""
        return {job_id: tracked.job for job_id, tracked in self.tracked.items()}

    def apply(self, settings: Settings, rules: RuleSet) -> None:
        """Use new settings and rules from the next step on (a reload)."""
        for part in (self, self.executor, self.verdicts, self.feed, self.nodes):
            part.settings = settings
        for part in (self, self.verdicts, self.feed):
            part.rules = rules

    # ---- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Run until stop() is called (SIGTERM), finishing the step under way."""
        next_poll = next_full_read = 0.0
        # Each step is guarded as a whole too (and each job's part on its own): whatever a
        # surprise costs, the loop goes on for every job.
        try:
            while not self.stop_requested.is_set():
                now = time.time()
                self.guarded(0, self.read_epilog_records, now)
                if now >= next_poll or self.ends.awaiting:
                    self.guarded(0, self.poll, now)
                    # Retries wait seconds of back-off: looking for due ones at each poll is enough.
                    self.guarded(0, self.run_due_actions, time.time())
                    next_poll = now + self.settings.poll_interval
                read_at = time.monotonic()
                if read_at >= next_full_read:
                    # Every followed file is looked at each tail_interval: the ground truth on
                    # shared storage, whose writes from other hosts raise no inotify event.
                    self.guarded(0, self.read_logs, time.time())
                    next_full_read = read_at + self.settings.tail_interval
                else:
                    wanted = self.feed.changed_paths()
                    if wanted:
                        self.guarded(0, self.read_logs, time.time(), wanted)
                self.guarded(0, self.take_results, time.time())
                wait = max(0.0, min(next_full_read - time.monotonic(), next_poll - time.time()))
                if self.feed.deferred or self.executor.busy() or self.verdicts.busy():
                    wait = min(wait, READ_GAP)  # lines left for the next pass, or answers due soon
                if self.watcher is not None and self.watcher.wait(wait):
                    # Busy logs wake the loop at every write: reading at most every READ_GAP
                    # seconds keeps the agent's CPU bounded and costs detection no more than that.
                    self.stop_requested.wait(max(0.0, READ_GAP - (time.monotonic() - read_at)))
                elif self.watcher is None:
                    self.stop_requested.wait(wait)
        finally:
            self.executor.close()
            self.verdicts.close()
            self.nodes.close()

    def stop(self) -> None:
        """Ask the loop to end after the current step."""
        self.stop_requested.set()

    def guarded(self, job_id: int, handler: Callable[..., object], *args: object, **kwargs: object) -> Exception | None:
        """Run ``handler``; the error it failed with (logged), or None (see Guard)."""
        return self.guard.run(job_id, handler, *args, **kwargs)

    def poll(self, now: float) -> None:
        """Read every job once; turn what changed into events; look for new log files."""
        started = time.monotonic()
        try:
            snapshots = self.gateway.list_jobs()
        except Exception as exc:  # a SlurmError, or a surprise in what Slurm printed
            # Never take a failed poll for "every job vanished".
            if isinstance(exc, SlurmError):
                log.error("cannot read the Slurm queue (will retry): %s", exc)
                self.observer.slurm_error(exc)
            else:
                log.exception("cannot read the Slurm queue: unexpected error (will retry)")
            self.guarded(0, self.store.set_meta, last_poll_error=str(exc), last_poll_error_at=now)
            return
        self.snapshots = {s.job_id: s for s in snapshots if SPEC_KEY in s.comment}
        if not self.reconciled:
            self.reconcile(now)
        for job_id, outcomes in list(self.unsaved_outcomes.items()):
            del self.unsaved_outcomes[job_id]
            self.guarded(job_id, self.handle_all, job_id, outcomes, now)
        self.guarded(0, self._drop_forgotten, now)
        self.guarded(0, self._lemons, now)
        for snapshot in self.snapshots.values():
            self.guarded(snapshot.job_id, self._observe, snapshot, now)
        self.ends.settle(self.snapshots, now)
        for event in self.feed.hangs(self.snapshots, now):
            self.guarded(event.job_id, self.handle_all, event.job_id, [event], now)
        for job_id in [j for j in self.tracked if j not in self.snapshots]:
            self.guarded(job_id, self._vanish, job_id, now)
        for tracked in list(self.tracked.values()):
            self.guarded(tracked.job.job_id, self.feed.scan, tracked, self.snapshots.get(tracked.job.job_id), now)
        self.take_results(now)
        saved = self.guarded(0, self.store.set_meta,
                             last_poll_at=now, last_poll_seconds=round(time.monotonic() - started, 4),
                             jobs_in_queue=len(snapshots), managed_jobs=len(self.tracked),
                             followed_files=len(self.feed.files)) is None  # fmt: skip
        if saved:
            self.guard.store_written()
        self.observer.polled(time.monotonic() - started, len(self.feed.files))
        self.observer.check_held([t.job for t in self.tracked.values()], now)
        if now >= self.next_prune:
            self.guarded(0, self.prune, now)

    def read_logs(self, now: float, paths: set[str] | None = None) -> None:
        """Read what the followed files (all, or those of `paths`) have added, and decide on it."""
        self.feed.read(now, paths)
        self.take_results(now)

    def take_results(self, now: float) -> None:
        """Decide on what came back from off the loop: Slurm's answers to actions, verdicts
        (and those overdue). Until none is left, as a decision may start more."""
        while results := [*self.executor.take(now), *self.verdicts.take(now)]:
            self._handle_each(results, now)

    def _handle_each(self, events: list[Event], now: float) -> None:
        """Decide on events of any jobs, each guarded on its own."""
        for event in events:
            job_id = event.action.job_id if isinstance(event, (ActionDone, ActionFailed)) else event.job_id
            self.guarded(job_id, self.handle_all, job_id, [event], now)

    def prune(self, now: float) -> None:
        """Remove the jobs that left Slurm longer than state_retention_days ago, a few per poll."""
        pruned = self.store.prune(now, self.settings.state_retention_days * 86400)
        if pruned.total:
            log.info("state database: removed %d jobs past their retention (%d rows in all)", pruned.jobs,
                     pruned.total)  # fmt: skip
        # A backlog of old jobs goes a batch per poll, so that no poll waits for all of it.
        self.next_prune = now if pruned.more else now + self.settings.state_prune_interval

    def reconcile(self, now: float) -> None:
        """Finish what a previous run left open: journaled actions, and verdicts it waited for."""
        self.reconciled = True
        self._handle_each(self.executor.reopen(self.snapshots, now, due_only=False), now)
        for tracked in self.tracked.values():
            job = tracked.job
            if job.awaiting is not None:
                # The job's own lines went with the old process; the node logs are still there.
                self._ask_verdict(job, slurm_requeues.judged_attempt(job), job.attempt_ended or now)

    def run_due_actions(self, now: float) -> None:
        """Try again the actions whose back-off has passed."""
        self._handle_each(self.executor.reopen(self.snapshots, now, due_only=True), now)

    # ---- Slurm's side -------------------------------------------------------------------

    def _observe(self, snapshot: JobSnapshot, now: float) -> None:
        if snapshot.job_id in self.forgotten:
            return
        tracked = self.tracked.get(snapshot.job_id)
        if tracked is None:
            tracked = self._adopt(snapshot, now)
            if tracked is None:
                return
        self.feed.read_before_end(tracked, snapshot, now)
        job = tracked.job
        refreshed, events = adoption.observe(job, snapshot, now, self.settings)
        tracked.job = refreshed
        # last_seen alone changes at every poll: writing every job each second would cost
        # the poll ~1 ms per managed job; it is stored with the next real change.
        if not events and replace(refreshed, last_seen=job.last_seen) != job:
            self.store.save_job(refreshed)
        self.handle_all(job.job_id, events, now)

    def _adopt(self, snapshot: JobSnapshot, now: float) -> TrackedJob | None:
        if self.unmanaged.get(snapshot.job_id) == snapshot.comment:
            return None
        verdict = parse_comment(snapshot.comment)
        if verdict.spec is None:
            if verdict.problem:
                log.warning("job %s (%s, user %s) not managed: %s", snapshot.job_id, snapshot.name, snapshot.user,
                            verdict.problem)  # fmt: skip
                self.store.save_unmanaged(
                    UnmanagedJob(snapshot.job_id, snapshot.name, snapshot.user, snapshot.comment, verdict.problem, now)
                )
            self.unmanaged[snapshot.job_id] = snapshot.comment
            return None
        decision = adoption.adopt(snapshot, verdict.spec, self.settings, now, self.watching_since)
        job = decision.job
        predecessor = next((t.job for t in self.tracked.values() if t.job.successor == job.job_id), None)
        if predecessor is not None:
            job = adoption.inherit(job, predecessor)
        self.tracked[job.job_id] = TrackedJob(job)
        for note in decision.notes:
            self.record(job, note, now)
        record = self.ends.adopted(job.job_id)
        if record is not None:
            self._note_epilog(job, record)
        return self.tracked[job.job_id]

    def read_epilog_records(self, now: float) -> None:
        """Take in what the EpilogSlurmctld hook reported: those jobs are polled at once."""
        for record in self.ends.take(now, self.tracked):
            self._note_epilog(self.tracked[record.job_id].job, record)

    def _note_epilog(self, job: ManagedJob, record: EpilogRecord) -> None:
        text = f"Slurm reported the end of restart {record.restart_count}: exit {record.exit_code or '?'}"
        self.record(job, Note(NoteKind.EPILOG, text), record.written_at)

    def _drop_forgotten(self, now: float) -> None:
        """Leave alone the jobs an operator told AJR to forget (`ajr forget`)."""
        self.forgotten = self.store.forgotten()
        for job_id in [j for j in self.tracked if j in self.forgotten]:
            self.handle_all(job_id, [JobForgotten(job_id, now, self.forgotten[job_id])], now)
            self._drop(job_id)

    def _lemons(self, now: float) -> None:
        """Tell each job the node ledger's news: lemons to keep out, exclusions to take back."""
        for changed in self.nodes.tick(now, self.jobs):
            self.guarded(changed.job_id, self.handle_all, changed.job_id, [changed], now)

    def _drop(self, job_id: int) -> None:
        """Stop following a job and its log files."""
        tracked = self.tracked.pop(job_id, None)
        if tracked is not None:
            self.feed.drop(tracked)

    def _vanish(self, job_id: int, now: float) -> None:
        tracked = self.tracked[job_id]
        self.handle_all(job_id, adoption.vanished(tracked.job, now), now)
        self._drop(job_id)

    # ---- decisions ---------------------------------------------------------------------------

    def handle_all(self, job_id: int, events: list[Event], now: float) -> None:
        """Feed events to the policy one by one, following the outcomes of the actions it takes."""
        queue = list(events)
        while queue:
            event = queue.pop(0)
            tracked = self.tracked.get(job_id)
            if tracked is None:
                if isinstance(event, (ActionDone, ActionFailed)):
                    self.executor.settle(event)  # the job is gone; its action is over all the same
                continue
            current = tracked.job
            successor = adoption.next_in_chain(current, self.snapshots.values()) if current.chain else None
            if isinstance(event, Attributed):
                event = self.nodes.prepare(current, event, now)
            decision = policy.decide(current, event, self.settings, successor)
            self.observer.decided(current, event, decision)
            try:
                with self.store.transaction():
                    # An action's outcome and what it leads to land together: a crash in between
                    # leaves the action open, and start-up finishes it against Slurm's state.
                    if isinstance(event, (ActionDone, ActionFailed)):
                        self.executor.settle(event)
                    if isinstance(event, Attributed) and decision.verdict is not None:
                        self.store.save_verdict(job_id, event.attempt, event.at, decision.verdict)
                    self.store.save_job(decision.job)
                    self.nodes.record(current, event, decision, now)
                    for note in decision.notes:
                        self._note(decision.job, note, getattr(event, "at", now), event)
                    journaled = [self.store.journal(a, self.settings.dry_run, time.time()) for a in decision.actions]
            except StoreError:
                # Nothing of this decision was saved and none of its actions run (no action runs
                # unjournaled). What the poll and the logs bring again is decided again then;
                # what only this loop knows (what Slurm answered, a verdict) waits here.
                kept = [e for e in [event, *queue] if isinstance(e, (ActionDone, ActionFailed, Attributed,
                                                                     VerdictOverdue))]  # fmt: skip
                if kept:
                    self.unsaved_outcomes.setdefault(job_id, []).extend(kept)
                raise
            tracked.job = decision.job
            if decision.job.phase is Phase.HANDED_OVER and current.phase is not Phase.HANDED_OVER:
                self._pass_on_chain(decision.job)
            if (asked := slurm_requeues.newly_awaited(current, decision.job)) is not None:
                self._ask_verdict(decision.job, asked, getattr(event, "at", now))
            for action in journaled:
                queue.extend(self.executor.start(action, time.time()))

    def _ask_verdict(self, job: ManagedJob, attempt: int | None, failed_at: float) -> None:
        """Start working out where the fault of the failed attempt lies, off the loop."""
        if attempt is None:
            return
        snapshot = self.snapshots.get(job.job_id)
        ended = snapshot.state if snapshot is not None and snapshot.ended else ""
        slurm_only = job.awaiting is Awaiting.NODE_STATES
        evidence = () if slurm_only else tuple(self.tracked[job.job_id].evidence.get(attempt, ()))
        drains = self.store.drains_since(time.time() - 3600) if self.settings.drain_faulty_nodes else 0
        tasks = snapshot.tasks if snapshot is not None else 0
        self.verdicts.ask(VerdictRequest(job, attempt, evidence, ended, failed_at, drains, tasks, slurm_only))

    def _pass_on_chain(self, predecessor: ManagedJob) -> None:
        """The released job of a singleton chain takes over the chain's counts."""
        successor = self.tracked.get(predecessor.successor or -1)
        if successor is not None:
            successor.job = adoption.inherit(successor.job, predecessor)
            self.store.save_job(successor.job)

    def record(self, job: ManagedJob, note: Note, now: float) -> None:
        """Save the job with a line of its story."""
        with self.store.transaction():
            self.store.save_job(job)
            self._note(job, note, now, None)
        tracked = self.tracked.get(job.job_id)
        if tracked is not None:
            tracked.job = job

    def _note(self, job: ManagedJob, note: Note, at: float, event: Event | None) -> None:
        path = getattr(event, "path", None)
        line = getattr(event, "line", None)
        self.store.add_note(job.job_id, getattr(event, "attempt", job.attempt), at, note, path, line)
        # A fresh agent on a busy cluster meets thousands of jobs that were over before it
        # came: recorded for `ajr show`, but not worth a line each in the service's log.
        level = logging.DEBUG if job.phase is Phase.FINISHED and note.kind is NoteKind.MANAGED else logging.INFO
        log.log(level, "job %s (%s): %s", job.job_id, job.name, note.text)
