"""Which agent acts when slurmctld runs on several hosts: the one beside the controller in control.

Slurm itself decides which slurmctld is in control: the first controller of slurm.conf's
`SlurmctldHost` list that answers (a backup takes over only when every controller before it
stops answering, and gives control back when the primary returns). An agent runs beside
each controller; only the one on the host of the controller in control acts, the others
stand by. A lease file beside the state database guards the switch: an agent takes over
only when the agent that acted before has let go or has been silent for a while, so two
agents never act at once even when they briefly disagree about what Slurm said.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Sequence


class Role(StrEnum):
    """What this agent does now."""

    ACTIVE = "active"  # reads the logs, decides, acts, writes the state database
    STANDBY = "standby"  # reads the queue, follows nothing, writes nothing


class FailoverMode(StrEnum):
    """Whether the agent follows slurmctld's own failover (the `failover` setting)."""

    OFF = "off"  # one agent, always active: the single-controller site
    SLURM = "slurm"  # act only beside the slurmctld that is in control


@dataclass(frozen=True)
class ControllerPing:
    """One `SlurmctldHost` entry and whether it answered a ping."""

    index: int  # 0 is the primary
    host: str
    up: bool


@dataclass(frozen=True)
class Lease:
    """The lease file as an agent read it: who acts, and a counter it raises at each renewal."""

    holder: str  # "<host>:<pid>"
    serial: int
    released: bool = False  # the holder let go on purpose: no need to wait for it to fall silent


@dataclass(frozen=True)
class Control:
    """This agent's role and why: `in_control` is the host of the controller in control ('' if none answers).

    `reason` reads after the role: "standby, primary is ctl2" (Slurm's word for the
    controller in control is not always "primary", but it is the one operators use).
    """

    role: Role
    in_control: str
    reason: str


class NotAController(ValueError):
    """The host this agent runs on is not one of slurm.conf's SlurmctldHost entries."""


def controller_in_control(pings: Sequence[ControllerPing]) -> ControllerPing | None:
    """Slurm's own rule: the first controller in slurm.conf's order that answers."""
    answering = sorted((p for p in pings if p.up), key=lambda p: p.index)
    return answering[0] if answering else None


def judge(me: str, pings: Sequence[ControllerPing], current: Role) -> Control:
    """The role Slurm's answer gives the agent on host `me`, before the lease is consulted.

    When no controller answers at all, the agent keeps its role: nobody can act through
    Slurm then, and handing the state database back and forth over an outage of slurmctld
    would only cost a reconciliation on each side.
    """
    hosts = [p.host for p in pings]
    if me not in hosts:
        raise NotAController(
            f"this host is {me!r}, but slurm.conf's SlurmctldHost entries are {', '.join(hosts) or 'none'}: run the "
            f"agent on a controller host, or set ha_host to this host's name as SlurmctldHost spells it"
        )
    chosen = controller_in_control(pings)
    if chosen is None:
        return Control(current, "", f"no slurmctld answers ({', '.join(hosts)}); staying {current.value}")
    if chosen.host == me:
        return Control(Role.ACTIVE, me, f"the slurmctld on this host ({me}) is in control")
    return Control(Role.STANDBY, chosen.host, f"primary is {chosen.host}")


@dataclass
class LeaseWatch:
    """How long the lease has looked the same to this agent, on its own monotonic clock.

    Hosts' clocks disagree; a lease is judged stale by watching its serial stand still for
    `lease_seconds` here, never by comparing a time written on another host.
    """

    lease_seconds: float
    last: Lease | None = None
    unchanged_since: float = 0.0

    def free_for(self, me: str, lease: Lease | None, now: float) -> bool:
        """Whether the agent `me` may take the lease now (`now` from time.monotonic())."""
        if lease != self.last:
            self.last, self.unchanged_since = lease, now
        if lease is None or lease.released or lease.holder == me:
            return True
        return now - self.unchanged_since >= self.lease_seconds
