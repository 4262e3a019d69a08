"""The --comment spec: what is managed, what is refused and why."""

from __future__ import annotations

import pytest

from ajr_agent.spec import ResumeMode, parse_comment


@pytest.mark.parametrize("comment", [None, "", "nightly run", '{"team": "llm"}', '{"aps": {}}'])
def test_comments_without_the_aps_key_are_simply_not_managed(comment: str | None) -> None:
    verdict = parse_comment(comment)
    assert not verdict.managed and verdict.problem is None


def test_empty_spec_is_managed_with_defaults() -> None:
    verdict = parse_comment('{"APS": {}}')
    assert verdict.managed and verdict.spec is not None
    assert verdict.spec.auto_resume_mode is ResumeMode.REQUEUE
    assert verdict.spec.max_requeue_times is None


def test_full_spec() -> None:
    spec = parse_comment('{"APS": {"auto_resume_mode": "singleton_dependency", "max_requeue_times": 10}}').spec
    assert spec is not None
    assert spec.auto_resume_mode is ResumeMode.SINGLETON and spec.max_requeue_times == 10


def test_other_keys_beside_aps_are_allowed() -> None:
    assert parse_comment('{"APS": {"max_requeue_times": 0}, "owner": "team-a"}').managed


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        ('{"APS": {"auto_resume_mode": "requeue"', "not valid JSON"),
        ("APS please", "not valid JSON"),
        ('{"APS": {"auto_resume_mode": "restart"}}', "auto_resume_mode"),
        ('{"APS": {"max_requeue_times": -1}}', "max_requeue_times: Input should be greater than or equal to 0"),
        ('{"APS": {"max_requeue_times": "3"}}', "max_requeue_times"),
        ('{"APS": {"max_requeue_times": 2.5}}', "max_requeue_times"),
        ('{"APS": {"max_requeue_times": true}}', "max_requeue_times"),
        ('{"APS": {"max_requeues": 3}}', "max_requeues: unknown key"),
        ('{"APS": "requeue"}', '"APS" must be a JSON object'),
    ],
)
def test_broken_specs_are_refused_with_the_reason(comment: str, expected: str) -> None:
    verdict = parse_comment(comment)
    assert not verdict.managed
    assert verdict.problem is not None and expected in verdict.problem
    assert 'Example: {"APS"' in verdict.problem
