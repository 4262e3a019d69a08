"""Slurm's compact host lists (`gpu-[01-03,7]`), expanded and compressed with bounds."""

from __future__ import annotations

import math
import re
from itertools import product
from typing import Iterable

from ajr_agent.domain.errors import AjrError


# Slurm's own host list code takes at most 64K names from one bracket (hostlist.c, MAX_RANGE).
MAX_HOSTLIST_NAMES = 65536


class HostlistError(AjrError, ValueError):
    """A string that is not a Slurm host list."""


class HostlistTooLarge(HostlistError):
    """A host list that names more nodes than it may (the cluster's size, where that is known)."""


def expand_hostlist(hostlist: str, limit: int = MAX_HOSTLIST_NAMES) -> list[str]:
    """Expand Slurm's compact node lists: `gpu-[01-03,7],login1` -> gpu-01, gpu-02, gpu-03, gpu-7, login1.

    A list that names more than `limit` nodes is a HostlistTooLarge, raised before any name
    is made: pass the cluster's size where the list does not come straight from slurmctld.
    A string that is no host list is a HostlistError.
    """
    names: list[str] = []
    for item in _hostlist_items(hostlist):
        parts = re.split(r"\[([^\]]*)\]", item)
        texts, brackets = parts[0::2], [_bracket_spans(spec, hostlist) for spec in parts[1::2]]
        count = math.prod(sum(high - low + 1 for low, high, _ in spans) for spans in brackets)
        if len(names) + count > limit:
            raise HostlistTooLarge(
                f"host list {hostlist[:100]!r} names at least {len(names) + count} nodes, more than the {limit} "
                f"it may name (the nodes this cluster has)"
            )
        numbers = [[f"{n:0{width}d}" for low, high, width in spans for n in range(low, high + 1)] for spans in brackets]
        for chosen in product(*numbers):
            names.append("".join(text + number for text, number in zip(texts, (*chosen, ""))))
    return names


def _hostlist_items(hostlist: str) -> list[str]:
    """The comma-separated items of a host list (commas inside brackets are the bracket's own)."""
    items, start, inside = [], 0, False
    for index, char in enumerate(hostlist):
        if char in "[]" and inside == (char == "["):
            raise HostlistError(f"host list {hostlist[:100]!r}: unbalanced or nested '{char}' at {index}")
        if char in "[]":
            inside = char == "["
        elif char == "," and not inside:
            items.append(hostlist[start:index])
            start = index + 1
    if inside:
        raise HostlistError(f"host list {hostlist[:100]!r}: a '[' is never closed")
    items.append(hostlist[start:])
    return [item for item in items if item]


def _bracket_spans(spec: str, hostlist: str) -> list[tuple[int, int, int]]:
    """`01-03,7` -> (low, high, width) spans; Slurm pads each to the width of its first number."""
    spans = []
    for part in spec.split(","):
        found = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        # A backward range would also count negative and let the rest pass the limit.
        if not found or int(found.group(2) or found.group(1)) < int(found.group(1)):
            raise HostlistError(f"host list {hostlist[:100]!r}: {part[:40]!r} is no number or rising range of numbers")
        low, high = found.group(1), found.group(2) or found.group(1)
        spans.append((int(low), int(high), len(low)))
    return spans


def compress_hostlist(names: Iterable[str]) -> str:
    """The compact Slurm host list of `names`, duplicates left out: n3, n1, n2, n7 -> `n[1-3,7]`."""
    groups: dict[tuple[str, int], set[int]] = {}
    others: list[str] = []
    for name in dict.fromkeys(names):
        found = re.fullmatch(r"(.*?)([0-9]+)", name)
        if not found:
            others.append(name)
            continue
        prefix, digits = found.groups()
        # Slurm reads a span's width from its first number (n[08-10]: n08, n09, n10; n[8-10]:
        # n8, n9, n10), so zero-padded numbers only share a span with numbers of their length.
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        groups.setdefault((prefix, width), set()).add(int(digits))
    parts = []
    for (prefix, width), numbers in groups.items():
        spans: list[list[int]] = []
        for number in sorted(numbers):
            if spans and number == spans[-1][1] + 1:
                spans[-1][1] = number
            else:
                spans.append([number, number])
        shown = [f"{low:0{width}d}" + (f"-{high:0{width}d}" if high > low else "") for low, high in spans]
        parts.append(f"{prefix}{shown[0]}" if len(numbers) == 1 else f"{prefix}[{','.join(shown)}]")
    return ",".join(parts + others)
