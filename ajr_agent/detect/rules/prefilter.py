"""The literal prefilter: which rules may match a line, worked out from the line's key.

A rule's match contains one of its anchors (see `patterns.required_literals`), so a line
is only handed to the rules whose anchor its key holds, and to the rules without anchors.
The candidates of a key are cached: training logs repeat a few line shapes that differ
only in their numbers, and those share a key. A key seen for the first time is tested
against a few short gates, substrings shared by groups of anchors, and then against the
anchors of the gates it holds.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, compress

from ajr_agent.detect.rules.patterns import COMMON_TEXT

# The key of a line comes from one `bytes.translate` of its UTF-8 bytes: ASCII
# letters lower-cased, digits deleted and each other character reduced to one
# placeholder byte. What it must keep is substring containment: if an anchor
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
    :data:`patterns.COMMON_TEXT`; an anchor left without such a substring is its own
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
                    if gram not in COMMON_TEXT:
                        holders.setdefault(gram, set()).add(anchor)
        if not holders:
            gates.update((anchor, [anchor]) for anchor in sorted(uncovered))
            break
        gate = max(sorted(holders), key=lambda gram: (len(holders[gram]), len(gram)))
        gates[gate] = [anchor for anchor in all_anchors if gate in anchor]
        uncovered -= set(gates[gate])
    return gates


class LiteralPrefilter:
    """The candidate rules of lines, by rule index, with a cache of the keys seen.

    ``unanchored`` holds the rules without anchors: they are candidates on every line.
    """

    def __init__(self, anchors: Mapping[int, frozenset[str] | None]) -> None:
        """Index the rules of ``anchors``: each rule index with its anchors, None for none."""
        by_anchor: dict[str, list[int]] = {}
        unanchored: list[int] = []
        for index, literals in anchors.items():
            if literals is None:
                unanchored.append(index)
            for anchor in literals or ():
                by_anchor.setdefault(_key(anchor), []).append(index)
        self.unanchored: tuple[int, ...] = tuple(unanchored)
        gates = _choose_gates(by_anchor)
        self._gates: tuple[str, ...] = tuple(gates)
        self._gate_anchors: tuple[tuple[tuple[str, tuple[int, ...]], ...], ...] = tuple(
            tuple((anchor, tuple(by_anchor[anchor])) for anchor in members)
            for members in gates.values()
        )
        self._cache: dict[str, tuple[int, ...]] = {}

    def candidates(self, line: str) -> tuple[int, ...]:
        """Return the indexes, in order, of the rules that may match ``line``."""
        key = _key(line)
        candidates = self._cache.get(key)
        if candidates is None:
            gated = compress(range(len(self._gates)), map(key.__contains__, self._gates))
            candidates = self._remember(key, self._anchored(key, gated))
        return candidates

    def candidates_of_lines(self, lines: Sequence[str]) -> list[tuple[int, ...]]:
        """Return the candidates of each of ``lines``, as :meth:`candidates` does, looking at
        each distinct key not cached once."""
        keys = list(map(_key, lines))
        cached = self._cache.get
        batch = list(map(cached, keys))
        unseen = list(dict.fromkeys(key for key, hit in zip(keys, batch) if hit is None))
        if unseen:
            computed = dict(zip(unseen, self._gate_batch(unseen)))
            batch = [computed[key] if hit is None else hit for key, hit in zip(keys, batch)]
        return batch

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
                        hits = set(self.unanchored)
                    hits.update(indexes)
        return self.unanchored if hits is None else tuple(sorted(hits))

    def _remember(self, key: str, candidates: tuple[int, ...]) -> tuple[int, ...]:
        """Cache the candidates of an ordinary line's ``key``; return them."""
        if len(key) <= _CACHE_MAX_KEY_CHARS:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()  # simpler than LRU; refilling costs one scan per key
            self._cache[key] = candidates
        return candidates
