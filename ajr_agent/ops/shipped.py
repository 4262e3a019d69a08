"""The files AJR ships for a host, where they go, and how the installer fills them in.

The Slurm hooks, the systemd unit, the configuration and the rules example come from
the source checkout or the installed package's share/ajr; the hook's spool and the
unit's paths are filled in at installation. The markers tell AJR's hooks from a
site's own, for `ajr install` and `ajr doctor` alike.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

import ajr_agent
from ajr_agent.ops.files import InstallError

HOOK_PATH = Path("/usr/local/lib/ajr/ajr-epilog")
UNIT_PATH = Path("/etc/systemd/system/ajr-agent.service")
RULES_EXAMPLE = "50-site.toml.example"
# Words from the head of AJR's own hooks: a job_submit.lua without them is the site's and is
# left alone; `ajr doctor` recognises the epilog hook by them.
JOB_SUBMIT_MARKER = "AJR job_submit.lua"
EPILOG_MARKER = "AJR's EpilogSlurmctld hook"
# The unit's RuntimeDirectory=ajr: writable by the agent under ProtectSystem=strict.
RUNTIME_DIRECTORY = Path("/run/ajr")
UNIT_PLACEHOLDERS = ("@AJR_AGENT@", "@AJR_CONFIG@", "@AJR_STATE_DIR@", "@AJR_SPOOL_DIR@")
_SPOOL_LINE = re.compile(r"^SPOOL=.*$", re.MULTILINE)


def shipped_file(relative: str) -> Path:
    """A file shipped with AJR: from the source checkout, else from the installed package's share/ajr.

    Like rules.default_rules_dir(): a wheel installs these files under
    `<sys.prefix>/share/ajr/` (setup.cfg's data_files). The file itself is looked for,
    not its directory: site-packages has a `packaging/` of its own (the library).
    """
    beside_package = Path(ajr_agent.__file__).resolve().parent.parent / relative
    if beside_package.is_file():
        return beside_package
    installed = Path(sys.prefix) / "share" / "ajr" / relative
    if installed.is_file():
        return installed
    raise InstallError(
        f"{relative} is not shipped with this AJR (looked at {beside_package} and {installed}): "
        "reinstall the ajr wheel (pip install --force-reinstall ajr-<version>-py3-none-any.whl)"
    )


def render_epilog(template: str, spool: Path) -> str:
    """The epilog hook with its SPOOL= line naming `spool`."""
    if len(_SPOOL_LINE.findall(template)) != 1:
        raise InstallError("the shipped ajr-epilog has no single SPOOL= line: reinstall the ajr package")
    return _SPOOL_LINE.sub(lambda _: f"SPOOL={shlex.quote(str(spool))}", template)


def render_unit(template: str, agent: Path, config: Path, state_dir: Path, spool: Path,
                also_writable: Sequence[Path] = ()) -> str:  # fmt: skip
    """The systemd unit with the installed paths filled in; `also_writable` joins the state
    directory and the spool in ReadWritePaths."""
    values = dict(zip(UNIT_PLACEHOLDERS, (agent, config, state_dir, spool)))
    for what, path in [*((p.strip("@"), path) for p, path in values.items()),
                       *(("ReadWritePaths", path) for path in also_writable)]:  # fmt: skip
        if re.search(r"\s", str(path)):
            raise InstallError(f"{path} contains white space, which the systemd unit cannot hold unquoted "
                               f"(for {what}): choose a path without it")  # fmt: skip
    values["@AJR_SPOOL_DIR@"] = " ".join(map(str, (spool, *also_writable)))
    for placeholder, path in values.items():
        if placeholder not in template:
            raise InstallError(f"the shipped ajr-agent.service lacks {placeholder}: reinstall the ajr package")
        template = template.replace(placeholder, str(path))
    return template
