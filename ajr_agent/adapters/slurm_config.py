"""Slurm's configuration as AJR reads it: the running controller's, and the files it starts from.

`scontrol show config` says what slurmctld runs with now; slurm.conf (with the files it
includes) says what it will run with at its next start, and is all there is when Slurm
does not answer. The two spell keys differently, so each has its own reader.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Mapping

SHOW_CONFIG_COMMAND = ("scontrol", "show", "config")
# Where Debian's Slurm reads slurm.conf when neither $SLURM_CONF nor the running controller says otherwise.
DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")
# Include lines deeper than this are not followed: slurm.conf files that include each other end.
MAX_INCLUDE_DEPTH = 5
# A key of a list setting printed one item a line: `EpilogSlurmctld[0]`.
_INDEXED_KEY = re.compile(r"([A-Za-z]+)\[[0-9]+\]")


def parse_show_config(text: str) -> dict[str, str]:
    """`scontrol show config` as a dict, by its keys as printed (`SlurmUser`, `SlurmctldHost[0]`).

    Settings are `Key = value` lines; the header, blank lines, section titles and the
    controllers' state are not. An `=` within a value (SchedulerParameters) stays in it.
    Later sections (MPI, cgroup) may repeat a key: the first, slurmctld's own, wins.
    A list Slurm prints one item a line (`EpilogSlurmctld[0]`, `[1]`...: 24.11 and later,
    where 22.05 printed `EpilogSlurmctld`) is also there under its plain key, comma-separated.
    """
    config: dict[str, str] = {}
    items: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        key = key.strip()
        if sep and key and " " not in key:
            if key not in config and (indexed := _INDEXED_KEY.fullmatch(key)):
                items.setdefault(indexed[1], []).append(value.strip())
            config.setdefault(key, value.strip())
    for key, values in items.items():
        config.setdefault(key, ",".join(values))
    return config


def slurm_user(config: Mapping[str, str]) -> str | None:
    """The SlurmUser of a `scontrol show config`, without the uid it prints (`slurm(64030)`); None when unset."""
    return config.get("SlurmUser", "").split("(")[0].strip() or None


def listed(value: str | None) -> list[str]:
    """A comma-separated setting as its items; Slurm prints an unset one as `(null)`."""
    return [item.strip() for item in (value or "").split(",") if item.strip() and item.strip() != "(null)"]


def plugin_names(value: str | None) -> list[str]:
    """JobSubmitPlugins as plain names: `job_submit/lua,pbs` -> ['lua', 'pbs']."""
    return [plugin.removeprefix("job_submit/") for plugin in listed(value)]


# slurm.conf keys that Slurm reads as a list, one item a line, rather than the last wins.
_LISTED_KEYS = frozenset({"slurmctldhost"})


def parse_slurm_conf(path: Path, root: Path = Path("/"), _depth: int = 0) -> dict[str, str]:
    """The `Key=value` settings of a slurm.conf and the files it includes, by lower-case key.

    Slurm reads keys case-insensitively and the last setting wins, except SlurmctldHost, which
    each line adds to (comma-separated here, as `scontrol show config`'s lists). Lines with several
    pairs (NodeName=... CPUs=...) count by their first key, which is all AJR asks about.
    Absolute Include paths lie under `root` (an `ajr install --prefix`); a file that
    cannot be read counts as empty, as it does when slurm.conf is not on this host.
    """
    values: dict[str, str] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return values
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        if word.lower() == "include":
            if _depth < MAX_INCLUDE_DEPTH:
                target = Path(rest.strip())
                # Relative includes are relative to slurm.conf's directory.
                pattern = str(root / target.relative_to("/")) if target.is_absolute() else str(path.parent / target)
                for included in sorted(glob.glob(pattern)):
                    values.update(parse_slurm_conf(Path(included), root, _depth + 1))
            continue
        key, sep, value = line.partition("=")
        if sep:
            key, value = key.strip().lower(), value.strip().split()[0] if value.strip() else ""
            if key in _LISTED_KEYS and values.get(key):
                value = f"{values[key]},{value}"  # each line adds one: the primary first
            values[key] = value
    return values
