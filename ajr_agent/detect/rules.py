"""Log-line rules: what a checkpoint save, a failure or a throughput report looks like.

Rules live in TOML files (``[[rule]]`` tables) in drop-in directories: the
shipped ``rules/00-defaults.toml`` first, then the site's ``/etc/ajr/rules.d``.
A later rule with the same name replaces an earlier one, and ``enabled = false``
turns a shipped rule off. ``rules/README.md`` documents the format for admins.

One failure usually prints several matching lines: a GPU that falls off the
bus makes its own rank print a CUDA error and every other rank a collective
timeout. Anomaly rules therefore carry a ``priority`` and may be marked
``cascade`` (usually a consequence of something else), and :func:`root_cause`
picks the match that best explains a set of matches.

Matching is the hot path of the agent: every line of every watched log goes
through it, and nearly all lines match nothing. A single regex alternation of
all patterns is no faster than trying them one by one (the ``regex`` engine
tries every branch at every position), so the prefilter is literal instead:
for each pattern the loader works out literals of which any match must contain
one (its "anchors"), and a line is only handed to the patterns whose anchor it
contains. The anchor test runs on a *key* of the line: its UTF-8 bytes with
ASCII letters lower-cased, digits deleted and each other character reduced to
one placeholder byte. Training logs repeat a few line shapes that differ only
in their numbers (iteration lines, NCCL INFO lines, progress bars), so keys
repeat, and the candidate rules of a key are cached: most lines cost one
translation and one dictionary lookup. A key seen for the first time is tested
against a few short "gates", substrings shared by groups of anchors, and
against the anchors of the gates it contains. A pattern the scanner cannot see
through has no anchor and is always run. Admin patterns are untrusted: every
regex call carries a timeout, and a pattern that hits it counts as not
matching.

Throughput rules are the exception: they match a large share of a training
log's lines, so a batch is searched for them as a whole, its lines joined
into one string, and each line takes the first match that lies within it
(see `block_scannable` for when that equals searching the line alone).

A large batch (a backlog the agent catches up on) is first handed to GNU grep,
which searches for an alternation of every anchor of the other rules
(``grep -E -i``) faster than Python can look at each line; only the lines it
picks go through the path above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from bisect import bisect_right, insort
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate, compress
from pathlib import Path
from typing import Any, BinaryIO, Literal

import regex
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

import ajr_agent
from ajr_agent.domain.errors import AjrError

logger = logging.getLogger(__name__)

DEFAULT_MATCH_TIMEOUT = 0.05
"""Seconds one pattern may spend on one line before it counts as no match."""

DEFAULT_PRIORITY = 50
"""Priority of an anomaly rule that does not set one: the middle of the 0-1000 scale."""

GREP_MIN_BATCH_CHARS = 1 << 20
"""Characters a `RuleSet.match_lines` batch needs before grep prefilters it.

Starting grep costs about 2 ms (it compiles the alternation each time).
Measured on one core with the shipped rules on the benchmark's logs
(bench/rules_throughput.py): with grep, a batch of 1 MiB of free text goes
3.4 times faster and one of a training log 1.1 times; at 512 KiB the training
log is 10% slower with grep, at 4 MiB 1.4 times faster.
"""

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

GREP_TIMEOUT = 10.0
"""Seconds grep may take on one batch before the batch is matched without it."""

_NAME_RE = regex.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CATEGORY_RE = regex.compile(r"[a-z][a-z0-9_]*")


class RuleKind(StrEnum):
    """What a match of the rule means."""

    CHECKPOINT = "checkpoint"
    ANOMALY = "anomaly"
    THROUGHPUT = "throughput"


class Fault(StrEnum):
    """Where an anomaly puts the blame; it decides whether to avoid the node."""

    NODE = "node"
    APPLICATION = "application"
    INFRASTRUCTURE = "infrastructure"
    UNKNOWN = "unknown"


class RuleFileError(AjrError):
    """A rule file cannot be read or holds an invalid rule."""


class Rule(BaseModel):
    """One validated rule; ``source`` is the file it came from (set by the loader)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr
    kind: RuleKind
    pattern: StrictStr = Field(min_length=1)
    category: StrictStr | None = None
    fault: Fault = Fault.UNKNOWN
    priority: StrictInt = Field(default=DEFAULT_PRIORITY, ge=0, le=1000)
    cascade: StrictBool = False
    ignore_case: StrictBool = True
    enabled: StrictBool = True
    description: StrictStr = ""
    source: StrictStr = ""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        return _check_rule_name(name)

    @field_validator("category")
    @classmethod
    def _check_category(cls, category: str | None) -> str | None:
        if category is not None and not _CATEGORY_RE.fullmatch(category):
            raise ValueError(
                f"category {category!r} must be lower-case letters, digits and '_', "
                "starting with a letter"
            )
        return category

    @model_validator(mode="after")
    def _check_rule(self) -> Rule:
        if self.kind is RuleKind.ANOMALY:
            if self.category is None:
                raise ValueError("an anomaly rule needs a category")
        else:
            # Silently ignoring these would hide a rule whose kind is a typo.
            if self.category is not None:
                raise ValueError(f"category is only for anomaly rules, not {self.kind.value}")
            for key in ("fault", "priority", "cascade"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} is only for anomaly rules, not {self.kind.value}")
        try:
            compiled = _compile(self)
        except regex.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from None
        if self.kind is RuleKind.THROUGHPUT and "value" not in compiled.groupindex:
            raise ValueError(
                "a throughput pattern needs a named group (?P<value>...) around the number"
            )
        return self


class _RuleDisable(BaseModel):
    """A drop-in entry that only turns off an earlier rule: no pattern needed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr
    enabled: Literal[False]
    description: StrictStr = ""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        return _check_rule_name(name)


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A rule that matched a line; ``value`` is the number a throughput rule captured."""

    rule: Rule
    value: float | None = None


def root_cause(matches: Iterable[RuleMatch]) -> RuleMatch | None:
    """Return the anomaly match that best explains ``matches``, or None if there is none.

    ``matches`` may come from one line or from all the anomaly lines of an
    attempt, in the order they were seen. A match of a rule that is not a
    cascade beats every cascade match; among those left the highest
    ``priority`` wins, and on a tie the earliest. Checkpoint and throughput
    matches are ignored.
    """
    best: RuleMatch | None = None
    best_rank = (False, -1)
    for match in matches:
        rule = match.rule
        if rule.kind is not RuleKind.ANOMALY:
            continue
        rank = (not rule.cascade, rule.priority)
        if rank > best_rank:  # strictly greater: the earliest of equals stays
            best, best_rank = match, rank
    return best


def _check_rule_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"name {name!r} must be letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def _compile(rule: Rule) -> regex.Pattern[str]:
    return regex.compile(rule.pattern, regex.IGNORECASE if rule.ignore_case else 0)


def default_rules_dir() -> Path:
    """Return the directory of the rule files shipped with AJR.

    In a source checkout or an editable install that is ``rules/`` beside the
    package; an installed package has them under ``<prefix>/share/ajr/rules``.
    """
    beside_package = Path(ajr_agent.__file__).resolve().parent.parent / "rules"
    if beside_package.is_dir():
        return beside_package
    return Path(sys.prefix) / "share" / "ajr" / "rules"


def load_rule_files(dirs: Sequence[Path]) -> list[Rule]:
    """Read every ``*.toml`` rule file of ``dirs`` and return the enabled rules.

    Directories are read in the given order, files in each in sorted name order
    (names starting with '.' are skipped: editor lock and swap files). A rule
    replaces an earlier one of the same name and keeps that one's position, so
    the order stays the shipped file's. Disabled rules are dropped at the end. A
    missing directory is skipped; anything unreadable or invalid raises
    :class:`RuleFileError`.
    """
    merged: dict[str, Rule | _RuleDisable] = {}
    for directory in dirs:
        for path in _rule_files(directory):
            for entry in _read_rule_file(path):
                if isinstance(entry, _RuleDisable) and entry.name not in merged:
                    logger.warning(
                        "%s: rule %r disables a rule that no earlier file defines",
                        path,
                        entry.name,
                    )
                merged[entry.name] = entry
    return [rule for rule in merged.values() if isinstance(rule, Rule) and rule.enabled]


def _rule_files(directory: Path) -> list[Path]:
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RuleFileError(f"{directory}: cannot list rule directory: {exc.strerror}") from exc
    files = [p for p in entries if p.suffix == ".toml" and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.name)


def _read_rule_file(path: Path) -> list[Rule | _RuleDisable]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RuleFileError(f"{path}: cannot read rule file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise RuleFileError(f"{path}: not UTF-8 text: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)", or with "(at end
        # of document)", where the last line's number still helps.
        where = f" (line {len(text.splitlines())})" if str(exc).endswith("end of document)") else ""
        raise RuleFileError(f"{path}: invalid TOML: {exc}{where}") from exc

    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise RuleFileError(
            f"{path}: unknown top-level key {unknown[0]!r} (rules go in [[rule]] tables)"
        )
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise RuleFileError(f"{path}: 'rule' must be an array of tables, written [[rule]]")

    entries: list[Rule | _RuleDisable] = []
    seen: set[str] = set()
    for index, table in enumerate(tables, start=1):
        entry = _parse_rule(path, index, table)
        if entry.name in seen:
            raise RuleFileError(f"{path}: rule {entry.name!r}: defined twice in this file")
        seen.add(entry.name)
        entries.append(entry)
    return entries


def _parse_rule(path: Path, index: int, table: Any) -> Rule | _RuleDisable:
    if not isinstance(table, dict):
        raise RuleFileError(f"{path}: rule #{index}: must be a table, written [[rule]]")
    name = table.get("name")
    where = f"{path}: rule {name!r}" if isinstance(name, str) else f"{path}: rule #{index}"
    if "source" in table:
        raise RuleFileError(f"{where}: unknown key 'source'")
    disable_only = table.get("enabled") is False and "pattern" not in table
    try:
        if disable_only:
            return _RuleDisable.model_validate(table)
        return Rule.model_validate({**table, "source": str(path)})
    except ValidationError as exc:
        hint = (
            " (an entry without a pattern only disables a rule: name and enabled = false)"
            if disable_only
            else ""
        )
        raise RuleFileError(f"{where}: {_describe(exc)}{hint}") from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key {field!r}")
        elif error["type"] == "missing":
            problems.append(f"missing key {field!r}")
        elif error["type"] == "value_error":
            # Our own validators' messages, without pydantic's "Value error, " prefix.
            message = str(error["ctx"]["error"])
            problems.append(f"{field}: {message}" if field else message)
        else:
            problems.append(f"{field}: {error['msg']}")
    return "; ".join(problems)


# --- The literal prefilter ---------------------------------------------------

# Escapes of one letter that match no fixed text and read no argument; any
# other letter or digit escape (\x41, \p{L}, \N{...}, \g<1>, \1) makes the
# scanner give up on the pattern rather than guess how much it consumes.
_PLAIN_ESCAPES = frozenset("abdfhmnrstvwzABDGKMRSWXZ")
_QUANTIFIER_RE = regex.compile(r"\{(?:\d+|\d+,\d*|,\d+)\}")
# Inline flags that change what a literal matches: verbose mode (x) makes spaces
# mean nothing, and full case folding (f, or V1 with IGNORECASE) lets "ss" match "ß".
_UNSCANNABLE_FLAGS_RE = regex.compile(r"\(\?[a-zA-Z01-]*(?:[xf]|V1)[a-zA-Z01-]*[:)]")

# Text that ordinary log lines are full of: a sample of common English words and
# everyday training-log vocabulary. The prefilter avoids literals found in it
# when it has a choice, as anchors (see `required_literals`) and as gates (see
# `_choose_gates`). It only tunes speed, never what matches.
_COMMON_TEXT = (
    " the of and to in is was for on that with as by at from it he she they we you this be an "
    "are were been being have has had not no but or if then than them these those there their "
    "which what when where who will would can could should may might must shall do does did done "
    "all any each some more most other into only over such about out up down after before "
    "between during under while through because however also new one two first last time year "
    "information operation station nation action function section position condition question "
    "going being having making taking using running training setting getting string thing "
    "iteration step epoch loss rate learning batch size elapsed samples tokens consumed global "
    "grad norm scale number skipped info warning debug user channel via connected ring rank comm "
    "init complete device node host worker process thread model data layer attention parameter "
    "optimizer checkpoint validation evaluation accuracy throughput memory allocated reserved "
    "dataset loading loaded saving saved started finished done total average seconds "
)


def _skip_class(pattern: str, start: int) -> int | None:
    """Return the index just past the character class opening at ``start``."""
    i = start + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):
        i += 1
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
        elif char == "[":
            return None  # nested set (regex V1) or POSIX class: not worth parsing
        elif char == "]":
            return i + 1
        else:
            i += 1
    return None


def _skip_group(pattern: str, start: int) -> int | None:
    """Return the index just past the group opening at ``start``."""
    depth = 0
    i = start
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            end = _skip_class(pattern, i)
            if end is None:
                return None
            i = end
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def required_literals(pattern: str) -> frozenset[str] | None:
    """Return lower-case ASCII literals of which every match of ``pattern`` contains one.

    For each top-level alternative the result holds its best *anchor*: a run
    of literal characters, or the literals of a group that is nothing but
    literal alternatives, such as ``(?:failed|error)``, and has no quantifier.
    The best is the rarest, then the longest: an anchor in
    :data:`_COMMON_TEXT` loses to one that is not (so ``loss\\w*=nan`` is
    anchored on ``=nan``, which few lines hold, rather than on ``loss``,
    which most training lines do), and a group counts as its weakest
    literal. ``None`` means no such set could be worked out (an alternative
    without a literal, or syntax the scanner does not follow): the pattern
    must then be tried on every line. Only top-level runs and groups are
    taken, and a character followed by a quantifier is never part of a run,
    so the answer errs on the side of "no anchor", never of a wrong one.
    """
    if "(?#" in pattern or _UNSCANNABLE_FLAGS_RE.search(pattern):
        return None
    anchors: set[str] = set()
    best: frozenset[str] = frozenset()  # best anchor of the current alternative so far
    run = ""  # literal run being read
    last_is_literal = False  # a quantifier would apply to run's last character
    i = 0
    while i <= len(pattern):
        char = pattern[i] if i < len(pattern) else "|"
        step = 1
        literal: str | None = None
        if char == "\\":
            if i + 1 >= len(pattern):
                return None
            escaped = pattern[i + 1]
            step = 2
            if not escaped.isalnum():
                literal = escaped
            elif escaped not in _PLAIN_ESCAPES:
                return None
        elif char == "[" or char == "(":
            end = _skip_class(pattern, i) if char == "[" else _skip_group(pattern, i)
            if end is None:
                return None
            step = end - i
            if char == "(" and not pattern.startswith(("?", "*", "+", "{"), end):
                best = _rarer(_group_literals(pattern[i:end]), best)
        elif char in "*+?{":
            if char == "{":
                quantifier = _QUANTIFIER_RE.match(pattern, i)
                if quantifier is None:
                    return None  # a literal brace, or regex's fuzzy-matching syntax
                step = quantifier.end() - i
            if last_is_literal:
                run = run[:-1]
        elif char == "|":
            best = _rarer(frozenset([run] if run else []), best)
            if not best:
                return None
            anchors.update(anchor.lower() for anchor in best)
            best = frozenset()
            run = ""
        elif char == ")":
            return None
        elif char not in ".^$":
            literal = char
        if literal is not None and literal.isascii():
            run += literal
            last_is_literal = True
        else:
            best = _rarer(frozenset([run] if run else []), best)
            run = ""
            last_is_literal = False
        i += step
    return frozenset(anchors)


# A group whose alternatives are all plain literal text: (?:a|b), (a|b) or (?P<n>a|b).
_LITERAL_GROUP_RE = regex.compile(r"\((?:\?:|\?P<\w+>)?((?:[^\\()\[\]{}|*+?.^$]|\\[^\w])+(?:\|(?:[^\\()\[\]{}|*+?.^$]|\\[^\w])+)*)\)")


_ALTERNATIVE_RE = regex.compile(r"(?:[^\\|]|\\.)+")


def _group_literals(group: str) -> frozenset[str]:
    """Return the alternatives of ``group`` if it is a group of literal alternatives, else nothing."""
    found = _LITERAL_GROUP_RE.fullmatch(group)
    if found is None or not found[1].isascii():
        return frozenset()
    alternatives = _ALTERNATIVE_RE.findall(found[1])
    return frozenset(regex.sub(r"\\(.)", r"\1", alternative) for alternative in alternatives)


def _rarer(candidate: frozenset[str], best: frozenset[str]) -> frozenset[str]:
    """Return the better of two anchors (sets of literals): a rare one, then a long one."""
    def score(anchor: frozenset[str]) -> tuple[bool, int]:
        if not anchor:
            return False, -1
        return min((text.lower() not in _COMMON_TEXT, len(text)) for text in anchor)

    return candidate if score(candidate) > score(best) else best


# --- Matching ----------------------------------------------------------------

# The key of a line (see the module docstring) comes from one `bytes.translate`
# of its UTF-8 bytes. What it must keep is substring containment: if an anchor
# (ASCII, lower-case, digits removed) can match in a line, it is in the line's
# key. Deleting digits keeps that, and makes lines that differ only in their
# numbers, whatever their width, share one key. A non-ASCII character cannot
# be part of an anchor, so it becomes one placeholder byte (its lead byte is
# mapped, its continuation bytes deleted) -- except that three of them match an
# ASCII letter under IGNORECASE: KELVIN SIGN (E2 84 AA) ~ k, LONG S (C5 BF) ~ s
# and CAPITAL I WITH DOT ABOVE (C4 B0) ~ i. Their lead bytes become that
# letter, so every character sharing such a lead byte does too: that only
# makes a few lines candidates needlessly. A unit test checks the whole Unicode
# range for more such letters.
_KEY_DELETE = b"0123456789" + bytes(range(0x80, 0xC0))


def _key_table() -> bytes:
    """Return the `bytes.translate` table of the key, as the comment above describes."""
    table = bytearray(range(0x80)) + b"\x80" * 0x80
    table[0x41:0x5B] = b"abcdefghijklmnopqrstuvwxyz"
    table[0xC4], table[0xC5], table[0xE2] = b"isk"
    return bytes(table)


_KEY_TABLE = _key_table()

# The candidate cache holds keys of ordinary lines only, so that it stays small
# (at most about 16 MiB) whatever the logs hold.
_CACHE_MAX_KEY_CHARS = 1024
_CACHE_MAX_ENTRIES = 16384

# Lengths of the gates: shorter ones cover more anchors but occur in more lines.
_GATE_LENGTHS = (4, 5, 6)


def _key(text: str) -> str:
    """Return the prefilter key of the line ``text``."""
    # surrogatepass: a line decoded with surrogateescape must not make matching
    # raise. latin-1 turns each byte into one character, so containment is
    # unchanged, and `str in str` runs several times faster than `bytes in bytes`.
    data = text.encode("utf-8", "surrogatepass")
    return data.translate(_KEY_TABLE, _KEY_DELETE).decode("latin-1")


def _choose_gates(anchors: Iterable[str]) -> dict[str, list[str]]:
    """Group ``anchors`` under gates: substrings that every anchor of the group contains.

    A greedy set cover: repeatedly take the substring of 4 to 6 characters
    that the most uncovered anchors contain, among those that do not occur in
    :data:`_COMMON_TEXT`; an anchor left without such a substring is its own
    gate. An anchor may belong to several gates.
    """
    all_anchors = sorted(set(anchors))
    uncovered = set(all_anchors)
    gates: dict[str, list[str]] = {}
    while uncovered:
        holders: dict[str, set[str]] = {}
        for anchor in uncovered:
            for length in _GATE_LENGTHS:
                for start in range(len(anchor) - length + 1):
                    gram = anchor[start : start + length]
                    if gram not in _COMMON_TEXT:
                        holders.setdefault(gram, set()).add(anchor)
        if not holders:
            gates.update((anchor, [anchor]) for anchor in sorted(uncovered))
            break
        gate = max(sorted(holders), key=lambda gram: (len(holders[gram]), len(gram)))
        gates[gate] = [anchor for anchor in all_anchors if gate in anchor]
        uncovered -= set(gates[gate])
    return gates


# Throughput rules report on most lines of a training log, so a literal prefilter
# passes nearly every line to them; one search through a whole batch, joined into
# one string, is then cheaper than a call per line. That search finds the match a
# line alone would give (see `RuleSet._scan`) unless the pattern looks beyond the
# text it consumes: anchors, lookarounds, and inline flags (which may turn on
# DOTALL or reverse searching) or fuzzy matching, whose effects the scanner does
# not model. Escapes that are assertions about the string's ends: \A \Z \z \G \K.
_EDGE_ESCAPES = frozenset("AZzGK")


def block_scannable(pattern: str) -> bool:
    """Return whether a search of ``pattern`` through lines joined by "\\n" finds, in a line, what
    a search of the line alone finds.

    True when the pattern has no anchor (``^``, ``$``, ``\\A``, ``\\Z``,
    ``\\z``, ``\\G``, ``\\K``), no group other than ``(?:...)`` and
    ``(?P<name>...)`` (so no lookaround and no inline flag) and no brace that
    is not a quantifier (fuzzy matching). Then a match lying within one line
    of the block is that line's first match, and a match crossing a line
    break is detected by its span; ``\\b`` sees the same at a line's edge as
    at the string's, since "\\n" is not a word character. Errs on the side
    of False.
    """
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 >= len(pattern) or pattern[i + 1] in _EDGE_ESCAPES:
                return False
            i += 2
        elif char == "[":
            end = _skip_class(pattern, i)
            if end is None:
                return False
            i = end
        elif char == "(":
            if pattern.startswith("(?", i) and not pattern.startswith(("(?:", "(?P<"), i):
                return False
            i += 1
        elif char in "^$" or (char == "{" and not _QUANTIFIER_RE.match(pattern, i)):
            return False
        else:
            i += 1
    return True


# How long a block scan may run, per character of the block, before the rest of
# the batch is searched line by line instead (with the per-line timeout). The
# shipped throughput rule scans a training log at about 2 ns per character, so
# this leaves a margin of 50 for slower site patterns.
_SCAN_SECONDS_PER_CHAR = 100e-9

_Found = tuple[int, "RuleMatch"]
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
        self._compiled = tuple(_compile(rule) for rule in active)
        self._rank = {rule.name: index for index, rule in enumerate(active)}
        # Rules a batch is scanned for as a whole; the others are prefiltered.
        self._scanned: tuple[int, ...] = tuple(
            index for index, rule in enumerate(active)
            if rule.kind is RuleKind.THROUGHPUT and block_scannable(rule.pattern)
        )  # fmt: skip

        by_anchor: dict[str, list[int]] = {}
        unanchored: list[int] = []
        literals: set[str] = set()
        for index, rule in enumerate(active):
            if index in self._scanned:
                continue
            anchors = required_literals(rule.pattern)
            if anchors is None:
                unanchored.append(index)
            for anchor in anchors or ():
                by_anchor.setdefault(_key(anchor), []).append(index)
                literals.add(anchor)
        self._unanchored: tuple[int, ...] = tuple(unanchored)
        self._grep_args = _grep_args(literals) if literals and not unanchored else None
        gates = _choose_gates(by_anchor)
        self._gates: tuple[str, ...] = tuple(gates)
        self._gate_anchors: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...] = tuple(
            tuple((anchor, tuple(by_anchor[anchor])) for anchor in members)
            for members in gates.values()
        )
        self._cache: dict[str, tuple[int, ...]] = {}

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
            if index in self._unanchored:
                slow.append((rule, "has no fixed text to prefilter on: it runs on every line, and no backlog "
                                   "goes through grep; give each top-level alternative a literal word"))  # fmt: skip
            elif rule.kind is RuleKind.THROUGHPUT and index not in self._scanned:
                slow.append((rule, "is a throughput pattern with an anchor (^, $, \\A, \\Z), a lookaround, an "
                                   "inline flag or fuzzy matching: it is searched line by line, not once per batch"))  # fmt: skip
        return slow

    def match(self, line: str) -> list[RuleMatch]:
        """Return every rule that matches ``line``, in rule order."""
        key = _key(line)
        candidates = self._cache.get(key)
        if candidates is None:
            gated = compress(range(len(self._gates)), map(key.__contains__, self._gates))
            candidates = self._remember(key, self._anchored(key, gated))
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
            prefilter = _GrepPrefilter.start([grep, *args], text)  # runs beside the scans
        done = len(lines)
        try:
            scans = []
            for index in self._scanned:
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
        keys = list(map(_key, lines))
        cached = self._cache.get
        batch = list(map(cached, keys))
        unseen = list(dict.fromkeys(key for key, hit in zip(keys, batch) if hit is None))
        if unseen:
            computed = dict(zip(unseen, self._gate_batch(unseen)))
            batch = [computed[key] if hit is None else hit for key, hit in zip(keys, batch)]
        found: list[_Found] = []
        for line, candidates in enumerate(batch):
            if candidates:
                if line and _past(deadline):
                    return found, line
                found += [(line, match) for _, match in self._search(lines[line], candidates)]
        return found, len(lines)

    def _gate_batch(self, keys: list[str]) -> list[tuple[int, ...]]:
        """Return the candidate rules of each of ``keys`` (distinct, not cached) and cache them.

        Searching a gate through all keys joined costs one C-level scan
        instead of a call per key. No key holds a character above U+0080 (see
        `_key_table`), so U+00FF can separate them.
        """
        block = "\xff".join(keys)
        ends = list(accumulate(len(key) + 1 for key in keys))  # offset just past each key
        gated: list[list[int]] = [[] for _ in keys]
        for gate_index, gate in enumerate(self._gates):
            find = block.find
            at = find(gate)
            while at >= 0:
                key_index = bisect_right(ends, at)
                gated[key_index].append(gate_index)
                at = find(gate, ends[key_index])
        return [
            self._remember(key, self._anchored(key, gates)) for key, gates in zip(keys, gated)
        ]

    def _anchored(self, key: str, gates: Iterable[int]) -> tuple[int, ...]:
        """Return the indexes of the rules that may match ``key``, given the gates it holds."""
        hits: set[int] | None = None
        for gate_index in gates:
            for anchor, indexes in self._gate_anchors[gate_index]:
                if anchor in key:
                    if hits is None:
                        hits = set(self._unanchored)
                    hits.update(indexes)
        return self._unanchored if hits is None else tuple(sorted(hits))

    def _remember(self, key: str, candidates: tuple[int, ...]) -> tuple[int, ...]:
        """Cache the candidates of an ordinary line's ``key``; return them."""
        if len(key) <= _CACHE_MAX_KEY_CHARS:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()  # simpler than LRU; refilling costs one scan per key
            self._cache[key] = candidates
        return candidates

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


class _GrepPrefilter:
    """One grep run that picks a batch's candidate lines for the prefiltered rules.

    It is started before the throughput scan and collected after it, so that
    on a machine with a core to spare grep costs no wall time. A prefiltered
    rule's match contains an anchor, which grep finds (see `_grep_args`). A
    line holding a line break would shift grep's line numbers, so grep also
    reads a last line that it always selects: the batch is matched without
    grep unless that line keeps its number. grep's output goes to an
    in-memory file, so that it never waits for this process to read.
    """

    def __init__(self, process: subprocess.Popen[bytes], output: BinaryIO, errors: BinaryIO) -> None:
        self._process = process
        self._output = output
        self._errors = errors

    @classmethod
    def start(cls, command: list[str | bytes], text: str) -> _GrepPrefilter | None:
        """Start grep ``command`` on the lines of ``text``; None (logged) if it cannot start."""
        with contextlib.ExitStack() as cleanup:
            try:
                output = cleanup.enter_context(_memory_file())
                errors = cleanup.enter_context(_memory_file())
                with _memory_file(text.encode("utf-8", "surrogatepass"), _GREP_SENTINEL) as batch:
                    process = subprocess.Popen(command, stdin=batch, stdout=output, stderr=errors, env={"LC_ALL": "C"})
            except OSError as exc:  # no grep, or no memory file: the batch is matched without grep
                logger.debug("grep prefilter unavailable, matching without it: %s", exc)
                return None
            cleanup.pop_all()  # grep writes to them: picked() closes them
        return cls(process, output, errors)

    def picked(self, count: int) -> list[int] | None:
        """Wait for grep; return the indexes of the ``count`` lines it picked, or None (logged)."""
        # A timer rather than wait(timeout=...), which polls with growing sleeps.
        watchdog = threading.Timer(GREP_TIMEOUT, self._process.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            returncode = self._process.wait()
            self._output.seek(0)
            self._errors.seek(0)
            output, errors = self._output.read(), self._errors.read()
        finally:
            watchdog.cancel()
            self._output.close()
            self._errors.close()
        if returncode not in (0, 1):  # 1: no line selected
            reason = f"timed out after {GREP_TIMEOUT} s" if returncode == -signal.SIGKILL else f"exited with {returncode}"
            logger.debug("grep prefilter %s, matching without it: %s", reason, errors.decode("utf-8", "replace").strip())
            return None
        # Each output row is "<line number>:<line>"; split at "\n" only, since
        # bytes.splitlines would also split at a "\r" inside a line.
        picked = [int(row.partition(b":")[0]) - 1 for row in output.split(b"\n") if row]
        if not picked or picked.pop() != count:
            logger.debug("a line holds a line break, so grep's line numbers are not ours: matching without it")
            return None
        return picked


def _past(deadline: float | None) -> bool:
    """Whether a pass's deadline (None: none) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def _memory_file(*parts: bytes) -> BinaryIO:
    """Return an anonymous in-memory file holding ``parts``, positioned at its start.

    grep reads its batch from one and writes to another: feeding a pipe
    instead cost a poll and a write per 4 KiB in `subprocess.run`, as long as
    grep itself took.
    """
    fd = os.memfd_create("ajr-grep-batch", os.MFD_CLOEXEC)
    batch = open(fd, "w+b", buffering=0)  # the caller closes it
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[batch.write(view) :]
        batch.seek(0)
    except OSError:
        batch.close()
        raise
    return batch


# Characters special in a POSIX extended regex; a backslash makes each literal.
_ERE_SPECIAL_RE = regex.compile(r"[\\.\[\](){}*+?|^$]")


# The three non-ASCII characters that IGNORECASE folds to ASCII letters (KELVIN
# SIGN ~ k, LONG S ~ s, CAPITAL I WITH DOT ABOVE ~ i); see `_key_table`.
_ASCII_FOLDING = ("\u212a", "\u017f", "\u0130")


# The last line of each batch grep reads, selected by every grep command (see
# `_GrepPrefilter`); a log line that holds it is only picked needlessly.
_GREP_SENTINEL_TEXT = "ajr: end of batch"
_GREP_SENTINEL = b"\n" + _GREP_SENTINEL_TEXT.encode()


def _grep_args(literals: Iterable[str]) -> tuple[str | bytes, ...] | None:
    """Return grep's arguments that select the lines holding any of ``literals``, for the C locale.

    There ``-i`` folds ASCII letters only, while a rule ignoring case matches
    e.g. KELVIN SIGN for "k": the alternation also selects every line holding
    one of the characters that fold to an ASCII letter (as UTF-8 bytes).

    The literals go in as one alternation (-E) rather than as fixed strings
    (-F): GNU grep then runs its DFA, which on training logs measured about
    twice as fast as its multi-string search over these short literals.
    ``None`` if a literal holds a NUL, which no argument can carry. A literal
    with a line break is fine: grep splits the pattern there, into parts that
    each a line holding the literal also holds.
    """
    if any("\0" in literal for literal in literals):
        return None
    escaped = [_ERE_SPECIAL_RE.sub(r"\\\g<0>", literal) for literal in sorted(literals)]
    alternation = "|".join([*escaped, *_ASCII_FOLDING, _GREP_SENTINEL_TEXT]).encode("utf-8")
    # -a: a NUL byte in a line must not make grep report "binary file matches".
    return ("-n", "-E", "-i", "-a", "-e", alternation)


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
