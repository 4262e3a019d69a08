"""Slurm releases as numbers: which release a version string is, for what differs between them."""

from __future__ import annotations

import re

# Slurm prints `22.05.8` or `24.11.5-1`; pyslurm `22.5.3` or `24.11.0.post1`.
_MAJOR_MINOR = re.compile(r"([0-9]+)\.([0-9]+)")

# From 25.05 on scontrol prints an error after its context with no space ("slurm_suspend
# error:Job has already finished"; scontrol.c, _printf_error); before, after ": ".
SCONTROL_ERROR_SPACE_UNTIL = (25, 5)


def release_of(version: str) -> tuple[int, int] | None:
    """A version's major and minor numbers, None when it has none.

    As numbers: pyslurm numbers its release for Slurm 22.05 "22.5", so Slurm's `22.05.8`
    and pyslurm's `22.5.3` are the same release, and `24.1` is not `24.11`.
    """
    found = _MAJOR_MINOR.match(version)
    return (int(found[1]), int(found[2])) if found else None
