"""Stragglers on every kind of throughput report: a rate (higher is better) falls, a time per
iteration (lower is better) rises; each rule's readings are a series of their own."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.detect import signals
from ajr_agent.domain import policy
from ajr_agent.domain.events import StragglerFound
from ajr_agent.domain.model import Better, ManagedJob, NoteKind
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.runtime.agent import Agent
from tests.unit.support import LOG_NAME, running, site_agent

SETTINGS = Settings(straggler_fraction=0.7, straggler_reports=3)


def test_a_time_per_iteration_that_rises_is_a_straggler() -> None:
    steady = [1000.0, 990.0, 1010.0, 1005.0]
    # 0.7 of the rate is 1 / 0.7 of the time: above 1000.5 / 0.7 = 1429.3 ms.
    found = signals.straggling(steady + [1500.0, 1480.0, 1600.0], SETTINGS, Better.LOWER)
    assert found == (1002.5, (1500.0, 1480.0, 1600.0))
    assert signals.straggling(steady + [1500.0, 1400.0, 1600.0], SETTINGS, Better.LOWER) is None  # 1400 is fast enough
    assert signals.straggling(steady + [600.0, 610.0, 620.0], SETTINGS, Better.LOWER) is None  # faster is no straggler


def test_a_rate_that_falls_is_a_straggler_as_before() -> None:
    steady = [400.0, 402.0, 398.0, 401.0]
    assert signals.straggling(steady + [250.0, 260.0, 270.0], SETTINGS) == (400.5, (250.0, 260.0, 270.0))
    assert signals.straggling(steady + [250.0, 260.0, 270.0], SETTINGS, Better.HIGHER) == (400.5, (250.0, 260.0, 270.0))
    assert signals.straggling(steady + [1500.0, 1480.0, 1600.0], SETTINGS, Better.HIGHER) is None


def test_the_shortcut_agrees_with_the_median_rule_for_times_too() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        values = [rng.choice((100.0, 150.0, 160.0, 30.0, 400.0, 0.0)) * rng.uniform(0.9, 1.1)
                  for _ in range(rng.randrange(6, 14))]  # fmt: skip
        baseline, recent = statistics.median(values[:-3]), tuple(values[-3:])
        slow = baseline > 0 and all(v > baseline / 0.7 for v in recent)
        assert signals.straggling(values, SETTINGS, Better.LOWER) == ((baseline, recent) if slow else None), values


SITE_RULES = """
[[rule]]
name = "step_time"
kind = "throughput"
better = "lower"
unit = "ms/iter"
pattern = 'step time (?P<value>[0-9.]+) ms'

[[rule]]
name = "tokens_rate"
kind = "throughput"
unit = "tokens/s"
pattern = 'tok/s (?P<value>[0-9.]+)'
"""


@pytest.fixture
def timed(tmp_path: Path, queue: MemorySlurm) -> Agent:
    """An agent with a lower-is-better and a higher-is-better site rule."""
    return site_agent(tmp_path, queue, SITE_RULES, straggler_fraction=0.7, straggler_reports=3)


def run_log(agent: Agent, queue: MemorySlurm, tmp_path: Path, lines: list[str]) -> list[str]:
    """Job 7 running with a log of `lines`, read; the straggler notes of its story."""
    queue.jobs[7] = running(tmp_path)
    (tmp_path / LOG_NAME).write_text("step 0\n")
    agent.poll(200.0)
    with (tmp_path / LOG_NAME).open("a") as handle:
        handle.writelines(f"{line}\n" for line in lines)
    agent.read_logs(201.0)
    return [e.text for e in agent.store.events(7) if e.kind == NoteKind.STRAGGLER]


def test_the_feed_finds_a_straggler_in_times_per_iteration(timed: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    times = [1000, 1010, 990, 1000, 1005, 1500, 1550, 1600]
    notes = run_log(timed, queue, tmp_path, [f"iter {i} | step time {t} ms" for i, t in enumerate(times)])
    assert len(notes) == 1 and "step_time" in notes[0] and "ms/iter" in notes[0] and "rose above" in notes[0]


def test_faster_iterations_are_no_straggler(timed: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    times = [1000, 1010, 990, 1000, 1005, 500, 450, 400]
    assert run_log(timed, queue, tmp_path, [f"iter {i} | step time {t} ms" for i, t in enumerate(times)]) == []


def test_two_rules_on_one_line_are_two_series(timed: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    # Steady: mixed into one series the two numbers would look like drops and climbs.
    lines = [f"iter {i} | step time {1000 + i % 3} ms | tok/s {8000 - i % 3}" for i in range(12)]
    assert run_log(timed, queue, tmp_path, lines) == []
    # The stored readings, which the charts draw, are one quantity: the first rule's of the attempt.
    assert {value for _, _, value in timed.store.throughput(7)} == {1000.0, 1001.0, 1002.0}
    told = [e.text for e in timed.store.events(7) if e.kind == NoteKind.THROUGHPUT]
    assert told == ["throughput of attempt 0: step_time in ms/iter (lower is better)"]


def test_the_straggler_note_names_the_rule_unit_and_direction() -> None:
    job = ManagedJob(job_id=7, name="train", user="alice", user_id=1000, mode=ResumeMode.REQUEUE,
                     requested_limit=None, limit=3, attempt=0, attempt_started=1000.0)  # fmt: skip
    slower = StragglerFound(7, 0, 1100.0, 1000.0, (1500.0, 1600.0), "step_time", "ms/iter", Better.LOWER)
    (note,) = policy.decide(job, slower, SETTINGS).notes
    assert note.text == ("straggler: step_time rose above 143% of the attempt's baseline 1000 ms/iter "
                         "for 2 reports (1500, 1600)")
    rate = StragglerFound(7, 0, 1100.0, 400.0, (200.0, 210.0))
    (note,) = policy.decide(job, rate, SETTINGS).notes
    assert note.text == "straggler: throughput fell below 70% of the attempt's baseline 400 for 2 reports (200, 210)"


@pytest.mark.parametrize("better", [Better.HIGHER, Better.LOWER])
def test_the_series_check_agrees_with_straggling_at_every_report(better: Better) -> None:
    # Series rules most reports out on a bound it keeps as reports come: the answers must
    # stay those of straggling() on the latest SERIES_KEPT reports, spikes and drops included.
    rng = random.Random(11)
    for _ in range(20):
        series, values = signals.Series(better), []
        level = 400.0
        for _ in range(rng.randrange(signals.SERIES_KEPT, 2 * signals.SERIES_KEPT + 100)):
            if rng.random() < 0.01:
                level = rng.choice((400.0, 150.0, 900.0))  # a lasting change of speed
            value = level * rng.uniform(0.95, 1.05) * (rng.choice((0.1, 3.0)) if rng.random() < 0.005 else 1.0)
            series.add(value)
            values.append(value)
            expected = signals.straggling(values[-signals.SERIES_KEPT:], SETTINGS, better)
            assert series.straggling(SETTINGS) == expected
