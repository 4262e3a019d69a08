"""Slurm's controllers and which of them answer: `scontrol ping`, one line per SlurmctldHost entry."""

from __future__ import annotations

import re
import subprocess

from ajr_agent.adapters.slurm.errors import SlurmError, SlurmOutputError
from ajr_agent.adapters.slurm.squeue import slurm_text
from ajr_agent.domain.control import ControllerPing

PING_COMMAND = ("scontrol", "ping")
# `Slurmctld(primary) at ctl1 is UP`, `Slurmctld(backup) at ctl2 is DOWN`, `Slurmctld(backup2) ...`:
# the same words from 22.05 to 26.05 (scontrol.c, _print_ping).
_PING_LINE = re.compile(r"Slurmctld\((primary|backup)(\d*)\) at (\S+) is (UP|DOWN)")


def parse_ping(text: str) -> list[ControllerPing]:
    """The controllers `scontrol ping` printed, in slurm.conf's order; its banner lines are skipped."""
    pings = []
    for line in text.splitlines():
        found = _PING_LINE.fullmatch(line.strip())
        if found is None:
            continue
        mode, number, host, state = found.groups()
        index = 0 if mode == "primary" else int(number or 1)
        pings.append(ControllerPing(index, host, state == "UP"))
    return pings


def ping_controllers(timeout: float) -> list[ControllerPing]:
    """Ping every SlurmctldHost; SlurmError when scontrol cannot run or prints no controller.

    scontrol exits 1 as soon as one controller is down, which is an answer here, not a failure.
    """
    command = list(PING_COMMAND)
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(command, f"no answer within {timeout:g} s", transient=True) from exc
    except OSError as exc:
        raise SlurmError(command, f"cannot run scontrol: {exc}", transient=False) from exc
    pings = parse_ping(slurm_text(done.stdout))
    if not pings:
        message = slurm_text(done.stderr or done.stdout).strip()[:300] or f"exit code {done.returncode}"
        raise SlurmOutputError(command, f"no `Slurmctld(...) at HOST is UP|DOWN` line: {message}")
    return pings
