"""The --comment spec: what is managed, what is refused and why."""

from __future__ import annotations

from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import running

import logging
from pathlib import Path

import pytest

from ajr_agent.runtime.agent import Agent
from ajr_agent.domain import spec as spec_module
from ajr_agent.domain.spec import ResumeMode, parse_comment


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
        ('{"APS": {"max_requeue_times": -1}}', "max_requeue_times: Input should be greater than or equal to 0 (got -1)"),
        ('{"APS": {"max_requeue_times": "3"}}', "max_requeue_times"),
        ('{"APS": {"max_requeue_times": 2.5}}', "max_requeue_times"),
        ('{"APS": {"max_requeue_times": true}}', "max_requeue_times"),
        ('{"APS": {"max_requeues": 3}}', "unknown key 'max_requeues'"),
        ('{"APS": "requeue"}', '"APS" must be a JSON object'),
    ],
)
def test_broken_specs_are_refused_with_the_reason(comment: str, expected: str) -> None:
    verdict = parse_comment(comment)
    assert not verdict.managed
    assert verdict.problem is not None and expected in verdict.problem
    assert 'Example: {"APS"' in verdict.problem


# ---- hostile specs: bounded, and never an exception ------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "bound"),
    [
        ('"max_requeue_times": 123456789012345678901', "10000"),
        ('"max_requeue_times": 10001', "10000"),
        ('"heartbeat_timeout": 2592001', "2592000"),
        ('"heartbeat_timeout": 123456789012345678901234567890', "2592000"),
    ],
)
def test_integers_beyond_their_bound_are_refused_naming_it(spec: str, bound: str) -> None:
    verdict = parse_comment('{"APS": {%s}}' % spec)
    assert not verdict.managed
    assert verdict.problem is not None and f"less than or equal to {bound}" in verdict.problem


def test_the_bounds_themselves_are_accepted() -> None:
    spec = parse_comment('{"APS": {"max_requeue_times": 10000, "heartbeat_timeout": 2592000}}').spec
    assert spec is not None and (spec.max_requeue_times, spec.heartbeat_timeout) == (10000, 2592000)
    assert (spec_module.MAX_REQUEUE_TIMES, spec_module.MAX_HEARTBEAT_TIMEOUT) == (10000, 30 * 24 * 3600)


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        ('{"APS": {"max_requeue_times": 1%s}}' % ("0" * 5000), "max_requeue_times"),
        ('{"APS": {}, "x": %s%s}' % ("[" * 5_000, "]" * 5_000), "at most 64 nested"),
        ('{"APS": {}, "x": %s%s}' % ("[" * 65, "]" * 65), "at most 64 nested"),
        ('{"APS": {}, "x": "%s"}' % ("y" * 20_000), "at most 16384 bytes"),
    ],
    ids=["5000 digits", "nested 5000 deep", "nested 66 deep", "20 kB comment"],
)
def test_a_hostile_comment_is_a_verdict_never_an_exception(comment: str, expected: str) -> None:
    verdict = parse_comment(comment)
    assert not verdict.managed and verdict.problem is not None and expected in verdict.problem
    assert len(verdict.problem) < 600


def test_a_long_value_is_shortened_in_the_problem() -> None:
    verdict = parse_comment('{"APS": {"auto_resume_mode": "%s"}}' % ("x" * 10_000))
    assert verdict.problem is not None and len(verdict.problem) < 400 and "xxx..." in verdict.problem


def test_the_agent_refuses_a_21_digit_limit_once_instead_of_failing_every_poll(
    agent: Agent, queue: MemorySlurm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue.jobs[7] = running(tmp_path, comment='{"APS": {"max_requeue_times": 123456789012345678901}}')
    agent.poll(200.0)
    agent.poll(201.0)
    assert 7 not in agent.jobs
    [refused] = agent.store.unmanaged(7)
    assert "less than or equal to 10000" in refused.problem
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
