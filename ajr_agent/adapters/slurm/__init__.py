"""The gateway to Slurm: read every job in one light call, and act on one job.

`gateway` says what AJR needs from Slurm and picks a backend; `commands` runs Slurm's
commands, whose queue output `squeue` parses; `pyslurm_backend` goes through pyslurm;
`memory` is a Slurm held in memory, for tests and replays, which records requests as
`calls` (import both from there). The names below are the ones the rest of AJR uses.
"""

from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError
from ajr_agent.adapters.slurm.gateway import SlurmGateway, open_gateway
from ajr_agent.adapters.slurm.squeue import SQUEUE_COMMAND, SQUEUE_FIELDS, new_token, parse_squeue, squeue_format

__all__ = [
    "SQUEUE_COMMAND",
    "SQUEUE_FIELDS",
    "CommandGateway",
    "SlurmError",
    "SlurmGateway",
    "new_token",
    "open_gateway",
    "parse_squeue",
    "squeue_format",
]
