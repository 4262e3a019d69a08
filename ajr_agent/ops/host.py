"""What `ajr install` needs to know about the machine it runs on, and how it finds out.

Everything the installer learns from outside its prefix comes in a Host: the running
controller's configuration, the ajr-agent to start, Slurm's Lua compiler, the init
system and a way to run commands. Tests make their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ajr_agent.adapters.slurm import CommandGateway, SlurmError
from ajr_agent.adapters.slurm_config import SHOW_CONFIG_COMMAND, parse_show_config

COMMAND_TIMEOUT = 60.0  # seconds for luac and systemctl, which answer at once on a healthy host


@dataclass(frozen=True)
class Host:
    """What the installer needs to know about this machine."""

    slurm_config: Mapping[str, str] | None  # `scontrol show config`; None when Slurm does not answer
    agent: Path | None  # the ajr-agent the unit starts; None when this installation has none
    luac: str | None  # Slurm's Lua compiler (5.1), to check job_submit.lua before it is installed
    pid1: str  # the init system: systemctl is only of use when it is systemd
    run: Callable[[Sequence[str]], subprocess.CompletedProcess[str]]
    mounts: str = ""  # /proc/mounts: which storage the state database would lie on
    name: str = ""  # the short host name, as SlurmctldHost names a controller

    @property
    def systemd_running(self) -> bool:
        """systemd is the init system (on a container or a test machine it may not be)."""
        return self.pid1 == "systemd"


def show_config(timeout: float) -> dict[str, str]:
    """The running controller's configuration; SlurmError when it does not answer."""
    return parse_show_config(CommandGateway(timeout).run(list(SHOW_CONFIG_COMMAND)))


def find_agent() -> Path | None:
    """The ajr-agent of this installation: beside the running Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "ajr-agent"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("ajr-agent")
    return Path(found).absolute() if found else None


def probe_host(timeout: float = 15.0) -> Host:
    """This machine, as the installer needs to know it."""
    try:
        live: dict[str, str] | None = show_config(timeout)
    except SlurmError:
        live = None  # not on the controller yet, or Slurm is down: slurm.conf answers instead
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = "unknown"
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        mounts = ""
    return Host(slurm_config=live, agent=find_agent(), luac=shutil.which("luac5.1"), pid1=pid1, run=run_command,
                mounts=mounts, name=socket.gethostname().split(".")[0])  # fmt: skip


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command of the host, its output captured; a failure is the caller's to read, not an exception."""
    return subprocess.run(list(command), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
