"""What a pattern's text tells before it runs: the literals every match contains
(`required_literals`, the anchors of the literal prefilter), and whether a search through
many lines joined finds what a search of each line finds (`block_scannable`)."""

from __future__ import annotations

import regex

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
# `prefilter.choose_gates`). It only tunes speed, never what matches.
COMMON_TEXT = (
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
    :data:`COMMON_TEXT` loses to one that is not (so ``loss\\w*=nan`` is
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
        return min((text.lower() not in COMMON_TEXT, len(text)) for text in anchor)

    return candidate if score(candidate) > score(best) else best


# Throughput rules report on most lines of a training log, so a literal prefilter
# passes nearly every line to them; one search through a whole batch, joined into
# one string, is then cheaper than a call per line. That search finds the match a
# line alone would give (see `engine.RuleSet._scan`) unless the pattern looks beyond the
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
