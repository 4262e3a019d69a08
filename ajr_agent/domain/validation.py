"""Pydantic's validation errors as sentences a user or an admin can act on.

Every input AJR checks with a pydantic model (a job's spec, the settings, a rule file,
the cockpit's query parameters) reports its problems the same way: the source, then
for each problem the key's path, what is wrong and, where it helps, the value given,
cut short so that one long value cannot drown the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable

from pydantic import ValidationError

# Enough to recognise a value (a path, a mode, a number), short enough for a job's
# AdminComment and a log line.
SHOWN_CHARACTERS = 60


class ProblemKind(StrEnum):
    """What is wrong with one key."""

    UNKNOWN_KEY = "unknown_key"
    MISSING_KEY = "missing_key"
    INVALID = "invalid"  # the key is known and given, its value is not acceptable


@dataclass(frozen=True)
class FieldProblem:
    """One problem pydantic found: where, of what kind, in words, and the value given (shown cut)."""

    location: tuple[str | int, ...]  # () for a check of the whole input
    kind: ProblemKind
    message: str
    got: str | None  # None where the value adds nothing: unknown and missing keys, checks of the whole input

    @property
    def path(self) -> str:
        """The key as written in TOML or JSON: `items[1].size`; '' for the whole input."""
        text = ""
        for part in self.location:
            text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
        return text

    @property
    def top_key(self) -> str | None:
        """The top-level key the problem lies under (the settings tell file from environment by it)."""
        return str(self.location[0]) if self.location else None

    def __str__(self) -> str:
        if self.kind is ProblemKind.UNKNOWN_KEY:
            return f"unknown key {self.path!r}"
        if self.kind is ProblemKind.MISSING_KEY:
            return f"missing key {self.path!r}"
        where = f"{self.path}: " if self.path else ""
        shown = f" (got {self.got})" if self.got is not None else ""
        return f"{where}{self.message}{shown}"


def validation_problems(exc: ValidationError) -> list[FieldProblem]:
    """The problems of a ValidationError, in pydantic's order."""
    problems = []
    for error in exc.errors():
        location = tuple(error["loc"])
        kind = {"extra_forbidden": ProblemKind.UNKNOWN_KEY, "missing": ProblemKind.MISSING_KEY}.get(
            error["type"], ProblemKind.INVALID
        )
        cause = error.get("ctx", {}).get("error")
        # Our own validators' words, without pydantic's "Value error, " in front of them.
        message = str(cause) if error["type"] in ("value_error", "assertion_error") and cause else error["msg"]
        got = _shown(repr(error.get("input"))) if kind is ProblemKind.INVALID and location else None
        problems.append(FieldProblem(location, kind, message, got))
    return problems


def describe_problems(problems: Iterable[FieldProblem], source: str = "") -> str:
    """Problems as one line: `source: problem; problem` (no source: the problems alone)."""
    text = "; ".join(map(str, problems))
    return f"{source}: {text}" if source else text


def describe_validation_error(exc: ValidationError, source: str = "") -> str:
    """A ValidationError as one line naming the source, each key's path, what is wrong and the value given."""
    return describe_problems(validation_problems(exc), source)


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "..."
