"""Budgets by cause over plain data: failures a verdict puts on a node or on the infrastructure are
counted apart from the job's own, each against its cap; max_requeue_times stays the total bound
unless the site chooses otherwise."""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.domain import adoption, budgets, policy
from ajr_agent.domain.events import ActionDone, ActionFailed, AnomalyFound, Attributed, AttemptStarted, JobEnded
from ajr_agent.domain.model import (
    ActionKind,
    Basis,
    Budget,
    Fault,
    ManagedJob,
    Phase,
    StopCause,
    Verdict,
)
from ajr_agent.domain.settings import LimitScope, Settings
from ajr_agent.domain.spec import ResumeMode

SETTINGS = Settings(annotate_jobs=False, node_requeue_cap=2, infrastructure_requeue_cap=1, crashloop_threshold=3)
APPLICATION_SCOPE = SETTINGS.with_overrides(requeue_limit_scope=LimitScope.APPLICATION, site_requeue_cap=6,
                                            crashloop_threshold=10)  # fmt: skip


def job(limit: int = 3, attempt: int = 0, **changes: object) -> ManagedJob:
    base = ManagedJob(7, "train", "alice", 1000, ResumeMode.REQUEUE, limit, limit, attempt=attempt,
                      attempt_started=1000.0, nodes="gpu-1")  # fmt: skip
    return replace(base, **changes)


def line(fault: Fault, attempt: int = 0) -> AnomalyFound:
    return AnomalyFound(7, attempt, 1010.0, "xid_79" if fault is Fault.NODE else "segfault", "gpu_hardware", fault,
                        "/x/train_7.log", "gpu-1: NVRM: Xid 79")  # fmt: skip


def verdict(fault: Fault, attempt: int = 0) -> Attributed:
    nodes = ("gpu-1",) if fault is Fault.NODE else ()
    return Attributed(7, attempt, 1011.0, Verdict(fault, nodes, "cause (rule)", ("l",), Basis.NODE_LOG))


def fail(current: ManagedJob, fault: Fault, settings: Settings = SETTINGS, found: Fault | None = None) -> ManagedJob:
    """One failure of the current attempt, its verdict, and the next attempt started."""
    failed = policy.decide(current, line(fault, current.attempt), settings).job
    if failed.phase is Phase.STOPPED:
        return failed
    judged = policy.decide(failed, verdict(found or fault, current.attempt), settings).job
    return policy.decide(judged, AttemptStarted(7, current.attempt + 1, 1100.0, "gpu-2"), settings).job


def test_a_node_failure_is_counted_against_the_node_budget_not_the_job_s_own() -> None:
    after = fail(job(), Fault.NODE)
    assert (after.requeues_used, after.app_requeues, after.node_requeues, after.infra_requeues) == (1, 0, 1, 0)
    after = fail(after, Fault.APPLICATION)
    assert (after.requeues_used, after.app_requeues, after.node_requeues) == (2, 1, 1)


def test_the_verdict_moves_the_count_to_where_it_puts_the_fault() -> None:
    # The failing line looked like the job's own; the node's log showed the node at fault.
    failed = policy.decide(job(), line(Fault.APPLICATION), SETTINGS).job
    assert failed.charged is Budget.APPLICATION and failed.app_requeues == 1 and failed.failure_streak == 1
    moved = policy.decide(failed, verdict(Fault.NODE), SETTINGS)
    assert moved.job.charged is Budget.NODE and (moved.job.app_requeues, moved.job.node_requeues) == (0, 1)
    # A node's fault is no step of the job's own crash loop.
    assert moved.job.failure_streak == 0
    assert any("node budget (1/2)" in n.text for n in moved.notes)
    back = policy.decide(policy.decide(job(), line(Fault.NODE), SETTINGS).job, verdict(Fault.APPLICATION), SETTINGS)
    assert (back.job.app_requeues, back.job.node_requeues, back.job.failure_streak) == (1, 0, 1)


def test_the_node_cap_stops_the_requeues_though_the_limit_is_not_reached() -> None:
    current = job(limit=10)
    for _ in range(2):
        current = fail(current, Fault.NODE)
    stopped = policy.decide(current, line(Fault.NODE, current.attempt), SETTINGS)
    assert stopped.job.phase is Phase.STOPPED and stopped.job.stop_cause is StopCause.NODE_LIMIT
    assert "requeues after node failures reached (2/2)" in (stopped.job.stop_reason or "")
    assert stopped.actions == ()
    # The job's own failures still have their budget.
    assert [a.kind for a in policy.decide(current, line(Fault.APPLICATION, current.attempt), SETTINGS).actions] == [
        ActionKind.REQUEUE_HOLD]


def test_the_infrastructure_has_its_cap_too() -> None:
    current = fail(job(limit=10), Fault.INFRASTRUCTURE)
    stopped = policy.decide(current, line(Fault.INFRASTRUCTURE, current.attempt), SETTINGS).job
    assert stopped.stop_cause is StopCause.INFRASTRUCTURE_LIMIT


def test_by_default_max_requeue_times_bounds_every_requeue() -> None:
    current = job(limit=3)
    for fault in (Fault.NODE, Fault.APPLICATION, Fault.NODE):
        current = fail(current, fault)
    stopped = policy.decide(current, line(Fault.APPLICATION, current.attempt), SETTINGS).job
    assert stopped.stop_cause is StopCause.LIMIT and "requeue limit reached (3/3)" in (stopped.stop_reason or "")


def test_the_site_may_have_max_requeue_times_bound_the_job_s_own_failures_only() -> None:
    current = job(limit=3)
    for fault in (Fault.NODE, Fault.APPLICATION, Fault.NODE, Fault.APPLICATION):
        current = fail(current, fault, APPLICATION_SCOPE)
    assert (current.requeues_used, current.app_requeues, current.node_requeues) == (4, 2, 2)
    assert current.phase is not Phase.STOPPED
    current = fail(current, Fault.APPLICATION, APPLICATION_SCOPE)
    stopped = policy.decide(current, line(Fault.APPLICATION, current.attempt), APPLICATION_SCOPE).job
    assert stopped.stop_cause is StopCause.LIMIT
    assert "requeue limit for the job's own failures reached (3/3)" in (stopped.stop_reason or "")


def test_in_application_scope_the_site_cap_bounds_the_total() -> None:
    current = job(limit=50, requeues_used=6, app_requeues=2, node_requeues=1, infra_requeues=0)
    stopped = policy.decide(current, line(Fault.APPLICATION), APPLICATION_SCOPE).job
    assert stopped.stop_cause is StopCause.LIMIT and "site requeue cap reached (6/6)" in (stopped.stop_reason or "")


def test_node_failures_do_not_make_a_crash_loop() -> None:
    current = job(limit=10)
    for _ in range(2):
        current = fail(current, Fault.NODE, SETTINGS.with_overrides(node_requeue_cap=5))
    assert current.failure_streak == 0
    for _ in range(2):
        current = fail(current, Fault.APPLICATION)
    stopped = policy.decide(current, line(Fault.APPLICATION, current.attempt), SETTINGS).job
    assert stopped.stop_cause is StopCause.CRASH_LOOP


def test_a_node_fail_end_is_charged_to_the_node_budget_at_once() -> None:
    ended = policy.decide(job(), JobEnded(7, 0, 1010.0, "NODE_FAIL"), SETTINGS).job
    assert ended.charged is Budget.NODE and ended.node_requeues == 1 and ended.failure_streak == 0


def test_a_refused_requeue_gives_the_count_back() -> None:
    holding = policy.decide(job(), line(Fault.NODE), SETTINGS)
    refused = policy.decide(holding.job, ActionFailed(holding.actions[0], 1012.0, "not requeueable"), SETTINGS).job
    assert (refused.requeues_used, refused.node_requeues, refused.charged) == (0, 0, None)


def test_a_chain_passes_its_counts_on() -> None:
    predecessor = job(requeues_used=3, app_requeues=1, node_requeues=2, infra_requeues=0, chain="train@7")
    successor = adoption.inherit(job(), predecessor)
    assert (successor.app_requeues, successor.node_requeues, successor.infra_requeues) == (1, 2, 0)


def test_the_budgets_as_shown() -> None:
    shown = budgets.shown(job(limit=3, app_requeues=1, node_requeues=2), SETTINGS)
    assert [(b.budget, b.used, b.cap) for b in shown] == [
        (Budget.APPLICATION, 1, 3), (Budget.NODE, 2, 2), (Budget.INFRASTRUCTURE, 0, 1)]
    assert budgets.summary(job(limit=3, requeues_used=3, app_requeues=1, node_requeues=2), SETTINGS) == (
        "3/3 (own failures 1/3, node 2/2, infrastructure 0/1)")


def test_a_job_that_ended_done_with_its_own_failure_keeps_its_budget_for_later_ones() -> None:
    # The ActionDone of the hold changes no count: the failure was charged once, when it came.
    holding = policy.decide(job(), line(Fault.NODE), SETTINGS)
    held = policy.decide(holding.job, ActionDone(holding.actions[0], 1011.0), SETTINGS).job
    assert (held.requeues_used, held.node_requeues) == (1, 1)
