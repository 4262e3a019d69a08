"""What a rule is: the schema of a ``[[rule]]`` table, what a match of it carries, and which
match of several explains a failure (`root_cause`). An anomaly rule's ``fault`` is the
domain's `Fault`: where the verdict puts the blame. A checkpoint rule's ``stage`` tells a
save begun from a save done; a throughput rule's ``better`` tells whether its number is a
rate (higher is better) or a time per iteration (lower is better): the domain's `Better`,
which the straggler check and its events carry; ``unit`` names the number."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import regex
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.model import Better, Fault

DEFAULT_PRIORITY = 50
"""Priority of an anomaly rule that does not set one: the middle of the 0-1000 scale."""

_NAME_RE = regex.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CATEGORY_RE = regex.compile(r"[a-z][a-z0-9_]*")


class RuleKind(StrEnum):
    """What a match of the rule means."""

    CHECKPOINT = "checkpoint"
    ANOMALY = "anomaly"
    THROUGHPUT = "throughput"


class CheckpointStage(StrEnum):
    """Which moment of a save a checkpoint rule's line reports.

    Only a completed save protects work: a save that started and was followed by a
    failure before it completed saved nothing. STARTED is for frameworks that print a
    line when the save is done too (a rule of stage COMPLETED for it): a save begun
    counts only once such a line comes. A framework that prints nothing after its start
    line keeps that rule COMPLETED, or none of its saves would ever count."""

    STARTED = "started"
    COMPLETED = "completed"


_MAX_UNIT_CHARS = 32

# The keys that belong to one kind only, with the default each takes on a rule of that kind.
_KIND_DEFAULTS: dict[str, dict[str, object]] = {
    "checkpoint": {"stage": CheckpointStage.COMPLETED},
    "throughput": {"better": Better.HIGHER},
}
_KIND_KEYS = {"stage": "checkpoint", "better": "throughput", "unit": "throughput"}


class RuleFileError(AjrError):
    """A rule file cannot be read or holds an invalid rule."""


def _check_rule_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"name {name!r} must be letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


RuleName = Annotated[StrictStr, AfterValidator(_check_rule_name)]
"""A rule's name as rule files may spell it; the rule entries of the loader share it."""


class Rule(BaseModel):
    """One validated rule; ``source`` is the file it came from (set by the loader)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RuleName
    kind: RuleKind
    pattern: StrictStr = Field(min_length=1)
    category: StrictStr | None = None
    fault: Fault = Fault.UNKNOWN
    priority: StrictInt = Field(default=DEFAULT_PRIORITY, ge=0, le=1000)
    cascade: StrictBool = False
    ignore_case: StrictBool = True
    enabled: StrictBool = True
    stage: CheckpointStage | None = None
    better: Better | None = None
    unit: StrictStr = Field(default="", max_length=_MAX_UNIT_CHARS)
    description: StrictStr = ""
    source: StrictStr = ""

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("kind")
        for key, owner in _KIND_KEYS.items():
            # Silently ignoring these would hide a rule whose kind is a typo.
            if key in data and isinstance(kind, str) and kind != owner and kind in set(RuleKind):
                raise ValueError(f"{key} is only for {owner} rules, not {kind}")
        defaults = _KIND_DEFAULTS.get(kind, {}) if isinstance(kind, str) else {}
        missing = {k: v for k, v in defaults.items() if data.get(k) is None}
        return {**data, **missing} if missing else data

    @field_validator("unit")
    @classmethod
    def _check_unit(cls, unit: str) -> str:
        # Shown in the CLI, the cockpit and metrics labels: one line of text.
        if not unit.isprintable():
            raise ValueError("unit must be printable text on one line")
        return unit

    @field_validator("category")
    @classmethod
    def _check_category(cls, category: str | None) -> str | None:
        if category is not None and not _CATEGORY_RE.fullmatch(category):
            raise ValueError(
                f"category {category!r} must be lower-case letters, digits and '_', "
                "starting with a letter"
            )
        return category

    @model_validator(mode="after")
    def _check_rule(self) -> Rule:
        if self.kind is RuleKind.ANOMALY:
            if self.category is None:
                raise ValueError("an anomaly rule needs a category")
        else:
            # Silently ignoring these would hide a rule whose kind is a typo.
            if self.category is not None:
                raise ValueError(f"category is only for anomaly rules, not {self.kind.value}")
            for key in ("fault", "priority", "cascade"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} is only for anomaly rules, not {self.kind.value}")
        try:
            compiled = self.compile()
        except regex.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from None
        if self.kind is RuleKind.THROUGHPUT and "value" not in compiled.groupindex:
            raise ValueError(
                "a throughput pattern needs a named group (?P<value>...) around the number"
            )
        return self

    def compile(self) -> regex.Pattern[str]:
        """Return the rule's pattern compiled, ignoring case if the rule says so."""
        return regex.compile(self.pattern, regex.IGNORECASE if self.ignore_case else 0)


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A rule that matched a line; ``value`` is the number a throughput rule captured."""

    rule: Rule
    value: float | None = None


def root_cause(matches: Iterable[RuleMatch]) -> RuleMatch | None:
    """Return the anomaly match that best explains ``matches``, or None if there is none.

    ``matches`` may come from one line or from all the anomaly lines of an
    attempt, in the order they were seen. A match of a rule that is not a
    cascade beats every cascade match; among those left the highest
    ``priority`` wins, and on a tie the earliest. Checkpoint and throughput
    matches are ignored.
    """
    best: RuleMatch | None = None
    best_rank = (False, -1)
    for match in matches:
        rule = match.rule
        if rule.kind is not RuleKind.ANOMALY:
            continue
        rank = (not rule.cascade, rule.priority)
        if rank > best_rank:  # strictly greater: the earliest of equals stays
            best, best_rank = match, rank
    return best
