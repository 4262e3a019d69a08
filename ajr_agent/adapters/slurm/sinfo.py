"""Reading the nodes' states from sinfo's text (pure): `NODE_STATES_COMMAND`'s lines to NodeStates.

Node names, addresses, states and times are Slurm's and the admin's; only the reason,
printed last, is free text: an admin's, or Slurm's own (`Not responding`). Users cannot
set it, but an admin's reason may hold a line break, so a line that does not read as a
record is the rest of the reason before it.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ajr_agent.adapters.slurm.squeue import parse_time
from ajr_agent.domain.node_states import NodeState

# sinfo's long state: the base state and its flags; `*` is "not responding" (sinfo.1, NODE STATE CODES).
_STATE = re.compile(r"([a-z_]+)([*~#!%$@^+-]*)")
_TIME = re.compile(r"Unknown|None|N/A|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}")


def parse_node_states(text: str) -> list[NodeState]:
    """The nodes of `sinfo -h -N -a -o "%N|%o|%T|%H|%E"`, each once (sinfo repeats a node per partition)."""
    states: dict[str, NodeState] = {}
    last: str | None = None
    for line in text.splitlines():
        fields = line.split("|", 4)
        found = _STATE.fullmatch(fields[2]) if len(fields) == 5 else None
        if found is None or not fields[0] or not _TIME.fullmatch(fields[3]):
            if last is not None:  # the rest of an admin's reason that held a line break
                states[last] = replace(states[last], reason=f"{states[last].reason}\n{line}")
            continue
        name, address, _, at, reason = fields
        last = None
        if name in states:
            continue
        states[name] = NodeState(name, found[1], responding="*" not in found[2],
                                 reason="" if reason == "none" else reason, reason_at=parse_time(at),
                                 address=address)  # fmt: skip
        last = name
    return list(states.values())
