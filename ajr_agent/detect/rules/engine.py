"""The rule engine: a compiled rule set that matches log lines, one at a time or in batches.

Matching is the hot path of the agent: every line of every watched log goes
through it, and nearly all lines match nothing. Most rules only see the lines
the literal prefilter (`prefilter`) passes them; a large batch is first cut
down by grep (`grep`). Throughput rules match a large share of a training log's
lines, so a batch is searched for them as a whole, its lines joined into one
string, and each line takes the first match that lies within it (see
`patterns.block_scannable` for when that equals searching the line alone).
Admin patterns are untrusted: every regex call carries a timeout, and a pattern
that hits it counts as not matching.
"""

from __future__ import annotations

import logging
import shutil
import time
from bisect import bisect_right, insort
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import accumulate
from pathlib import Path

import regex

from ajr_agent.detect.rules.grep import GREP_MIN_BATCH_CHARS, GrepPrefilter, grep_args
from ajr_agent.detect.rules.loader import load_rule_files
from ajr_agent.detect.rules.model import Rule, RuleKind, RuleMatch
from ajr_agent.detect.rules.patterns import block_scannable, required_literals
from ajr_agent.detect.rules.prefilter import LiteralPrefilter

logger = logging.getLogger(__name__)

DEFAULT_MATCH_TIMEOUT = 0.05
"""Seconds one pattern may spend on one line before it counts as no match."""

BATCH_MIN_LINES = 6
"""Lines a `RuleSet.match_lines` batch needs before it is matched as a batch.

A live log usually brings a line or two per read; joining them and scanning the
join costs more than matching each alone below about 6 lines (measured: 6.9
against 3.3 µs for one line, 2.7 against 3.1 µs a line for eight).
"""

LINE_TIMEOUTS_AT_MOST = 2
"""Rules that may time out on one line before its other candidate rules are skipped.

A line that holds the anchors of many slow patterns would otherwise cost one
timeout for each of them.
"""

# How long a block scan may run, per character of the block, before the rest of
# the batch is searched line by line instead (with the per-line timeout). The
# shipped throughput rule scans a training log at about 2 ns per character, so
# this leaves a margin of 50 for slower site patterns.
_SCAN_SECONDS_PER_CHAR = 100e-9

_Found = tuple[int, RuleMatch]
"""One match in a batch: (index of the line, the match)."""

# At most this many matches are inserted one by one into a batch's sorted
# matches; more are sorted in with them.
_INSERT_AT_MOST = 256


class RuleSet:
    """Compiled rules, ready to match log lines.

    ``timeouts`` counts, per rule name, the lines on which that rule hit the
    match timeout (and was taken as not matching). ``grep_executable`` (None:
    never use grep) and ``grep_min_chars`` say how and from what batch size
    :meth:`match_lines` prefilters with grep; below ``batch_min_lines`` lines
    it matches each line alone.
    """

    def __init__(self, rules: Sequence[Rule], match_timeout: float = DEFAULT_MATCH_TIMEOUT):
        """Compile ``rules`` (disabled ones are left out); names must be unique."""
        if match_timeout <= 0:
            raise ValueError(f"match_timeout must be positive, not {match_timeout}")
        active = tuple(rule for rule in rules if rule.enabled)
        names = Counter(rule.name for rule in active)
        duplicates = sorted(name for name, count in names.items() if count > 1)
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        self.rules: tuple[Rule, ...] = active
        self.match_timeout = match_timeout
        self.timeouts: Counter[str] = Counter()
        self.grep_executable: str | None = shutil.which("grep")
        self.grep_min_chars = GREP_MIN_BATCH_CHARS
        self.batch_min_lines = BATCH_MIN_LINES
        self._compiled = tuple(rule.compile() for rule in active)
        self._rank = {rule.name: index for index, rule in enumerate(active)}
        # Rules a batch is scanned for as a whole; the others are prefiltered.
        self._scanned: tuple[int, ...] = tuple(
            index for index, rule in enumerate(active)
            if rule.kind is RuleKind.THROUGHPUT and block_scannable(rule.pattern)
        )  # fmt: skip
        # A log holds one framework's throughput lines. A scan tries its pattern wherever its
        # first item could start (a `|`, a digit, a common word), where a search for its fixed
        # text alone runs at memory speed: a batch without that text is not scanned.
        self._scan_gates: dict[int, regex.Pattern[str]] = {
            index: regex.compile("|".join(map(regex.escape, sorted(literals))), regex.IGNORECASE)
            for index in self._scanned
            if (literals := required_literals(active[index].pattern))
        }  # fmt: skip
        anchors = {
            index: required_literals(rule.pattern)
            for index, rule in enumerate(active) if index not in self._scanned
        }  # fmt: skip
        self._prefilter = LiteralPrefilter(anchors)
        literals = {anchor for found in anchors.values() for anchor in found or ()}
        self._grep_args = grep_args(literals) if literals and not self._prefilter.unanchored else None

    @classmethod
    def from_rules(
        cls, rules: Sequence[Rule], match_timeout: float = DEFAULT_MATCH_TIMEOUT
    ) -> RuleSet:
        """Build a rule set from rules already in hand."""
        return cls(rules, match_timeout)

    @classmethod
    def load(cls, dirs: Sequence[Path], match_timeout: float = DEFAULT_MATCH_TIMEOUT) -> RuleSet:
        """Load the rule files of ``dirs`` (see :func:`load_rule_files`) and compile them."""
        return cls(load_rule_files(dirs), match_timeout)

    def slow_rules(self) -> list[tuple[Rule, str]]:
        """Return the rules that keep matching from its fast paths, each with why and what to do."""
        slow = []
        for index, rule in enumerate(self.rules):
            if index in self._prefilter.unanchored:
                slow.append((rule, "has no fixed text to prefilter on: it runs on every line, and no backlog "
                                   "goes through grep; give each top-level alternative a literal word"))  # fmt: skip
            elif rule.kind is RuleKind.THROUGHPUT and index not in self._scanned:
                slow.append((rule, "is a throughput pattern with an anchor (^, $, \\A, \\Z), a lookaround, an "
                                   "inline flag or fuzzy matching: it is searched line by line, not once per batch"))  # fmt: skip
        return slow

    def match(self, line: str) -> list[RuleMatch]:
        """Return every rule that matches ``line``, in rule order."""
        candidates = self._prefilter.candidates(line)
        if self._scanned:
            candidates = tuple(sorted((*candidates, *self._scanned))) if candidates else self._scanned
        return [match for _, match in self._search(line, candidates)]

    def match_lines(self, lines: Sequence[str]) -> list[tuple[int, RuleMatch]]:
        """Match a batch of lines; return ``(index in lines, match)`` in line, then rule, order.

        The same as calling :meth:`match` on each line, which is what happens
        below ``batch_min_lines`` lines; a larger batch is faster: the
        throughput rules search the whole batch at once, and the other rules'
        prefilter looks at each distinct line key once. The agent hands over
        the lines of one read. A batch of at least ``grep_min_chars``
        characters is prefiltered with grep when every prefiltered rule has
        anchors; if grep is missing, fails or times out, the batch is matched
        without it.
        """
        return self._match(lines, None)[0]

    def _match(self, lines: Sequence[str], deadline: float | None) -> tuple[list[_Found], int]:
        """Match ``lines`` as :meth:`match_lines` describes, until ``deadline`` (None: all of them);
        return the matches and how many lines were matched."""
        if not lines or len(lines) < self.batch_min_lines:
            found: list[_Found] = []
            for index, line in enumerate(lines):
                if index and _past(deadline):
                    return found, index
                found += [(index, match) for match in self.match(line)]
            return found, len(lines)
        text = "\n".join(lines)
        grep, args = self.grep_executable, self._grep_args
        prefilter = None
        if grep is not None and args is not None and len(text) >= self.grep_min_chars:
            prefilter = GrepPrefilter.start([grep, *args], text)  # runs beside the scans
        done = len(lines)
        try:
            scans = []
            for index in self._scanned:
                gate = self._scan_gates.get(index)
                if gate is not None and gate.search(text) is None:
                    continue  # none of its fixed text in the batch: the scan could find nothing
                scanned, reached = self._scan(index, text, lines, deadline)
                scans.append(scanned)
                done = min(done, reached)
        finally:  # grep is collected even if a scan fails: no process or file is left behind
            picked = prefilter.picked(len(lines)) if prefilter is not None else None
        if picked is None:
            prefiltered, reached = self._match_batch(lines, deadline)
        else:
            chosen, reached = self._match_batch([lines[i] for i in picked], deadline)
            prefiltered = [(picked[line], match) for line, match in chosen]
            reached = picked[reached] if reached < len(picked) else len(lines)
        done = min(done, reached)
        merged = self._merge([*scans, prefiltered])
        return (merged if done == len(lines) else [found for found in merged if found[0] < done]), done

    def match_within(self, lines: Sequence[str], budget: float) -> tuple[list[tuple[int, RuleMatch]], int]:
        """Match as many of the first ``lines`` as fit in about ``budget`` seconds.

        Returns the matches as :meth:`match_lines` gives them and ``done``: the
        lines before it are matched, the others are left to a later call. The
        first line is always matched, so every call makes progress. The regex
        timeout bounds one line; this bounds a pass: the agent reads the rest of
        a job's lines at its next pass, so lines built to be slow (a user's own
        log) cost the loop about ``budget`` per pass, not seconds. Ordinary lines
        are matched as one batch, as :meth:`match_lines` does.
        """
        return self._match(lines, time.monotonic() + budget)

    def _merge(self, runs: list[list[_Found]]) -> list[_Found]:
        """Merge runs of matches, each in line then rule order, into one in that order.

        Usually one run is long (the readings of a throughput rule) and the
        others short (a few failure lines): those are inserted into it rather
        than sorted with it. The first run may be reused.
        """
        runs = sorted((run for run in runs if run), key=len, reverse=True)
        if not runs:
            return []
        merged, rest = runs[0], [found for run in runs[1:] for found in run]
        rank = self._rank

        def order(found: _Found) -> tuple[int, int]:
            return found[0], rank[found[1].rule.name]

        if len(rest) > _INSERT_AT_MOST:
            return sorted(merged + rest, key=order)
        for found in rest:
            insort(merged, found, key=order)
        return merged

    def _scan(self, index: int, text: str, lines: Sequence[str], deadline: float | None) -> tuple[list[_Found], int]:
        """Return the match of rule ``index`` in each line of ``text`` (``lines`` joined by "\\n").

        A match inside one line is the match a search of that line alone
        would find (see :func:`block_scannable`), and the first one in its line
        counts. A match that crosses a line break may have consumed the start
        of a later line's own match: its line is then searched alone and the
        scan resumes at the next line. A scan that runs out of time leaves the
        lines it has not finished to a search of each line alone, with the
        per-line timeout, until ``deadline``. Returns the matches and the number
        of lines searched.
        """
        pattern = self._compiled[index]
        rule = self.rules[index]
        value_group = pattern.groupindex["value"]
        # Readings repeat (a throughput printed with one decimal takes a few hundred
        # values), so each distinct text is turned into a match once.
        readings: dict[str, RuleMatch | None] = {}
        found: list[_Found] = []
        done = 0  # lines before this one are settled
        resume = 0  # where the next scan starts: a line start
        ends: list[int] = []  # ends[i]: where line i + 1 starts; worked out at the first match
        scan_deadline = time.monotonic() + self.match_timeout + len(text) * _SCAN_SECONDS_PER_CHAR
        if deadline is not None:
            scan_deadline = min(scan_deadline, deadline)
        while True:
            crossing: int | None = None  # the line of a match that reaches past it
            try:
                for scanned in pattern.finditer(text, resume, timeout=max(scan_deadline - time.monotonic(), 1e-6)):
                    start, end = scanned.span()
                    if not ends:
                        ends = list(accumulate(map((1).__add__, map(len, lines))))
                    line = bisect_right(ends, start)
                    if end >= ends[line]:
                        crossing = line
                        break
                    if line >= done:
                        done = line + 1
                        reading = scanned[value_group]
                        if reading not in readings:
                            readings[reading] = self._as_match(index, scanned)
                        match = readings[reading]
                        if match is not None:
                            found.append((line, match))
            except TimeoutError:
                logger.debug("scan for rule %r timed out; searching the rest line by line", rule.name)
                for line in range(done, len(lines)):
                    if line and _past(deadline):
                        return found, line
                    found += self._search_alone(index, lines, line)
                return found, len(lines)
            if crossing is None:
                return found, len(lines)
            if crossing >= done:
                found += self._search_alone(index, lines, crossing)
                done = crossing + 1
            resume = ends[crossing]

    def _search_alone(self, index: int, lines: Sequence[str], line: int) -> list[_Found]:
        """Return the match of rule ``index`` in ``lines[line]`` searched on its own, if any."""
        return [(line, match) for _, match in self._search(lines[line], (index,))]

    def _match_batch(self, lines: Sequence[str], deadline: float | None) -> tuple[list[_Found], int]:
        """Match a batch of lines against the prefiltered rules, as :meth:`match_lines` describes,
        until ``deadline``; return the matches and the number of lines matched."""
        found: list[_Found] = []
        for line, candidates in enumerate(self._prefilter.candidates_of_lines(lines)):
            if candidates:
                if line and _past(deadline):
                    return found, line
                found += [(line, match) for _, match in self._search(lines[line], candidates)]
        return found, len(lines)

    def _search(self, line: str, candidates: Iterable[int]) -> list[tuple[int, RuleMatch]]:
        """Return ``(rule index, match)`` for each rule of ``candidates`` that matches ``line``."""
        matches: list[tuple[int, RuleMatch]] = []
        timed_out = 0
        for index in candidates:
            if timed_out >= LINE_TIMEOUTS_AT_MOST:
                # A line that has already cost this many timeouts is not tried against
                # the rest: it counts as not matching them, as a timeout does.
                self.timeouts[self.rules[index].name] += 1
                continue
            try:
                found = self._compiled[index].search(line, timeout=self.match_timeout)
            except TimeoutError:
                timed_out += 1
                self._count_timeout(self.rules[index], line)
                continue
            if found is not None:
                match = self._as_match(index, found)
                if match is not None:
                    matches.append((index, match))
        return matches

    def _as_match(self, index: int, found: regex.Match[str]) -> RuleMatch | None:
        """Return the match of rule ``index`` that ``found`` is; None for a throughput match without a number."""
        rule = self.rules[index]
        if rule.kind is not RuleKind.THROUGHPUT:
            return RuleMatch(rule)
        value = _to_float(found.group("value"))
        # None: e.g. "[0-9.]+" caught a lone "."; not a reading.
        return None if value is None else RuleMatch(rule, value)

    def _count_timeout(self, rule: Rule, line: str) -> None:
        self.timeouts[rule.name] += 1
        if self.timeouts[rule.name] == 1:
            logger.warning(
                "rule %r from %s took longer than %.3f s on a line of %d characters and "
                "counts as not matching; its further timeouts are only counted",
                rule.name,
                rule.source or "<code>",
                self.match_timeout,
                len(line),
            )


def _past(deadline: float | None) -> bool:
    """Whether a pass's deadline (None: none) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
