"""Budgets by cause: a job's requeues counted by whose fault the failure was, each against its cap.

A failure is charged when it comes, to the budget the failing line points at (its rule's
fault; a NODE_FAIL end: the node), and moved when the verdict puts the fault elsewhere. The
caps are checked when a failure comes, so a verdict that moves a count may take a budget
one past its cap: the next failure of that cause stops the requeues. Failures put on a node
or on the infrastructure are no step of the job's own crash loop either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ajr_agent.domain.model import Budget, Fault, ManagedJob, Note, NoteKind, StopCause
from ajr_agent.domain.settings import LimitScope, Settings

# Words for people, by budget.
_NAMES = {Budget.APPLICATION: "the job's own failures", Budget.NODE: "node failures",
          Budget.INFRASTRUCTURE: "infrastructure failures"}  # fmt: skip
_SHORT = {Budget.APPLICATION: "own failures", Budget.NODE: "node", Budget.INFRASTRUCTURE: "infrastructure"}
_COUNTERS = {Budget.APPLICATION: "app_requeues", Budget.NODE: "node_requeues", Budget.INFRASTRUCTURE: "infra_requeues"}
# Slurm's ends that say a node failed under the job.
_NODE_ENDS = frozenset({"NODE_FAIL", "BOOT_FAIL"})


@dataclass(frozen=True)
class Use:
    """One budget of a job: how much of it is used, and its cap."""

    budget: Budget
    used: int
    cap: int


def of_fault(fault: Fault) -> Budget:
    """The budget a failure with this fault is counted against; an unknown cause is the job's own."""
    if fault is Fault.NODE:
        return Budget.NODE
    if fault is Fault.INFRASTRUCTURE:
        return Budget.INFRASTRUCTURE
    return Budget.APPLICATION


def of_end(slurm_state: str) -> Fault:
    """What an attempt's end in Slurm says of its fault before any verdict."""
    return Fault.NODE if slurm_state in _NODE_ENDS else Fault.UNKNOWN


def used(job: ManagedJob, budget: Budget) -> int:
    """The requeues counted against `budget`."""
    return int(getattr(job, _COUNTERS[budget]))


def cap(job: ManagedJob, budget: Budget, settings: Settings) -> int:
    """The most requeues `budget` allows: the job's limit for its own failures, the site's caps for the others."""
    if budget is Budget.NODE:
        return settings.node_requeue_cap
    if budget is Budget.INFRASTRUCTURE:
        return settings.infrastructure_requeue_cap
    return job.limit


def total_cap(job: ManagedJob, settings: Settings) -> int:
    """The most requeues in all: the job's limit, or (application scope) the site's cap."""
    return job.limit if settings.requeue_limit_scope is LimitScope.TOTAL else settings.site_requeue_cap


def exhausted(job: ManagedJob, budget: Budget, settings: Settings) -> tuple[StopCause, str] | None:
    """Why one more requeue for a failure charged to `budget` is not allowed, or None."""
    total = total_cap(job, settings)
    if job.requeues_used >= total:
        what = "requeue limit" if settings.requeue_limit_scope is LimitScope.TOTAL else "site requeue cap"
        return StopCause.LIMIT, f"{what} reached ({job.requeues_used}/{total})"
    count, most = used(job, budget), cap(job, budget, settings)
    if budget is Budget.APPLICATION:
        if settings.requeue_limit_scope is LimitScope.APPLICATION and count >= most:
            return StopCause.LIMIT, f"requeue limit for {_NAMES[budget]} reached ({count}/{most})"
        return None
    if count >= most:
        cause = StopCause.NODE_LIMIT if budget is Budget.NODE else StopCause.INFRASTRUCTURE_LIMIT
        return cause, f"cap on requeues after {_NAMES[budget]} reached ({count}/{most})"
    return None


def charge(job: ManagedJob, budget: Budget) -> ManagedJob:
    """Count the handled failure against `budget`."""
    return replace(job, charged=budget, **{_COUNTERS[budget]: used(job, budget) + 1})  # type: ignore[arg-type]


def refund(job: ManagedJob) -> ManagedJob:
    """Give back what the handled failure was charged (Slurm refused its requeue)."""
    if job.charged is None:
        return job
    return replace(job, charged=None, **{_COUNTERS[job.charged]: max(used(job, job.charged) - 1, 0)})  # type: ignore[arg-type]


def recharge(job: ManagedJob, fault: Fault, settings: Settings) -> tuple[ManagedJob, tuple[Note, ...]]:
    """Move the handled failure's count to the budget its verdict points at; the crash-loop count
    follows (a failure not the job's own is no step of its crash loop)."""
    budget = of_fault(fault)
    if job.charged is None or job.charged is budget:
        return job, ()
    moved = charge(refund(job), budget)
    if not job.attempt_succeeded:
        step = 1 if budget is Budget.APPLICATION else -1 if job.charged is Budget.APPLICATION else 0
        moved = replace(moved, failure_streak=max(moved.failure_streak + step, 0))
    text = (f"counted against the {_SHORT[budget]} budget ({used(moved, budget)}/{cap(moved, budget, settings)}), "
            f"not the {_SHORT[job.charged]} one")  # fmt: skip
    return moved, (Note(NoteKind.VERDICT, text),)


def streak_step(job: ManagedJob, budget: Budget) -> int:
    """How much a failure charged to `budget` adds to the crash-loop count."""
    return 0 if job.attempt_succeeded or budget is not Budget.APPLICATION else 1


def shown(job: ManagedJob, settings: Settings) -> list[Use]:
    """Each budget of the job with its use and cap, as operators see them."""
    return [Use(budget, used(job, budget), cap(job, budget, settings)) for budget in Budget]


def summary(job: ManagedJob, settings: Settings) -> str:
    """The requeues in all and by budget, on one line: `3/10 (own failures 1/10, node 2/5, infrastructure 0/5)`."""
    parts = ", ".join(f"{_SHORT[u.budget]} {u.used}/{u.cap}" for u in shown(job, settings))
    return f"{job.requeues_used}/{total_cap(job, settings)} ({parts})"
