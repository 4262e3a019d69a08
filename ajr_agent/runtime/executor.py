"""Runs the policy's actions against Slurm: journaled first, dry-run aware, retried with back-off.

Commands run off the decision loop, in a small pool: a slurmctld that takes seconds to
answer one scontrol holds up that job's recovery, not every other job's. A job's own
actions run one after the other, in the order the policy decided them (its AdminComment
before its cancel); the outcomes come back as events through `take`.

Every action is in the journal before its command runs. Its outcome is marked in the
journal by `settle`, which the agent calls in the same transaction that saves the
decision the outcome leads to (the job held, released...): a crash anywhere leaves
the action open with the job's phase from before it, and start-up reconciles the
open action against Slurm's own state instead of running it blindly a second time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Executor as Pool
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping

from ajr_agent.adapters.slurm import SlurmError, SlurmGateway, open_gateway
from ajr_agent.adapters.slurm.calls import SlurmAnswer
from ajr_agent.adapters.store import ActionStatus, JournalEntry, Store
from ajr_agent.domain.events import ActionDone, ActionFailed, Event
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import Action, ActionKind
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.observers import Observer

log = logging.getLogger(__name__)

# Seconds between a release and the earliest restart. Slurm revokes the job's credential
# when it requeues the job, and slurmd refuses a credential created in that same second
# ("Killing non-startable batch job: Job credential revoked", seen here when a restart
# came 37 ms after the requeue); Slurm's own wait is ~120 s for this reason.
RESTART_DELAY = 2
# Commands to Slurm at once: a burst of failures is answered in parallel, and a controller
# that is slow to answer is not flooded.
WORKERS = 4


@dataclass(frozen=True)
class _Queued:
    action: Action
    tries_before: int


class Executor:
    """Carries out journaled actions and reports their outcome as events."""

    def __init__(self, gateway: SlurmGateway, store: Store, settings: Settings, observer: Observer | None = None,
                 pool: Pool | None = None) -> None:  # fmt: skip
        """`pool` runs the commands; by default WORKERS threads (tests pass one that runs them at once)."""
        self.gateway = gateway
        self.store = store
        self.settings = settings
        self.observer = observer or Observer()
        self.pool = pool or ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ajr-action")
        self.waiting: dict[int, deque[_Queued]] = {}  # per deciding job, in the order decided
        self.running: dict[int, tuple[_Queued, Future[Exception | None]]] = {}

    def start(self, action: Action, now: float, tries_before: int = 0) -> list[Event]:
        """Start one journaled action. A dry run's outcome comes at once; the others come from
        `take` once Slurm has answered."""
        if self.settings.dry_run:
            log.info("job %s: DRY_RUN: would %s job %s (%s)", action.job_id, action.kind.value, action.acts_on,
                     action.reason)  # fmt: skip
            return [ActionDone(action, now, dry_run=True, tried=False)]
        self.waiting.setdefault(action.job_id, deque()).append(_Queued(action, tries_before))
        self._next(action.job_id)
        return []

    def busy(self) -> bool:
        """Some action is waiting for Slurm."""
        return bool(self.running)

    def take(self, now: float) -> list[Event]:
        """The outcomes of the actions Slurm has answered since the last call (none for one whose
        retry is pending), for `settle` to record."""
        events: list[Event] = []
        for job_id, (queued, future) in list(self.running.items()):
            if not future.done():
                continue
            del self.running[job_id]
            events += self._outcome(queued, future.result(), now)
            self._next(job_id)
        return events

    def run_now(self, action: Action, now: float) -> list[Event]:
        """Run one journaled action here and now (an operator's, who waits for the answer)."""
        return self._outcome(_Queued(action, 0), self._attempt(action), now)

    def close(self) -> None:
        """Take no more actions; those under way finish in their threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _next(self, job_id: int) -> None:
        waiting = self.waiting.get(job_id)
        if job_id in self.running or not waiting:
            return
        queued = waiting.popleft()
        if not waiting:
            del self.waiting[job_id]
        self.running[job_id] = (queued, self.pool.submit(self._attempt, queued.action))

    def _attempt(self, action: Action) -> Exception | None:
        # In a worker thread: Slurm only. The journal is written by the loop, in take().
        try:
            self._perform(action)
        except Exception as exc:  # a SlurmError, or a surprise: either way an outcome for the job
            return exc
        return None

    def _outcome(self, queued: _Queued, error: Exception | None, now: float) -> list[Event]:
        action = queued.action
        if error is None:
            log.info("job %s: %s of job %s done", action.job_id, action.kind.value, action.acts_on)
            return [ActionDone(action, now)]
        if isinstance(error, SlurmError):
            return self._failed(action, error, now, queued.tries_before + 1)
        log.error("job %s: %s failed unexpectedly", action.job_id, action.kind.value, exc_info=error)
        return [ActionFailed(action, now, f"unexpected error: {error}")]

    def settle(self, outcome: ActionDone | ActionFailed) -> None:
        """Mark an action's outcome in the journal. Call it inside the transaction that saves
        what the outcome leads to, so that a crash keeps both or neither."""
        if isinstance(outcome, ActionDone):
            status = ActionStatus.DRY_RUN if outcome.dry_run else ActionStatus.DONE
            self.store.update_action(outcome.action, status, outcome.at, tried=outcome.tried)
        else:
            self.store.update_action(outcome.action, ActionStatus.FAILED, outcome.at, error=outcome.reason,
                                     tried=outcome.tried)  # fmt: skip

    def _perform(self, action: Action) -> None:
        job_id = action.acts_on
        if action.kind is ActionKind.REQUEUE_HOLD:
            self.gateway.requeue_hold(job_id)
        elif action.kind is ActionKind.RELEASE:
            self.gateway.release(job_id)
            if self.settings.clear_begin_time:
                self._clear_begin_time(job_id)
        elif action.kind is ActionKind.CANCEL:
            self.gateway.cancel(job_id)
        elif action.kind is ActionKind.ANNOTATE:
            self.gateway.update(job_id, AdminComment=action.reason)
        elif action.kind is ActionKind.REQUEUE:
            self.gateway.requeue(job_id)
        elif action.kind in (ActionKind.EXCLUDE, ActionKind.KEEP_OUT):
            self.gateway.exclude_nodes(job_id, action.nodes.split(","))
        elif action.kind is ActionKind.UNEXCLUDE:
            self.gateway.unexclude_nodes(job_id, action.nodes.split(","))
        elif action.kind is ActionKind.DRAIN:
            self.gateway.drain(action.nodes, action.reason)
        elif action.kind is ActionKind.REBOOT:
            self.gateway.reboot(action.nodes, action.reason)
        else:  # pragma: no cover - ActionKind is closed
            raise ValueError(f"no executor for {action.kind}")

    def _clear_begin_time(self, job_id: int) -> None:
        # Without this Slurm holds a requeued job back for ~120 s (BeginTime). Failing here
        # only costs that wait, so it must not turn a good release into a failed one.
        try:
            self.gateway.update(job_id, StartTime=f"now+{RESTART_DELAY}")
        except SlurmError as exc:
            log.warning("job %s: released, but clearing the requeue wait failed (it starts in ~2 min): %s",
                        job_id, exc)  # fmt: skip

    def _failed(self, action: Action, exc: SlurmError, now: float, tries: int) -> list[Event]:
        self.observer.slurm_error(exc)
        if exc.transient and tries < self.settings.action_max_tries:
            delay = min(self.settings.action_retry_delay * 2 ** (tries - 1), self.settings.action_retry_max_delay)
            self.store.update_action(action, ActionStatus.RETRY, now, error=str(exc), next_try_at=now + delay)
            log.warning("job %s: %s failed (try %d of %d, again in %.0f s): %s", action.job_id, action.kind.value,
                        tries, self.settings.action_max_tries, delay, exc)  # fmt: skip
            return []
        reason = exc.reason if not exc.transient else f"gave up after {tries} tries: {exc.reason}"
        log.error("job %s: %s failed: %s", action.job_id, action.kind.value, reason)
        # Slurm requeues a job itself when it loses one of its nodes: AJR's requeuehold then comes second.
        pending = action.kind is ActionKind.REQUEUE_HOLD and SlurmAnswer.PENDING in exc.reason
        return [ActionFailed(action, now, reason, requeued_already=pending)]

    def reopen(self, snapshots: Mapping[int, JobSnapshot], now: float, due_only: bool) -> list[Event]:
        """Take up the actions open in the journal: all of them after a restart, or (`due_only`)
        those whose back-off has passed."""
        events: list[Event] = []
        for entry in self.store.open_actions():
            action = entry.action
            if due_only and (entry.next_try_at is None or entry.next_try_at > now):
                continue
            if not due_only:
                log.info("job %s: reconciling open %s from %s", action.job_id, action.kind.value, entry.status)
            events += self.resume(entry, snapshots.get(action.acts_on), now)
        return events

    def resume(self, entry: JournalEntry, snapshot: JobSnapshot | None, now: float) -> list[Event]:
        """Finish an action left open by a crash or waiting for a retry, checking Slurm first.

        A requeuehold whose job already shows a higher restart count has happened: running it
        again would requeue the job twice for one failure. A release whose job is no longer
        held has happened too.
        """
        action = entry.action
        if snapshot is None:
            return [ActionFailed(action, now, "job no longer in Slurm", tried=False)]
        if entry.dry_run:
            # Decided in dry run: it stays a would-be action even if the agent now runs for real.
            return [ActionDone(action, now, dry_run=True, tried=False)]
        if _already_done(action, snapshot):
            log.info("job %s: %s of attempt %d had already happened", action.job_id, action.kind.value, action.attempt)
            return [ActionDone(action, now, tried=False)]
        return self.start(action, now, tries_before=entry.tries)


def _already_done(action: Action, snapshot: JobSnapshot) -> bool:
    """Slurm shows that an action left open by a crash took effect before it."""
    if action.kind is ActionKind.REQUEUE_HOLD:
        return snapshot.restart_count > action.attempt
    if action.kind is ActionKind.RELEASE:
        # Only a held job is ever released: one no longer held was released already.
        return not snapshot.held
    return False


def run_operator_action(store: Store, settings: Settings, action: Action, origin: str, now: float) -> JournalEntry:
    """An operator's requeue or release (CLI or cockpit): journaled with its origin, run once, for real.

    For real even when the agent runs in dry run: the operator asked explicitly. One try:
    the operator is there to see a failure and decide.
    """
    settings = settings.with_overrides(dry_run=False, action_max_tries=1)
    journaled = store.journal(action, dry_run=False, now=now, origin=origin)
    executor = Executor(open_gateway(settings), store, settings)
    for outcome in executor.run_now(journaled, time.time()):
        if isinstance(outcome, (ActionDone, ActionFailed)):
            executor.settle(outcome)
    return next(e for e in store.actions(action.job_id) if e.id == journaled.journal_id)
