"""The in-memory Slurm's answers to the node ledger's requests: a reboot asked, an exclusion taken back.

A part of MemorySlurm (adapters.slurm.memory), kept apart to keep that module readable. As
slurmctld does, `scontrol reboot ASAP` drains the node, with the reason, until it has
rebooted; `finish_reboot` plays the reboot, after which nextstate=RESUME puts it back in service.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from ajr_agent.adapters.slurm.calls import Operation, SlurmAnswer, command_for
from ajr_agent.adapters.slurm.errors import SlurmError
from ajr_agent.domain.hostlist import compress_hostlist
from ajr_agent.domain.jobs import JobSnapshot


class NodeActions:
    """Reboots and taken-back exclusions, over MemorySlurm's own data."""

    # MemorySlurm's, which these methods read and change.
    down: set[str]
    drained: dict[str, str]
    excluded: dict[int, list[str]]
    _lock: threading.RLock
    _act: Callable[[Operation, int | str, dict[str, str]], None]
    _known: Callable[[Operation, int], JobSnapshot]
    _update: Callable[[Operation, int, dict[str, str]], None]
    _partition_members: Callable[[], set[str]]

    def reboot(self, node: str, reason: str) -> None:
        """Ask for a reboot once the node is idle: it shows drained with the reason until `finish_reboot`."""
        self._act(Operation.REBOOT, node, {"reason": reason})
        with self._lock:
            if node not in self._partition_members() | self.down:
                raise SlurmError(command_for(Operation.REBOOT, node), f"slurm_reboot error: {SlurmAnswer.INVALID_NODE}",
                                 transient=False)  # fmt: skip
            self.drained[node] = reason

    def finish_reboot(self, node: str) -> None:
        """The node has rebooted: back in service (nextstate=RESUME)."""
        with self._lock:
            self.drained.pop(node, None)

    def unexclude_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Take `nodes` out of the job's ExcNodeList, as the commands backend does; refused like any update."""
        self._act(Operation.UNEXCLUDE_NODES, job_id, {"nodes": ",".join(nodes)})
        with self._lock:
            self._known(Operation.UNEXCLUDE_NODES, job_id)
            have = self.excluded.get(job_id, [])
            kept = [node for node in have if node not in nodes]
            if kept != have:
                self._update(Operation.UNEXCLUDE_NODES, job_id, {"ExcNodeList": compress_hostlist(kept)})
