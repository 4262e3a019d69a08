"""User text made safe to pass on: job names, log lines and paths go into Slurm fields,
messages and logs that other people read, where a line break or a control character
would forge a line of its own."""

from __future__ import annotations

import unicodedata


def printable(text: str, limit: int) -> str:
    """``text`` with each character Python does not print shown as ``?`` (controls, line and
    paragraph separators, bidi overrides ...) and other spaces as a space, cut to ``limit``
    characters with ``…``."""
    return cut("".join(c if c.isprintable() else " " if unicodedata.category(c) == "Zs" else "?" for c in text), limit)


def cut(text: str, limit: int) -> str:
    """``text`` whole if it has at most ``limit`` characters, else its start and ``…``, ``limit`` in all."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"
