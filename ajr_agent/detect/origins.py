"""Which node a job log line comes from, and which node it names as the far end (pure).

A multi-node job's log mixes the lines of every rank. Launchers and libraries say where a
line comes from in its prefix, and which peer failed in its text; these are read here,
learnt from how Slurm, PyTorch, NCCL and UCX print them:

- srun `--label`: `5: ...`, the Slurm task id, padded with spaces to the widest id;
- PyTorch: `[rank5]:` (torch.distributed's own prefix) and torchrun's `[5]:` with
  `${rank}` in its log prefix template; its default `[default5]:` is a *local* rank and
  says nothing of the node; `[Rank 5]` / `[PG 1 Rank 5]` in ProcessGroupNCCL's messages;
- the host itself: NCCL's `n3:1234:5678 [1] NCCL WARN ...` (host:pid:tid [device]), UCX's
  `[n3:1234:0:1234] ...`, `mlx5: n3: ...`, pdsh's `n3: ...`, `host n3: ...`, slurmstepd's
  `slurmstepd-n3: ...`;
- peers: srun's `Node failure on n3`, c10d's `SocketImpl(..., remote=[n3]:29500)` and
  `failed to connect to [n3]:29500`, NCCL's `Connection closed by remote peer n3<port>`,
  `Got completion from peer 10.0.0.3<port>` and `Call to recv from 10.0.0.3<port> failed`,
  Gloo's `Connection closed by peer [n3]:port`.

A rank becomes a node through the job's layout: Slurm's block distribution of its tasks
(NumTasks) over its nodes in Slurm's order, the default, when the tasks divide evenly;
or through a line of the same log that shows a rank and a host together. A PyTorch rank
counts as a Slurm task only when the job runs several tasks per node (srun starting every
rank): with one task per node, torchrun numbers the ranks itself. When none of this
places a line, it comes from no known node: nothing is guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

_LABEL = re.compile(r" *([0-9]{1,7}): ")
# `[rank5]:`, torchrun's `[5]:` (global ranks); `[default5]:`, `[trainer5]:` (local ranks, skipped).
_BRACKET = re.compile(r"\[([A-Za-z_]*?)([0-9]{1,7})\]: ?")
_HOST = re.compile(r"(?:host |mlx5: |slurmstepd-)?([A-Za-z0-9][\w.-]*?): ")
_NCCL = re.compile(r"([A-Za-z0-9][\w.-]*?):[0-9]+:[0-9]+ \[[0-9]+\] ")
_UCX = re.compile(r"\[([A-Za-z0-9][\w.-]*?):[0-9]+:[0-9]+(?::[0-9]+)?\] ")
_PG_RANK = re.compile(r"\[(?:PG [^\]]{0,80}?)?Rank ([0-9]{1,7})\]")
_PEERS = tuple(re.compile(pattern) for pattern in (
    r"\bNode failure on ([\w.-]+)",
    r"\bremote=\[?([\w.:%-]+?)\]?:[0-9]+\)",
    r"\bconnect to \[?([\w.:%-]+?)\]?:[0-9]+",
    r"\bpeer \[?([\w.:%-]+?)\]?(?:<[0-9]+>|:[0-9]+\b)",
    r"\bfrom ([\w.:%-]+?)<[0-9]+> failed",
))  # fmt: skip


@dataclass(frozen=True)
class Prefix:
    """What a line's prefix says of where it comes from; None where it says nothing."""

    task: int | None = None  # srun's label: the Slurm task id
    rank: int | None = None  # a PyTorch global rank
    host: str | None = None  # a host name, as printed (not yet known to be a node of the job)


def read_prefix(line: str) -> Prefix:
    """The task, rank and host a line's prefixes name (they may stack: `5: [rank5]: n3:1:2 [0] ...`)."""
    task = rank = host = None
    rest = line
    for _ in range(6):
        if task is None and (found := _LABEL.match(rest)):
            task = int(found[1])
        elif found := _BRACKET.match(rest):
            if found[1] in ("rank", "") and rank is None:
                rank = int(found[2])
        elif host is None and (found := _NCCL.match(rest) or _UCX.match(rest) or _HOST.match(rest)):
            host = found[1]
        else:
            break
        rest = rest[found.end():]
    if rank is None and (found := _PG_RANK.search(line)):
        rank = int(found[1])
    return Prefix(task, rank, host)


def named_peers(line: str) -> list[str]:
    """The hosts (names or addresses, as printed) a line names as the far end of what failed."""
    return [found[1] for pattern in _PEERS for found in pattern.finditer(line)]


@dataclass(frozen=True)
class Layout:
    """Where a job's tasks ran: its nodes in Slurm's order, its task count (0: not known), the nodes'
    addresses (NodeAddr), and ranks placed by lines that showed a rank and a host together."""

    nodes: tuple[str, ...]
    tasks: int = 0
    addresses: Mapping[str, str] = field(default_factory=dict)
    tasks_seen: Mapping[int, str] = field(default_factory=dict)
    ranks_seen: Mapping[int, str] = field(default_factory=dict)

    def node(self, host: str) -> str | None:
        """The job's node a printed host is: its name, its short name (NCCL cuts at the first dot) or
        its address when no other node of the job has it."""
        host = host.removeprefix("::ffff:")  # an IPv4 address as an IPv6 socket prints it
        if host in self.nodes:
            return host
        short = host.split(".")[0]
        if short in self.nodes:
            return short
        having = [n for n in self.nodes if self.addresses.get(n) == host]
        return having[0] if len(having) == 1 else None

    def node_of_task(self, task: int) -> str | None:
        """The node of Slurm task `task` under the block distribution, when the tasks divide evenly."""
        if task in self.tasks_seen:
            return self.tasks_seen[task]
        count = len(self.nodes)
        if not count or self.tasks <= 0 or self.tasks % count or not 0 <= task < self.tasks:
            return None
        return self.nodes[task // (self.tasks // count)]

    def node_of_rank(self, rank: int) -> str | None:
        """The node of PyTorch rank `rank`: seen with a host, or a Slurm task when there are several per node."""
        if rank in self.ranks_seen:
            return self.ranks_seen[rank]
        return self.node_of_task(rank) if self.tasks > len(self.nodes) else None

    def origin(self, line: str) -> str | None:
        """The job's node that printed the line, when its prefix says."""
        prefix = read_prefix(line)
        if prefix.host is not None and (node := self.node(prefix.host)) is not None:
            return node
        if prefix.task is not None:
            return self.node_of_task(prefix.task)
        return self.node_of_rank(prefix.rank) if prefix.rank is not None else None

    def peers(self, line: str) -> set[str]:
        """The job's nodes the line names as the far end, the node that printed it left out."""
        named = {node for host in named_peers(line) if (node := self.node(host)) is not None}
        return named - {self.origin(line)}

    def learn(self, lines: Iterable[str]) -> "Layout":
        """The layout with the ranks and tasks placed by lines that name a host of the job beside them.

        A rank seen on two different nodes is placed by neither: the log contradicts itself.
        """
        tasks: dict[int, set[str]] = {}
        ranks: dict[int, set[str]] = {}
        for line in lines:
            prefix = read_prefix(line)
            node = self.node(prefix.host) if prefix.host is not None else None
            if node is None:
                continue
            if prefix.task is not None:
                tasks.setdefault(prefix.task, set()).add(node)
            if prefix.rank is not None:
                ranks.setdefault(prefix.rank, set()).add(node)
        return Layout(self.nodes, self.tasks, self.addresses, _placed_once(tasks), _placed_once(ranks))


def _placed_once(seen: Mapping[int, set[str]]) -> dict[int, str]:
    return {number: next(iter(nodes)) for number, nodes in seen.items() if len(nodes) == 1}
