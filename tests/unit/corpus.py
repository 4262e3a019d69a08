"""The rule corpus (tests/fixtures/corpus): its lines, what the shipped rules make of each,
and the figures of a part. Shared by test_rule_corpus.py and bench/corpus_report.py."""

from __future__ import annotations

import math
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ajr_agent.detect.rules import RuleKind, RuleMatch, RuleSet, root_cause

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
PARTS = ("tuning", "heldout")
ENTRY_KEYS = {"text", "source", "expect", "rule", "also", "note", "throughput", "better", "stage", "fault", "miss",
              "also_reads"}


class Kind(StrEnum):
    """What a corpus line is."""

    FAILURE = "failure"
    CHECKPOINT = "checkpoint"
    THROUGHPUT = "throughput"
    BENIGN = "benign"


@dataclass(frozen=True)
class Entry:
    """One corpus line and what the rules must make of it."""

    part: str
    group: str
    text: str
    source: str
    expect: str
    rule: str | None = None
    also: tuple[str, ...] = ()
    throughput: float | None = None  # the line's first reading: the one its attempt's chart draws
    better: str | None = None
    also_reads: tuple[float, ...] = ()  # further readings the line carries, in rule order (other units)
    stage: str | None = None
    fault: str | None = None
    miss: str | None = None  # why the rules deliberately do not catch this failure
    note: str | None = None

    @property
    def kind(self) -> Kind:
        if self.expect == "checkpoint":
            return Kind.CHECKPOINT
        if self.expect != "none":
            return Kind.FAILURE
        return Kind.THROUGHPUT if self.throughput is not None else Kind.BENIGN

    @property
    def source_key(self) -> str:
        """The source the split goes by: a GitHub repository, else the web site."""
        github = re.match(r"https?://github\.com/([^/]+)/([^/#?]+)", self.source)
        if github:
            return f"{github[1]}/{github[2]}".lower()
        named = re.match(r"([A-Za-z0-9][\w.-]*)/([\w.-]+)[ ,]", self.source)
        if named:
            return f"{named[1]}/{named[2]}".lower()
        site = re.match(r"https?://([^/]+)", self.source)
        return site[1].lower() if site else self.source

    def __str__(self) -> str:
        return f"{self.part}/{self.group}: {self.text[:70]}"


def load(part: str) -> list[Entry]:
    """Every line of one part of the corpus, file by file."""
    entries = []
    for path in sorted((CORPUS / part).glob("*.toml")):
        for table in tomllib.loads(path.read_text(encoding="utf-8"))["line"]:
            unknown = set(table) - ENTRY_KEYS
            assert not unknown, f"{path}: unknown keys {sorted(unknown)}"
            entries.append(Entry(part=part, group=path.stem, also=tuple(table.pop("also", ())),
                                 also_reads=tuple(table.pop("also_reads", ())), **table))
    return entries


@dataclass(frozen=True)
class Seen:
    """What the rules made of one line."""

    anomalies: tuple[RuleMatch, ...]
    checkpoints: tuple[RuleMatch, ...]
    readings: tuple[RuleMatch, ...]

    @property
    def cause(self) -> RuleMatch | None:
        return root_cause(self.anomalies)


def see(rules: RuleSet, text: str) -> Seen:
    matches = rules.match(text)

    def of(kind: RuleKind) -> tuple[RuleMatch, ...]:
        return tuple(m for m in matches if m.rule.kind is kind)

    return Seen(of(RuleKind.ANOMALY), of(RuleKind.CHECKPOINT), of(RuleKind.THROUGHPUT))


def recognised(entry: Entry, seen: Seen) -> bool:
    """Whether the rules did what the line needs: the bar counts these."""
    if entry.kind is Kind.FAILURE:
        return bool(seen.anomalies) and not seen.checkpoints
    if entry.kind is Kind.CHECKPOINT:
        return bool(seen.checkpoints) and not seen.anomalies
    if entry.kind is Kind.THROUGHPUT:
        return _one_right_reading(entry, seen) and not seen.anomalies and not seen.checkpoints
    return not seen.anomalies and not seen.checkpoints


def _one_right_reading(entry: Entry, seen: Seen) -> bool:
    if len(seen.readings) != 1 + len(entry.also_reads) or entry.throughput is None:
        return False
    reading = seen.readings[0]
    rule_better = reading.rule.better.value if reading.rule.better else None
    close = reading.value is not None and math.isclose(reading.value, entry.throughput, rel_tol=1e-9)
    return close and rule_better == entry.better


def exact(entry: Entry, seen: Seen) -> bool:
    """Recognised, and with the right details: the category, the stage, no stray reading."""
    if not recognised(entry, seen):
        return False
    if entry.kind is Kind.FAILURE:
        cause = seen.cause
        return cause is not None and cause.rule.category == entry.expect
    if entry.kind is Kind.CHECKPOINT:
        return entry.stage in {m.rule.stage.value for m in seen.checkpoints if m.rule.stage}
    return True if entry.kind is Kind.THROUGHPUT else not seen.readings


@dataclass(frozen=True)
class Figures:
    """How one part of the corpus fares, kind by kind."""

    total: Counter[Kind]
    recognised: Counter[Kind]
    exact: Counter[Kind]
    by_category: dict[str, tuple[int, int]]  # failure category: (recognised, total)
    misses: tuple[Entry, ...]

    def share(self, kind: Kind) -> float:
        return self.recognised[kind] / self.total[kind] if self.total[kind] else 1.0


def figures(rules: RuleSet, entries: Sequence[Entry]) -> Figures:
    total: Counter[Kind] = Counter()
    good: Counter[Kind] = Counter()
    right: Counter[Kind] = Counter()
    categories: dict[str, list[int]] = {}
    misses = []
    for entry in entries:
        seen = see(rules, entry.text)
        total[entry.kind] += 1
        ok = recognised(entry, seen)
        good[entry.kind] += ok
        right[entry.kind] += exact(entry, seen)
        if entry.kind is Kind.FAILURE:
            tally = categories.setdefault(entry.expect, [0, 0])
            tally[0] += ok
            tally[1] += 1
        if not ok:
            misses.append(entry)
    by_category = {name: (n[0], n[1]) for name, n in sorted(categories.items())}
    return Figures(total, good, right, by_category, tuple(misses))


def source_keys(entries: Iterable[Entry]) -> set[str]:
    return {entry.source_key for entry in entries}
