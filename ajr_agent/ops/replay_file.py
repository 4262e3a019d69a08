"""What AJR would have made of one log: its lines handed, in order and in batches as the agent
reads them, to the agent's own rule set and detection (the root cause, the checkpoint stages,
the straggler check in each rule's direction, the hang's timing), without Slurm or a store.

Time is the lines' own: a hang needs line timestamps (detect.timestamps), the attempt's start
is the one the log's name gives, or else its first timestamp. A log is one attempt: AJR acts at
its first failure line, or at a hang in the silence before it; what follows is counted, not
judged again (the agent would be recovering the job by then).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ajr_agent.detect import signals
from ajr_agent.detect.rules import CheckpointStage, Rule, RuleKind, RuleMatch, RuleSet, root_cause
from ajr_agent.detect.timestamps import parse_line_time
from ajr_agent.domain.model import Better, Fault
from ajr_agent.domain.settings import Settings

SHOWN_CHARS = 500
"""Characters of a line kept in the results."""

POINTS_KEPT = 200
"""Readings of a series kept for a chart, thinned evenly past it."""

BURST_SECONDS = 1.0
"""Anomaly lines this close after the first failure line are read with it (the agent reads every
quarter second, and the ranks of one crash print together): the root cause is chosen among them."""


@dataclass(frozen=True)
class LineSeen:
    """A line of the log: its number (from 1), its own timestamp if it has one, its text (cut)."""

    number: int
    at: float | None
    text: str


@dataclass(frozen=True)
class FailureSeen:
    """The first failure line, where AJR would have acted, and the root cause it would have named."""

    line: LineSeen
    rule: str
    category: str
    fault: Fault
    cause_line: LineSeen  # the root cause's line: the failure line or one of its burst


@dataclass(frozen=True)
class SavesSeen:
    """The log's checkpoint saves: those completed, those begun, and how the last one begun ended."""

    completed: int
    started: int
    first_completed: LineSeen | None
    last_completed: LineSeen | None
    failed: LineSeen | None  # begun, and the attempt failed (a failure line or a hang) before it completed
    unfinished: LineSeen | None  # begun, never completed, no failure: the log ends in the middle of it


@dataclass(frozen=True)
class PointSeen:
    """One reading of a series, as a chart would draw it."""

    line: int
    at: float | None
    value: float


@dataclass(frozen=True)
class StragglerSeen:
    """The drop the agent would have recorded: the reports below the baseline, the last at `line`."""

    line: LineSeen
    baseline: float
    recent: tuple[float, ...]


@dataclass(frozen=True)
class SeriesSeen:
    """One throughput rule's readings of the log."""

    rule: str
    unit: str
    better: Better
    charted: bool  # the first rule to report: the readings the agent stores and charts
    reports: int
    first: float
    last: float
    low: float
    high: float
    mean: float
    points: tuple[PointSeen, ...]
    straggler: StragglerSeen | None


@dataclass(frozen=True)
class HangSeen:
    """A silence of at least the heartbeat timeout before any failure line: a hang would have fired."""

    fires_at: float
    silence: float  # seconds from the last line before it to the next line
    after: LineSeen  # the last line before the silence
    timeout: float


class _Series:
    """A throughput rule's readings as they come: the straggler check's window, figures, thinned points."""

    def __init__(self, rule: Rule, charted: bool) -> None:
        self.rule, self.charted = rule, charted
        self.better = rule.better or Better.HIGHER
        self.window = signals.Series(self.better)
        self.reports, self.total, self.first, self.low, self.high = 0, 0.0, 0.0, float("inf"), float("-inf")
        self.points: list[PointSeen] = []
        self.stride = 1
        self.straggler: StragglerSeen | None = None

    def add(self, number: int, text: str, value: float) -> None:
        """Take a reading."""
        if not self.reports:
            self.first = value
        self.reports += 1
        self.total += value
        self.low, self.high, self.last = min(self.low, value), max(self.high, value), value
        if (self.reports - 1) % self.stride == 0:
            self.points.append(PointSeen(number, parse_line_time(text), value))
            if len(self.points) > POINTS_KEPT:
                del self.points[1::2]
                self.stride *= 2
        self.window.add(value)

    def seen(self) -> SeriesSeen:
        return SeriesSeen(self.rule.name, self.rule.unit, self.better, self.charted, self.reports, self.first,
                          self.last, self.low, self.high, self.total / self.reports, tuple(self.points),
                          self.straggler)  # fmt: skip


def _line(number: int, text: str) -> LineSeen:
    return LineSeen(number, parse_line_time(text), text[:SHOWN_CHARS])


class FileWatch:
    """Follows one log's lines, batch after batch, as the agent would, and says what it found."""

    def __init__(self, rules: RuleSet, settings: Settings, started: float | None) -> None:
        """`started`: when the attempt began (the log name's time), None to take the first line's."""
        self._rules, self._settings, self._started = rules, settings, started
        self.lines = 0
        self.anomaly_lines = 0
        self.rule_lines: Counter[str] = Counter()
        self._timeouts_before = sum(rules.timeouts.values())
        self._open_save: LineSeen | None = None  # the last save begun, until a save completes
        self._completed = self._started_saves = 0
        self._first_saved: LineSeen | None = None
        self._last_saved: LineSeen | None = None
        self._series: dict[str, _Series] = {}
        self._failure: LineSeen | None = None
        self._cause: RuleMatch | None = None
        self._cause_line: LineSeen | None = None
        self._burst_over = False
        self._straggler = False
        self._last_anomaly = -1  # the line whose anomaly matches were last counted
        self.hang: HangSeen | None = None
        self._last_timed: tuple[int, float, str] | None = None  # number, time, text of the latest timed line
        self._times: dict[int, float | None] = {}

    def feed(self, texts: Sequence[str]) -> None:
        """Match the next lines of the log, as one batch."""
        base = self.lines
        self.lines += len(texts)
        hang_until = len(texts) if self._failure is None and self.hang is None else 0
        for index, match in self._rules.match_lines(texts):
            number, rule = base + index + 1, match.rule
            self.rule_lines[rule.name] += 1
            if rule.kind is RuleKind.ANOMALY:
                if self._failure is None:
                    hang_until = index + 1  # the silence before the failure line is the last looked at
                self._anomaly(number, texts[index], match)
            elif rule.kind is RuleKind.CHECKPOINT:
                self._checkpoint(number, texts[index], rule)
            elif match.value is not None:
                self._reading(number, texts[index], rule, match.value)
        if hang_until:
            self._times = {}
            self._look_for_hang(texts, base, hang_until)

    def _anomaly(self, number: int, text: str, match: RuleMatch) -> None:
        if number != self._last_anomaly:
            self.anomaly_lines += 1
            self._last_anomaly = number
        if self._failure is None:
            self._failure = self._cause_line = _line(number, text)
            self._cause = match
            return
        if number != self._failure.number:
            start, at = self._failure.at, parse_line_time(text) if not self._burst_over else None
            if start is None or at is None or at > start + BURST_SECONDS:
                self._burst_over = True  # a log without timestamps: the failure line alone
                return
        best = root_cause([self._cause, match]) if self._cause is not None else match
        if best is not self._cause:
            self._cause, self._cause_line = best, _line(number, text)

    def _checkpoint(self, number: int, text: str, rule: Rule) -> None:
        # Paired as the agent pairs them (detect.signals.PendingSaves): a completion closes the save
        # begun before it; one still open when the attempt fails is a failed save.
        if rule.stage is CheckpointStage.STARTED:
            self._started_saves += 1
            self._open_save = _line(number, text)
            return
        self._completed += 1
        self._open_save = None
        self._last_saved = _line(number, text)
        self._first_saved = self._first_saved or self._last_saved

    def _reading(self, number: int, text: str, rule: Rule, value: float) -> None:
        series = self._series.get(rule.name)
        if series is None:
            series = self._series[rule.name] = _Series(rule, charted=not self._series)
        series.add(number, text, value)
        if self._straggler:
            return  # the agent records one straggler an attempt
        found = series.window.straggling(self._settings)
        if found is not None:
            series.straggler = StragglerSeen(_line(number, text), *found)
            self._straggler = True

    # ---- hangs ------------------------------------------------------------------------------

    def _time(self, texts: Sequence[str], index: int) -> float | None:
        if index not in self._times:
            self._times[index] = parse_line_time(texts[index])
        return self._times[index]

    def _look_for_hang(self, texts: Sequence[str], base: int, until: int) -> None:
        """Find the first silence of a heartbeat timeout among the timed lines of texts[:until].

        Lines are timed only where needed: a stretch whose ends lie closer than the timeout
        holds no such silence (log time runs forward), so it is halved only while it could.
        """
        first = next((i for i in range(until) if self._time(texts, i) is not None), None)
        if first is None:
            return
        last = next(i for i in range(until - 1, first - 1, -1) if self._time(texts, i) is not None)
        t_first, t_last = self._time(texts, first), self._time(texts, last)
        assert t_first is not None and t_last is not None
        if self._started is None:
            self._started = t_first
        if self._last_timed is not None and self._silence(*self._last_timed, t_first):
            return
        self._last_timed = (base + last + 1, t_last, texts[last])
        timeout = self._settings.heartbeat_timeout
        stretches = [(first, t_first, last, t_last)]
        while stretches:
            lo, t_lo, hi, t_hi = stretches.pop()
            if t_hi - t_lo < timeout:
                continue
            mid = self._timed_between(texts, lo, hi)
            if mid is None:
                if self._silence(base + lo + 1, t_lo, texts[lo], t_hi):
                    return
                continue
            t_mid = self._time(texts, mid)
            assert t_mid is not None
            stretches += [(mid, t_mid, hi, t_hi), (lo, t_lo, mid, t_mid)]  # the earlier half first

    def _timed_between(self, texts: Sequence[str], lo: int, hi: int) -> int | None:
        """A timed line strictly between lo and hi, near the middle; None if there is none."""
        middle = (lo + hi) // 2
        for index in (*range(max(middle, lo + 1), hi), *range(middle - 1, lo, -1)):
            if self._time(texts, index) is not None:
                return index
        return None

    def _silence(self, number: int, at: float, text: str, next_at: float) -> bool:
        """Whether the silence after line `number` (at `at`) until `next_at` fires a hang; note it if so."""
        assert self._started is not None
        settings = self._settings
        due = signals.hang_due(at, self._started, settings.heartbeat_timeout, settings.hang_startup_grace)
        if due >= next_at:
            return False
        self.hang = HangSeen(due, next_at - at, LineSeen(number, at, text[:SHOWN_CHARS]), settings.heartbeat_timeout)
        return True

    # ---- the results ------------------------------------------------------------------------

    def failure(self) -> FailureSeen | None:
        """The first failure line and the root cause of its burst."""
        if self._failure is None or self._cause is None or self._cause_line is None:
            return None
        rule = self._cause.rule
        return FailureSeen(self._failure, rule.name, rule.category or "anomaly", rule.fault, self._cause_line)

    def saves(self) -> SavesSeen:
        """The saves, the last one begun judged now that the log is over."""
        failed = self._failure is not None or self.hang is not None
        return SavesSeen(self._completed, self._started_saves, self._first_saved, self._last_saved,
                         self._open_save if failed else None, None if failed else self._open_save)  # fmt: skip

    def series(self) -> tuple[SeriesSeen, ...]:
        """Each throughput rule's series, the charted one first."""
        return tuple(series.seen() for series in self._series.values())

    def timeouts(self) -> int:
        """Lines on which a rule hit the match timeout while this log was read."""
        return sum(self._rules.timeouts.values()) - self._timeouts_before
