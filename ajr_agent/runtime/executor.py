"""Runs the policy's actions against Slurm: journaled first, dry-run aware, retried with back-off.

Every action is in the journal before its command runs. Its outcome is marked in the
journal by `settle`, which the agent calls in the same transaction that saves the
decision the outcome leads to (the job held, released...): a crash anywhere leaves
the action open with the job's phase from before it, and start-up reconciles the
open action against Slurm's own state instead of running it blindly a second time.
"""

from __future__ import annotations

import logging
import time

from ajr_agent.adapters.slurm import SlurmError, SlurmGateway, open_gateway
from ajr_agent.adapters.store import ActionStatus, JournalEntry, Store
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import Action, ActionDone, ActionFailed, ActionKind, Event
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.observers import Observer

log = logging.getLogger(__name__)

# Seconds between a release and the earliest restart. Slurm revokes the job's credential
# when it requeues the job, and slurmd refuses a credential created in that same second
# ("Killing non-startable batch job: Job credential revoked", seen here when a restart
# came 37 ms after the requeue); Slurm's own wait is ~120 s for this reason.
RESTART_DELAY = 2


class Executor:
    """Carries out journaled actions and reports their outcome as events."""

    def __init__(self, gateway: SlurmGateway, store: Store, settings: Settings, observer: Observer | None = None) -> None:
        self.gateway = gateway
        self.store = store
        self.settings = settings
        self.observer = observer or Observer()

    def run(self, action: Action, now: float, tries_before: int = 0) -> list[Event]:
        """Run one journaled action; its outcome as events (none while a retry is pending), for
        `settle` to record."""
        if self.settings.dry_run:
            log.info("job %s: DRY_RUN: would %s job %s (%s)", action.job_id, action.kind.value, action.acts_on,
                     action.reason)  # fmt: skip
            return [ActionDone(action, now, dry_run=True, tried=False)]
        try:
            self._perform(action)
        except SlurmError as exc:
            return self._failed(action, exc, now, tries_before + 1)
        log.info("job %s: %s of job %s done", action.job_id, action.kind.value, action.acts_on)
        return [ActionDone(action, now)]

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
        elif action.kind is ActionKind.EXCLUDE:
            self.gateway.exclude_nodes(job_id, action.nodes.split(","))
        elif action.kind is ActionKind.DRAIN:
            self.gateway.drain(action.nodes, action.reason)
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
        return [ActionFailed(action, now, reason)]

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
        return self.run(action, now, tries_before=entry.tries)


def _already_done(action: Action, snapshot: JobSnapshot) -> bool:
    """Slurm shows that an action left open by a crash took effect before it."""
    if action.kind is ActionKind.REQUEUE_HOLD:
        return snapshot.restart_count > action.attempt
    if action.kind is ActionKind.RELEASE:
        # Only a held job is ever released: one no longer held was released already.
        return not (snapshot.state == "PENDING" and snapshot.reason.startswith("JobHeld"))
    return False


def run_operator_action(store: Store, settings: Settings, action: Action, origin: str, now: float) -> JournalEntry:
    """An operator's requeue or release (CLI or cockpit): journaled with its origin, run once, for real.

    For real even when the agent runs in dry run: the operator asked explicitly. One try:
    the operator is there to see a failure and decide.
    """
    settings = settings.with_overrides(dry_run=False, action_max_tries=1)
    journaled = store.journal(action, dry_run=False, now=now, origin=origin)
    executor = Executor(open_gateway(settings), store, settings)
    for outcome in executor.run(journaled, time.time()):
        if isinstance(outcome, (ActionDone, ActionFailed)):
            executor.settle(outcome)
    return next(e for e in store.actions(action.job_id) if e.id == journaled.journal_id)
