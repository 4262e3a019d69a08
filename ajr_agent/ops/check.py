"""One item `ajr doctor` checked: whether it is fine, what was found, how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One item checked: whether it is fine, what was found, and how to fix it when not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
