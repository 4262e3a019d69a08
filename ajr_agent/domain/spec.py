"""The job's opt-in spec: the JSON a user puts in `sbatch --comment`.

`{"APS": {}}` is enough to be managed. A comment without an `APS` key is simply not
ours; a comment that mentions APS but is broken leaves the job unmanaged with the
reason kept, so an operator can tell the user what to fix.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from ajr_agent.domain.validation import describe_validation_error

SPEC_KEY = "APS"
EXAMPLE = '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'
# Bounds on what a user may ask for; slurm_hooks/job_submit.lua refuses the same at submission.
# Beyond them a number means nothing here, and past 2**63 SQLite cannot even store it.
MAX_REQUEUE_TIMES = 10_000
MAX_HEARTBEAT_TIMEOUT = 30 * 24 * 3600  # 30 days, in seconds
# A comment is read at every poll, and by job_submit.lua under slurmctld's locks: its size and
# nesting bound the work. Both refuse the same.
MAX_COMMENT_BYTES = 16_384
MAX_DEPTH = 64


class ResumeMode(StrEnum):
    """How a failed job comes back."""

    REQUEUE = "requeue"
    SINGLETON = "singleton_dependency"


class ApsSpec(BaseModel):
    """The validated content of the `APS` object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auto_resume_mode: ResumeMode = ResumeMode.REQUEUE
    # None means "as many as the site allows"; a job can only lower the site cap.
    max_requeue_times: StrictInt | None = Field(default=None, ge=0, le=MAX_REQUEUE_TIMES)
    # Seconds without a log line before the job counts as hung; None: site default.
    heartbeat_timeout: StrictInt | None = Field(default=None, gt=0, le=MAX_HEARTBEAT_TIMEOUT)


@dataclass(frozen=True)
class SpecVerdict:
    """What a comment means for AJR: managed with a spec, or not, and why not."""

    spec: ApsSpec | None
    problem: str | None = None

    @property
    def managed(self) -> bool:
        """True when the job opted in with a valid spec."""
        return self.spec is not None


NOT_MANAGED = SpecVerdict(spec=None, problem=None)


def parse_comment(comment: str | None) -> SpecVerdict:
    """Read a job comment. Never raises: a broken spec is a verdict with a problem."""
    if not comment or SPEC_KEY not in comment:
        return NOT_MANAGED
    size = len(comment.encode("utf-8", "surrogateescape"))
    if size > MAX_COMMENT_BYTES:
        return SpecVerdict(spec=None, problem=f"comment mentions {SPEC_KEY} but holds {size} bytes; AJR reads "
                           f"at most {MAX_COMMENT_BYTES} bytes. Example: {EXAMPLE}")  # fmt: skip
    too_deep = SpecVerdict(spec=None, problem=f"comment mentions {SPEC_KEY} but nests objects and arrays deeper "
                           f"than AJR reads (at most {MAX_DEPTH} nested objects and arrays). Example: {EXAMPLE}")  # fmt: skip
    try:
        document = json.loads(comment)
    except RecursionError:
        return too_deep
    except json.JSONDecodeError as exc:
        return SpecVerdict(
            spec=None,
            problem=f"comment mentions {SPEC_KEY} but is not valid JSON: {exc.msg} at position {exc.pos}. "
            f"Example: {EXAMPLE}",
        )
    except ValueError:  # the one other refusal of json.loads: an integer longer than Python converts
        return SpecVerdict(spec=None, problem=f"comment mentions {SPEC_KEY} but holds a number of more than "
                           f"{sys.get_int_max_str_digits()} digits. Example: {EXAMPLE}")  # fmt: skip
    if _depth(document) > MAX_DEPTH:
        return too_deep
    if not isinstance(document, dict) or SPEC_KEY not in document:
        return NOT_MANAGED
    body = document[SPEC_KEY]
    if not isinstance(body, dict):
        return SpecVerdict(
            spec=None,
            problem=f'"{SPEC_KEY}" must be a JSON object, got {type(body).__name__}. Example: {EXAMPLE}',
        )
    try:
        return SpecVerdict(spec=ApsSpec.model_validate(body))
    except ValidationError as exc:
        return SpecVerdict(spec=None, problem=f"{describe_validation_error(exc)}. Example: {EXAMPLE}")


def _depth(document: object) -> int:
    """How deep objects and arrays nest in a parsed document (a scalar is 0 deep)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest
