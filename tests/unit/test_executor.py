"""The executor over a real store, with a scripted stand-in for Slurm's answers."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.adapters.store import ActionStatus, JournalEntry, Store
from ajr_agent.domain.events import ActionDone, ActionFailed, Event
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import Action, ActionKind
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.executor import Executor
from ajr_agent.runtime.inline_pool import InlinePool


@dataclass
class ScriptedSlurm:
    """Answers each call with the next scripted error, or success when none is left; records the calls."""

    errors: list[SlurmError] = field(default_factory=list)
    calls: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    backend: str = "scripted"

    def _call(self, name: str, job_id: int, **fields: str) -> None:
        self.calls.append((name, job_id, fields))
        if self.errors:
            raise self.errors.pop(0)

    def requeue_hold(self, job_id: int) -> None:
        self._call("requeue_hold", job_id)

    def release(self, job_id: int) -> None:
        self._call("release", job_id)

    def requeue(self, job_id: int) -> None:
        self._call("requeue", job_id)

    def update(self, job_id: int, **fields: str) -> None:
        self._call("update", job_id, **fields)

    def list_jobs(self) -> list[JobSnapshot]:
        return []

    def version(self) -> str:
        return "0.0"


def transient() -> SlurmError:
    return SlurmError(["scontrol"], "Socket timed out", transient=True)


def refused() -> SlurmError:
    return SlurmError(["scontrol"], "Requested operation is presently disabled", transient=False)


SETTINGS = Settings(action_retry_delay=2, action_retry_max_delay=5, action_max_tries=3)
HOLD = Action(ActionKind.REQUEUE_HOLD, 7, 0, "segfault")


def setup(tmp_path: Path, slurm: ScriptedSlurm, settings: Settings = SETTINGS) -> tuple[Executor, Store, Action]:
    store = Store(tmp_path / "ajr.db")
    return Executor(slurm, store, settings, pool=InlinePool()), store, store.journal(HOLD, settings.dry_run, 0.0)


def run(executor: Executor, action: Action, now: float) -> list[Event]:
    """Start the action and take its outcome (the pool runs it at once)."""
    return executor.start(action, now) + executor.take(now)


def resume(executor: Executor, entry: JournalEntry, snapshot: JobSnapshot | None, now: float) -> list[Event]:
    return executor.resume(entry, snapshot, now) + executor.take(now)


def snapshot(restart_count: int) -> JobSnapshot:
    return JobSnapshot(7, "PENDING", 0, "root", restart_count, None, None, True, True, "", "", "/", "", "j", "")


def test_success_is_recorded_and_reported(tmp_path: Path) -> None:
    slurm = ScriptedSlurm()
    executor, store, action = setup(tmp_path, slurm)
    [done] = run(executor, action, 1.0)
    assert done == ActionDone(action, 1.0)
    assert slurm.calls == [("requeue_hold", 7, {})]
    assert store.actions(7)[0].status == ActionStatus.PENDING, "marked only with what it leads to"
    executor.settle(done)
    assert store.actions(7)[0].status == ActionStatus.DONE and store.actions(7)[0].tries == 1


def test_release_also_clears_the_requeue_wait(tmp_path: Path) -> None:
    slurm = ScriptedSlurm()
    executor, store, _ = setup(tmp_path, slurm)
    release = store.journal(Action(ActionKind.RELEASE, 7, 0, "r"), False, 0.0)
    run(executor, release, 1.0)
    assert slurm.calls == [("release", 7, {}), ("update", 7, {"StartTime": "now+2"})]


class UpdateRefused(ScriptedSlurm):
    def update(self, job_id: int, **fields: str) -> None:
        self._call("update", job_id, **fields)
        raise refused()


def test_failing_wait_clearing_does_not_fail_the_release(tmp_path: Path) -> None:
    slurm = UpdateRefused()
    executor, store, _ = setup(tmp_path, slurm)
    release = store.journal(Action(ActionKind.RELEASE, 7, 0, "r"), False, 0.0)
    assert run(executor, release, 1.0) == [ActionDone(release, 1.0)]
    assert [c[0] for c in slurm.calls] == ["release", "update"]


def test_clearing_the_wait_can_be_turned_off(tmp_path: Path) -> None:
    slurm = ScriptedSlurm()
    executor, store, _ = setup(tmp_path, slurm, SETTINGS.with_overrides(clear_begin_time=False))
    release = store.journal(Action(ActionKind.RELEASE, 7, 0, "r"), False, 0.0)
    run(executor, release, 1.0)
    assert slurm.calls == [("release", 7, {})]


def test_transient_failures_back_off_then_give_up(tmp_path: Path) -> None:
    slurm = ScriptedSlurm(errors=[transient(), transient(), transient()])
    executor, store, action = setup(tmp_path, slurm)
    assert run(executor, action, 10.0) == []
    [entry] = store.open_actions()
    assert entry.status == ActionStatus.RETRY and entry.next_try_at == 12.0 and entry.tries == 1
    assert resume(executor, entry, snapshot(0), 12.0) == []
    [entry] = store.open_actions()
    assert entry.next_try_at == 16.0 and entry.tries == 2  # doubled
    [failed] = resume(executor, entry, snapshot(0), 16.0)
    assert isinstance(failed, ActionFailed) and "gave up after 3 tries: Socket timed out" in failed.reason
    executor.settle(failed)
    assert store.open_actions() == [] and store.actions(7)[0].status == ActionStatus.FAILED


def test_retry_delay_is_capped(tmp_path: Path) -> None:
    settings = SETTINGS.with_overrides(action_max_tries=10)
    slurm = ScriptedSlurm(errors=[transient()] * 5)
    executor, store, action = setup(tmp_path, slurm, settings)
    run(executor, action, 0.0)
    for _ in range(4):
        entry = store.open_actions()[0]
        resume(executor, entry, snapshot(0), entry.next_try_at or 0.0)
    entry = store.open_actions()[0]
    assert entry.next_try_at is not None and entry.next_try_at - entry.updated_at == 5.0


def test_refusal_fails_at_once_with_slurms_reason(tmp_path: Path) -> None:
    slurm = ScriptedSlurm(errors=[refused()])
    executor, store, action = setup(tmp_path, slurm)
    [failed] = run(executor, action, 1.0)
    assert isinstance(failed, ActionFailed) and failed.reason == "Requested operation is presently disabled"
    executor.settle(failed)
    assert store.actions(7)[0].error == "Requested operation is presently disabled"


def test_dry_run_records_and_runs_nothing(tmp_path: Path) -> None:
    slurm = ScriptedSlurm()
    executor, store, action = setup(tmp_path, slurm, SETTINGS.with_overrides(dry_run=True))
    [done] = run(executor, action, 1.0)
    assert done == ActionDone(action, 1.0, dry_run=True, tried=False)
    executor.settle(done)
    assert slurm.calls == [] and store.actions(7)[0].status == ActionStatus.DRY_RUN
    assert store.actions(7)[0].dry_run


@pytest.mark.parametrize(("restart_count", "runs"), [(0, True), (1, False)])
def test_resume_after_a_crash_checks_slurm_before_requeueing(tmp_path: Path, restart_count: int, runs: bool) -> None:
    slurm = ScriptedSlurm()
    executor, store, _ = setup(tmp_path, slurm)
    [entry] = store.open_actions()
    [outcome] = resume(executor, entry, snapshot(restart_count), 5.0)
    assert isinstance(outcome, ActionDone) and outcome.tried is runs
    assert (slurm.calls == [("requeue_hold", 7, {})]) is runs
    executor.settle(outcome)
    assert store.open_actions() == []


@pytest.mark.parametrize(("reason", "runs"), [("JobHeldAdmin", True), ("BeginTime", False)])
def test_resume_releases_only_a_job_still_held(tmp_path: Path, reason: str, runs: bool) -> None:
    slurm = ScriptedSlurm()
    executor, store, _ = setup(tmp_path, slurm, SETTINGS.with_overrides(clear_begin_time=False))
    release = store.journal(Action(ActionKind.RELEASE, 7, 0, "release after requeue"), False, 0.0)
    entry = next(e for e in store.open_actions() if e.id == release.journal_id)
    [outcome] = resume(executor, entry, replace(snapshot(1), reason=reason), 5.0)
    assert isinstance(outcome, ActionDone)
    assert (slurm.calls == [("release", 7, {})]) is runs


def test_resume_for_a_job_slurm_forgot_fails_it(tmp_path: Path) -> None:
    slurm = ScriptedSlurm()
    executor, store, _ = setup(tmp_path, slurm)
    [entry] = store.open_actions()
    [outcome] = resume(executor, entry, None, 5.0)
    assert isinstance(outcome, ActionFailed) and outcome.reason == "job no longer in Slurm"
    assert slurm.calls == []


def test_action_decided_in_dry_run_never_runs_for_real_after_a_restart(tmp_path: Path) -> None:
    slurm = ScriptedSlurm()
    store = Store(tmp_path / "ajr.db")
    store.journal(HOLD, dry_run=True, now=0.0)
    executor = Executor(slurm, store, SETTINGS, pool=InlinePool())  # the agent now runs live
    [entry] = store.open_actions()
    [outcome] = resume(executor, entry, snapshot(0), 1.0)
    assert isinstance(outcome, ActionDone) and outcome.dry_run and slurm.calls == []


# ---- commands run off the loop ----------------------------------------------------------------


class Blocking(ScriptedSlurm):
    """Slurm that does not answer for job 7 until told to."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = threading.Event()

    def requeue_hold(self, job_id: int) -> None:
        if job_id == 7:
            self.answer.wait(30)
        super().requeue_hold(job_id)


def take_until(executor: Executor, count: int, seconds: float = 10) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + seconds
    while len(events) < count and time.monotonic() < deadline:
        events += executor.take(1.0)
        time.sleep(0.01)
    return events


def test_a_slow_answer_for_one_job_holds_up_no_other(tmp_path: Path) -> None:
    slurm = Blocking()
    store = Store(tmp_path / "ajr.db")
    executor = Executor(slurm, store, SETTINGS)
    seven = store.journal(HOLD, False, 0.0)
    eight = store.journal(replace(HOLD, job_id=8), False, 0.0)
    assert executor.start(seven, 1.0) == [] and executor.start(eight, 1.0) == []
    try:
        assert take_until(executor, 1) == [ActionDone(eight, 1.0)] and executor.busy()
    finally:
        slurm.answer.set()
    assert take_until(executor, 1) == [ActionDone(seven, 1.0)] and not executor.busy()
    executor.close()


def test_a_job_s_actions_run_one_after_the_other_in_the_order_decided(tmp_path: Path) -> None:
    slurm = Blocking()
    store = Store(tmp_path / "ajr.db")
    executor = Executor(slurm, store, SETTINGS)
    hold = store.journal(HOLD, False, 0.0)
    note = store.journal(Action(ActionKind.ANNOTATE, 7, 0, "ajr: requeued"), False, 0.0)
    executor.start(hold, 1.0)
    executor.start(note, 1.0)
    time.sleep(0.2)
    assert slurm.calls == [] and executor.take(1.0) == []  # the annotation waits for the hold
    slurm.answer.set()
    assert take_until(executor, 2) == [ActionDone(hold, 1.0), ActionDone(note, 1.0)]
    assert [c[0] for c in slurm.calls] == ["requeue_hold", "update"]
    executor.close()


class Broken(ScriptedSlurm):
    def requeue_hold(self, job_id: int) -> None:
        raise KeyError("a bug, not Slurm")


def test_an_unexpected_error_in_a_command_is_a_failed_action(tmp_path: Path) -> None:
    executor, store, action = setup(tmp_path, Broken())
    [failed] = run(executor, action, 1.0)
    assert isinstance(failed, ActionFailed) and "unexpected error" in failed.reason


def test_a_release_left_open_by_a_crash_runs_for_a_job_requeuehold_left_held(tmp_path: Path) -> None:
    """What squeue shows right after a requeuehold is "job requeued in held state", not JobHeldAdmin."""
    slurm = MemorySlurm(jobs={7: replace(snapshot(0), state="RUNNING", reason="None")})
    slurm.requeue_hold(7)
    store = Store(tmp_path / "ajr.db")
    store.journal(Action(ActionKind.RELEASE, 7, 0, "release after requeue"), False, 0.0)
    executor = Executor(slurm, store, SETTINGS.with_overrides(clear_begin_time=False), pool=InlinePool())
    [entry] = store.open_actions()
    [outcome] = resume(executor, entry, slurm.list_jobs()[0], 5.0)
    assert isinstance(outcome, ActionDone) and outcome.tried
    assert slurm.list_jobs()[0].reason == "None", "released"
