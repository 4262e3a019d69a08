"""What an attempt's progress reports mean to the policy: a completed checkpoint save (saved
work, and the restart's success), a save that began and never completed before the attempt
failed (nothing saved), and a throughput drop told in the reading's own unit and direction.

Pure, like the policy that calls it: a save begun moves nothing; only a completed one sets the
attempt's checkpoints, which restart success, the crash-loop count and efficiency read.
"""

from __future__ import annotations

from dataclasses import replace

from ajr_agent.domain.events import CheckpointFailed, CheckpointSaved, StragglerFound
from ajr_agent.domain.model import Better, Decision, ManagedJob, Note, NoteKind
from ajr_agent.domain.settings import RestartSuccess, Settings


def succeeded(job: ManagedJob, attempt: int, how: str) -> Decision:
    """The current attempt met the site's restart criterion (`how`): the crash-loop count starts again."""
    if attempt != job.attempt or job.attempt_succeeded:
        return Decision(job)
    done = replace(job, attempt_succeeded=True, failure_streak=0)
    text = f"restart successful ({how})" if job.attempt > 0 or job.chain else f"attempt {attempt} healthy ({how})"
    return Decision(done, notes=(Note(NoteKind.SUCCESS, text),))


def saved(job: ManagedJob, event: CheckpointSaved, settings: Settings) -> Decision:
    """A completed save of the current attempt; with `restart_success = checkpoint`, its first is the success."""
    if event.attempt != job.attempt:
        return Decision(job)
    first = job.attempt_first_checkpoint or event.at
    done = replace(job, last_checkpoint=event.at, attempt_first_checkpoint=first, attempt_last_checkpoint=event.at)
    notes = [Note(NoteKind.CHECKPOINT, f"checkpoint saved ({event.rule})")]
    if settings.restart_success is RestartSuccess.CHECKPOINT and not job.attempt_succeeded:
        success = succeeded(done, event.attempt, "first checkpoint saved")
        return Decision(success.job, notes=(*notes, *success.notes))
    return Decision(done, notes=tuple(notes))


def failed(job: ManagedJob, event: CheckpointFailed) -> Decision:
    """A save that began and did not complete before its attempt failed: told, the job unchanged."""
    text = f"checkpoint save started ({event.rule}) did not complete before attempt {event.attempt} failed: " \
           "not counted as saved"  # fmt: skip
    return Decision(job, notes=(Note(NoteKind.CHECKPOINT_FAILED, text),))


def straggler_text(event: StragglerFound, settings: Settings) -> str:
    """The straggler's line of the job's story, in the rule's unit and direction."""
    recent = ", ".join(f"{v:g}" for v in event.recent)
    # A time per iteration above baseline / fraction is a rate below the fraction of its baseline.
    change = (f"rose above {1 / settings.straggler_fraction:.0%}" if event.better is Better.LOWER
              else f"fell below {settings.straggler_fraction:.0%}")  # fmt: skip
    unit = f" {event.unit}" if event.unit else ""
    return (f"straggler: {event.rule or 'throughput'} {change} of the attempt's baseline {event.baseline:g}{unit} "
            f"for {len(event.recent)} reports ({recent})")  # fmt: skip
