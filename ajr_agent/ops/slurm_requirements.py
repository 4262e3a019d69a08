"""What AJR needs from Slurm's configuration, and who runs its epilog hook.

Only the admin edits slurm.conf and restarts slurmctld: the installer says which lines
are still missing, checked against slurm.conf as parse_slurm_conf reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ajr_agent.adapters.slurm_config import plugin_names, slurm_user

# Below this, finished jobs may leave slurmctld's memory before the agent has seen how
# they ended (AJR needs no slurmdbd, so it has no other way to learn it). Slurm's default.
MIN_JOB_AGE = 300


def slurm_conf_todo(conf: Mapping[str, str], hook: Path) -> tuple[list[str], bool]:
    """The slurm.conf lines still missing (as lines to add or change), and whether slurmctld must restart.

    `conf` comes from parse_slurm_conf (lower-case keys).
    """
    lines: list[str] = []
    restart = False
    epilog = conf.get("epilogslurmctld", "")
    if epilog != str(hook):
        restart = True
        if epilog:
            lines.append(f"EpilogSlurmctld is {epilog}: Slurm 22.05 runs only one, so call {hook} from it "
                         "(it returns at once and never fails)")  # fmt: skip
        else:
            lines.append(f"EpilogSlurmctld={hook}")
    plugins = plugin_names(conf.get("jobsubmitplugins"))
    if "lua" not in plugins:
        restart = True
        lines.append("JobSubmitPlugins=" + ",".join([*plugins, "lua"]))
    age = conf.get("minjobage", str(MIN_JOB_AGE))
    if not age.isdigit() or int(age) < MIN_JOB_AGE:
        lines.append(f"MinJobAge={MIN_JOB_AGE} (it is {age}: finished jobs would leave slurmctld's memory "
                     "before the agent sees how they ended)")  # fmt: skip
    return lines, restart


def epilog_user(live: Mapping[str, str] | None, conf: Mapping[str, str]) -> tuple[str, str]:
    """The SlurmUser that runs EpilogSlurmctld, and where it was read: the live config, slurm.conf, or root.

    `live` is `scontrol show config` (None when Slurm does not answer), `conf` slurm.conf.
    """
    running = slurm_user(live or {})
    if running:
        return running, "scontrol show config"
    if conf.get("slurmuser"):
        return conf["slurmuser"], "slurm.conf"
    return "root", "Slurm's default"
