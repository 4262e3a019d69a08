"""User text made safe to pass on: job names, log lines and paths go into Slurm fields,
messages and logs that other people read, where a line break or a control character
would forge a line of its own."""

from __future__ import annotations

import unicodedata


def visible(text: str, mark: str = "?", keep: str = "") -> str:
    """``text`` with each character Python does not print (controls, line and paragraph separators,
    bidi overrides, zero-width marks ...) shown as ``mark`` and other spaces as a space; the characters
    of ``keep`` pass as they are (a caller's own marks, such as the zero-width space that defuses a
    mention)."""
    return "".join(
        c if c.isprintable() or c in keep else " " if unicodedata.category(c) == "Zs" else mark for c in text
    )


def printable(text: str, limit: int) -> str:
    """``text`` made ``visible`` (each unprintable character a ``?``), cut to ``limit`` characters with ``…``."""
    return cut(visible(text), limit)


def cut(text: str, limit: int) -> str:
    """``text`` whole if it has at most ``limit`` characters, else its start and ``…``, ``limit`` in all."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"
