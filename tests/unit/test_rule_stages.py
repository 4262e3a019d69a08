"""A checkpoint rule's stage (a save begun or done) and a throughput rule's direction and unit:
the schema rule files use for them, and what the loader refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import regex

from ajr_agent.detect.rules import Better, CheckpointStage, Rule, RuleFileError, load_rule_files


def _load_one(tmp_path: Path, body: str) -> Rule:
    (tmp_path / "10-site.toml").write_text(f"[[rule]]\nname = 'r'\n{body}\n")
    (rule,) = load_rule_files([tmp_path])
    return rule


def test_a_checkpoint_rule_is_a_completed_save_unless_it_says_started(tmp_path: Path) -> None:
    assert Rule(name="r", kind="checkpoint", pattern="saved").stage is CheckpointStage.COMPLETED
    rule = _load_one(tmp_path, "kind = 'checkpoint'\npattern = 'saving checkpoint'\nstage = 'started'")
    assert rule.stage is CheckpointStage.STARTED


def test_a_throughput_rule_is_higher_is_better_unless_it_says_lower(tmp_path: Path) -> None:
    default = Rule(name="r", kind="throughput", pattern=r"tokens/s: (?P<value>[0-9.]+)")
    assert (default.better, default.unit) == (Better.HIGHER, "")
    rule = _load_one(
        tmp_path,
        "kind = 'throughput'\npattern = 'ms/iter: (?P<value>[0-9.]+)'\nbetter = 'lower'\nunit = 'ms/iter'",
    )
    assert (rule.better, rule.unit) == (Better.LOWER, "ms/iter")


def test_other_kinds_have_no_stage_direction_or_unit() -> None:
    assert Rule(name="r", kind="anomaly", category="x", pattern="x").stage is None
    assert Rule(name="r", kind="anomaly", category="x", pattern="x").better is None
    assert Rule(name="r", kind="checkpoint", pattern="x").better is None
    assert Rule(name="r", kind="throughput", pattern="(?P<value>1)").stage is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("kind = 'anomaly'\npattern = 'x'\ncategory = 'x'\nstage = 'started'", "stage is only for checkpoint rules, not anomaly"),
        ("kind = 'throughput'\npattern = '(?P<value>1)'\nstage = 'completed'", "stage is only for checkpoint rules, not throughput"),
        ("kind = 'checkpoint'\npattern = 'x'\nbetter = 'lower'", "better is only for throughput rules, not checkpoint"),
        ("kind = 'anomaly'\npattern = 'x'\ncategory = 'x'\nunit = 'ms'", "unit is only for throughput rules, not anomaly"),
        ("kind = 'checkpoint'\npattern = 'x'\nstage = 'begun'", "stage: Input should be 'started' or 'completed'"),
        ("kind = 'throughput'\npattern = '(?P<value>1)'\nbetter = 'faster'", "better: Input should be 'higher' or 'lower'"),
        ("kind = 'throughput'\npattern = '(?P<value>1)'\nunit = 5", "unit: Input should be a valid string"),
        ("kind = 'throughput'\npattern = '(?P<value>1)'\nunit = \"ms\\u0007\"", "unit must be printable"),
    ],
)
def test_misplaced_or_invalid_stage_direction_and_unit(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "10-site.toml"
    path.write_text(f"[[rule]]\nname = 'r'\n{body}\n")
    with pytest.raises(RuleFileError, match=regex.escape(f"{path}: rule 'r': ") + ".*" + regex.escape(expected)):
        load_rule_files([tmp_path])
