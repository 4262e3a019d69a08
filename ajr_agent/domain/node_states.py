"""A node as Slurm reports it: its state, whether its slurmd answers, and the reason given (plain data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class NodeState:
    """One node at one moment, as `sinfo` shows it.

    The reason is Slurm's own (`Not responding`, `Kill task failed`, `Node unexpectedly
    rebooted`) or an admin's (`scontrol update NodeName=.. Reason=..`): users cannot set it.
    """

    name: str
    state: str  # Slurm's base state in lower case: idle, mixed, allocated, down, drained, draining, ...
    responding: bool = True  # False: slurmctld has not heard from the node's slurmd (sinfo's `*`)
    reason: str = ""
    reason_at: float | None = None  # when the reason was set
    address: str = ""  # NodeAddr: where slurmctld reaches the node, a name or an IP address

    @property
    def lost(self) -> bool:
        """Slurm has lost the node: DOWN, or its slurmd does not answer. Slurm ends or requeues the
        jobs running on a node it marks DOWN."""
        return self.state == "down" or not self.responding

    def describe(self) -> str:
        """`n3 down, not responding: Not responding (since 2026-12-03T07:12:08)`."""
        shown = self.state + ("" if self.responding else ", not responding")
        since = f" (since {datetime.fromtimestamp(self.reason_at).isoformat()})" if self.reason_at else ""
        return f"{self.name} {shown}" + (f": {self.reason}{since}" if self.reason else "")
