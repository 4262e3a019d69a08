"""Training-time efficiency over plain attempt records, including the documented worked example."""

from __future__ import annotations

import pytest

from ajr_agent.domain.efficiency import Efficiency, Interval, Kind, of_attempts, summarize, timeline
from ajr_agent.domain.model import Attempt, Outcome

MIN = 60.0


def attempt(n: int, start: float, end: float | None, outcome: Outcome, checkpoints: tuple[float, ...] = (),
            job_id: int = 1778) -> Attempt:  # fmt: skip
    return Attempt(job_id, n, start * MIN, end * MIN if end is not None else None, outcome, "",
                   checkpoints[0] * MIN if checkpoints else None, checkpoints[-1] * MIN if checkpoints else None, "n")  # fmt: skip


# The worked example of docs/efficiency (README): restarted twice, the last attempt
# cancelled before its first checkpoint.
WORKED = [
    attempt(0, 0, 100, Outcome.FAILED, (30, 60, 90)),
    attempt(1, 102, 200, Outcome.FAILED, (130, 160, 190)),
    attempt(2, 202, 240, Outcome.CANCELLED),
]


def test_worked_example() -> None:
    figures = of_attempts(WORKED, now=300 * MIN)
    assert figures.elapsed == 240 * MIN
    assert figures.productive == (90 + 88) * MIN
    assert figures.lost_unsaved == (10 + 10 + 38) * MIN
    assert figures.lost_restart == (2 + 2) * MIN
    assert figures.at_risk == 0
    assert figures.efficiency == pytest.approx(178 / 240)


def test_the_cancelled_attempt_is_what_pulls_efficiency_down() -> None:
    before = of_attempts(WORKED[:2], now=300 * MIN).efficiency
    after = of_attempts(WORKED, now=300 * MIN).efficiency
    assert before == pytest.approx(178 / 200) and after is not None and after < before


def test_completed_attempt_is_productive_whole() -> None:
    figures = of_attempts([attempt(0, 0, 50, Outcome.COMPLETED)], now=60 * MIN)
    assert figures.productive == 50 * MIN and figures.efficiency == 1.0


def test_running_attempt_unsaved_work_is_at_risk_not_lost() -> None:
    figures = of_attempts([attempt(0, 0, None, Outcome.RUNNING, (40,))], now=70 * MIN)
    assert figures.productive == 40 * MIN and figures.at_risk == 30 * MIN and figures.lost == 0
    assert figures.efficiency == 1.0


def test_running_attempt_without_checkpoint_has_nothing_settled() -> None:
    assert of_attempts([attempt(0, 0, None, Outcome.RUNNING)], now=10 * MIN).efficiency is None


def test_time_waiting_for_the_next_attempt_is_lost_while_recovering() -> None:
    attempts = [attempt(0, 0, 10, Outcome.FAILED, (5,))]
    figures = of_attempts(attempts, now=15 * MIN, recovering=True)
    assert figures.lost_restart == 5 * MIN and figures.elapsed == 15 * MIN
    assert of_attempts(attempts, now=15 * MIN).elapsed == 10 * MIN


def test_preempted_attempt_is_not_counted_as_lost() -> None:
    figures = of_attempts([attempt(0, 0, 10, Outcome.ENDED, (5,))], now=20 * MIN)
    assert figures.lost == 0 and figures.productive == 10 * MIN


def test_checkpoint_logged_after_the_end_is_clipped() -> None:
    figures = of_attempts([attempt(0, 0, 10, Outcome.FAILED, (12,))], now=20 * MIN)
    assert figures.productive == 10 * MIN and figures.lost_unsaved == 0


def test_chain_attempts_of_several_jobs_form_one_timeline() -> None:
    chain = [attempt(0, 0, 10, Outcome.FAILED, (8,), job_id=5), attempt(0, 12, 30, Outcome.COMPLETED, job_id=6)]
    intervals = timeline(chain, now=40 * MIN)
    assert [i.kind for i in intervals] == [Kind.PRODUCTIVE, Kind.LOST_UNSAVED, Kind.LOST_RESTART, Kind.PRODUCTIVE]
    assert of_attempts(chain, now=40 * MIN).efficiency == pytest.approx((8 + 18) / 30)


def test_window_clips_intervals() -> None:
    intervals = [Interval(Kind.PRODUCTIVE, 0, 100), Interval(Kind.LOST_UNSAVED, 100, 200)]
    assert summarize(intervals, since=50, until=150) == Efficiency(100, 50, 50, 0, 0)
    assert of_attempts(WORKED, now=240 * MIN, since=202 * MIN).efficiency == 0.0


def test_totals_add_up() -> None:
    total = of_attempts(WORKED, now=300 * MIN) + of_attempts([attempt(0, 0, 60, Outcome.COMPLETED)], now=300 * MIN)
    assert total.elapsed == 300 * MIN and total.productive == 238 * MIN


def test_no_attempts_no_figures() -> None:
    assert of_attempts([], now=1.0).efficiency is None
