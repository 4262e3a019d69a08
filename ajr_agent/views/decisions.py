"""What a policy decision means to those who watch the agent: a recovery done, a recovery refused.

Metrics count these and notifications tell people about them; both read the decision's
typed fields (phases, the stop cause), never its sentences.
"""

from __future__ import annotations

from ajr_agent.domain.events import ActionDone, Event
from ajr_agent.domain.model import ActionKind, Decision, ManagedJob, Phase, StopCause


def refusal(before: ManagedJob, decision: Decision) -> StopCause | None:
    """Why the decision stops recovering the job (limit, crash_loop, slurm_refused, ...); None when it does not."""
    after = decision.job
    if after.phase is not Phase.STOPPED or before.phase is Phase.STOPPED:
        return None
    return after.stop_cause


def recovered(before: ManagedJob, event: Event, decision: Decision) -> bool:
    """The decision completes a recovery: the job, or the chain's next job, was released."""
    return (
        isinstance(event, ActionDone)
        and event.action.kind is ActionKind.RELEASE
        and decision.job.phase in (Phase.RESTARTING, Phase.HANDED_OVER)
        and before.phase is not decision.job.phase
    )
