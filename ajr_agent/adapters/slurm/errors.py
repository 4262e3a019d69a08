"""How a Slurm request fails, and which of Slurm's answers mean "try again later"."""

from __future__ import annotations

import re
from typing import Sequence

from ajr_agent.domain.errors import AjrError


# scontrol's answers that mean "try again later" rather than "Slurm said no".
_TRANSIENT = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|Transport endpoint|"
    r"Resource temporarily unavailable|Zero Bytes were transmitted|Communication connection failure|"
    # What a controller that is restarting answers.
    r"Unexpected message received|Slurm backup controller in standby mode",
    re.IGNORECASE,
)


class SlurmError(AjrError):
    """A Slurm command failed. `transient` says whether trying again may help."""

    def __init__(self, command: Sequence[str], message: str, transient: bool) -> None:
        super().__init__(f"`{_shown(command)}` failed: {message}")
        self.command = list(command)
        self.reason = message
        self.transient = transient


class SlurmOutputError(SlurmError):
    """Slurm answered, but not in the form AJR asked for: nothing of that answer is used."""

    def __init__(self, command: Sequence[str], message: str) -> None:
        super().__init__(command, message, transient=False)


class CommandTooLong(SlurmError):
    """A command AJR was about to run is bigger than the kernel takes; it was not run."""

    def __init__(self, command: Sequence[str], message: str) -> None:
        super().__init__(command, message, transient=False)


def _shown(command: Sequence[str]) -> str:
    """The command as an error message shows it, long arguments cut so that the message stays readable."""
    return " ".join(arg if len(arg) <= 200 else f"{arg[:80]}...[{len(arg)} characters]" for arg in command)


def is_transient(answer: str) -> bool:
    """Slurm's answer says the controller could not be reached or is restarting, not that it refused."""
    return bool(_TRANSIENT.search(answer))
