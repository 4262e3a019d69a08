"""Pydantic's errors as AJR shows them: the key's path, what is wrong, the value given, the source."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ajr_agent.domain.validation import (
    SHOWN_CHARACTERS,
    FieldProblem,
    ProblemKind,
    describe_problems,
    describe_validation_error,
    validation_problems,
)


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    size: int = Field(default=1, ge=0)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pattern: str = ""
    items: tuple[Inner, ...] = ()
    low: int = 0
    high: int = 0

    @field_validator("pattern")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        if " " in value:
            raise ValueError("must hold no spaces")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "Outer":
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


def error_of(values: dict[str, object]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate(values)
    return caught.value


def test_a_wrong_value_names_its_key_what_is_wrong_and_the_value() -> None:
    [problem] = validation_problems(error_of({"low": -1, "high": "many"}))
    assert problem == FieldProblem(("high",), ProblemKind.INVALID, problem.message, "'many'")
    assert str(problem) == "high: Input should be a valid integer, unable to parse string as an integer (got 'many')"


def test_unknown_and_missing_keys_name_the_key_and_not_the_value() -> None:
    problems = validation_problems(error_of({"colour": "red", "items": [{"size": 2}]}))
    assert [(p.kind, str(p)) for p in problems] == [
        (ProblemKind.MISSING_KEY, "missing key 'items[0].name'"),
        (ProblemKind.UNKNOWN_KEY, "unknown key 'colour'"),
    ]


def test_nested_paths_read_as_written_in_toml_or_json() -> None:
    [problem] = validation_problems(error_of({"items": [{"name": "a"}, {"name": "b", "size": -3}]}))
    assert problem.path == "items[1].size" and problem.top_key == "items"
    assert str(problem) == "items[1].size: Input should be greater than or equal to 0 (got -3)"


def test_our_own_validators_speak_without_pydantics_prefix() -> None:
    [field] = validation_problems(error_of({"pattern": "a b"}))
    assert str(field) == "pattern: must hold no spaces (got 'a b')"
    # A check of the whole object has no key to name, and the whole input is not worth repeating.
    [whole] = validation_problems(error_of({"low": 2, "high": 1}))
    assert (whole.path, whole.top_key, whole.got) == ("", None, None)
    assert str(whole) == "low must not exceed high"


def test_a_long_value_is_cut_so_the_message_stays_readable() -> None:
    [problem] = validation_problems(error_of({"pattern": "x " * 10_000}))
    assert problem.got is not None and problem.got.endswith("...")
    assert len(problem.got) == SHOWN_CHARACTERS + len("...")


def test_the_source_comes_first_and_the_problems_follow_in_one_line() -> None:
    exc = error_of({"low": "x", "colour": 1})
    assert describe_validation_error(exc, "/etc/ajr/ajr.toml") == (
        "/etc/ajr/ajr.toml: low: Input should be a valid integer, unable to parse string as an integer (got 'x'); "
        "unknown key 'colour'"
    )
    assert describe_validation_error(exc) == describe_problems(validation_problems(exc))
    assert not describe_validation_error(exc).startswith(":")
