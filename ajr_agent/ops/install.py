"""`ajr install`: put AJR's files in place on the slurmctld host, idempotently.

What it installs, each only when missing or different (a second run changes nothing):
the configuration (only when missing: an admin's file is never overwritten), the
site rules directory with an example, the two Slurm hooks (job_submit.lua next to
slurm.conf, ajr-epilog with its spool directory filled in), the state and spool
directories with the owners that must write them, and the systemd unit. What only
the admin may do (edit slurm.conf, restart slurmctld, start the service) it does
not do: it says what is left, checked against slurm.conf.

`--prefix DIR` installs into DIR as if it were `/`: every path, both where files go
and the paths the installed files name, is under DIR. That is for tests and trials.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Callable, Mapping, Sequence

import ajr_agent

from ajr_agent.adapters.config_file import DEFAULT_CONFIG_PATH, load_settings
from ajr_agent.domain.settings import DEFAULT_SITE_RULES_DIR, Settings
from ajr_agent.domain.errors import AjrError
from ajr_agent.adapters.slurm import CommandGateway, SlurmError

HOOK_PATH = Path("/usr/local/lib/ajr/ajr-epilog")
UNIT_PATH = Path("/etc/systemd/system/ajr-agent.service")
DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")
RULES_EXAMPLE = "50-site.toml.example"
# Below this, finished jobs may leave slurmctld's memory before the agent has seen how
# they ended (AJR needs no slurmdbd, so it has no other way to learn it). Slurm's default.
MIN_JOB_AGE = 300
# Words from the head of AJR's own hooks: a job_submit.lua without them is the site's and is
# left alone; `ajr doctor` recognises the epilog hook by them.
JOB_SUBMIT_MARKER = "AJR job_submit.lua"
EPILOG_MARKER = "AJR's EpilogSlurmctld hook"
UNIT_PLACEHOLDERS = ("@AJR_AGENT@", "@AJR_CONFIG@", "@AJR_STATE_DIR@", "@AJR_SPOOL_DIR@")
_SPOOL_LINE = re.compile(r"^SPOOL=.*$", re.MULTILINE)


class InstallError(AjrError):
    """The installation cannot go on; the message says what to fix first."""


class Status(StrEnum):
    """What the installer did to one path."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    KEPT = "kept"  # differs from what AJR ships, but belongs to the admin: left alone


@dataclass(frozen=True)
class Change:
    """One installed path and what happened to it."""

    path: Path
    status: Status
    detail: str = ""
    directory: bool = False


@dataclass(frozen=True)
class Host:
    """What the installer needs to know about this machine; tests make their own."""

    slurm_config: Mapping[str, str] | None  # `scontrol show config`; None when Slurm does not answer
    agent: Path | None  # the ajr-agent the unit starts; None when this installation has none
    luac: str | None  # Slurm's Lua compiler (5.1), to check job_submit.lua before it is installed
    pid1: str  # the init system: systemctl is only of use when it is systemd
    run: Callable[[Sequence[str]], subprocess.CompletedProcess[str]]

    @property
    def systemd_running(self) -> bool:
        """systemd is the init system (on a container or a test machine it may not be)."""
        return self.pid1 == "systemd"


@dataclass
class Report:
    """What an installation changed, and what the admin still has to do."""

    prefix: Path
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # checks made, commands run, things worth knowing
    todo: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Anything was (or, in a dry run, would be) created or updated."""
        return any(c.status in (Status.CREATED, Status.UPDATED) for c in self.changes)

    def lines(self) -> list[str]:
        """The report as printed by `ajr install`."""
        verb = {Status.CREATED: "would create", Status.UPDATED: "would update"} if self.dry_run else {}
        head = f"ajr install{' --dry-run' if self.dry_run else ''} (prefix {self.prefix}):"
        out = [head]
        for change in self.changes:
            status = verb.get(change.status, change.status.value)
            detail = f"  ({change.detail})" if change.detail else ""
            out.append(f"  {status:<12} {change.path}{'/' if change.directory else ''}{detail}")
        if not self.changed:
            out.append("nothing changed: every file was already in place")
        out += [f"  {line}" for line in self.notes]
        if self.todo:
            out.append("still to do by hand:")
            for number, item in enumerate(self.todo, start=1):
                first, *rest = item.split("\n")
                out.append(f"  {number}. {first}")
                out += [f"       {line}" for line in rest]
        return out


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


def parse_show_config(text: str) -> dict[str, str]:
    """`scontrol show config` as a dict (`Key = value` lines; the first of a key wins)."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key.strip() and " " not in key.strip():
            config.setdefault(key.strip(), value.strip())
    return config


def show_config(timeout: float) -> dict[str, str]:
    """The running controller's configuration; SlurmError when it does not answer."""
    return parse_show_config(CommandGateway(timeout).run(["scontrol", "show", "config"]))


def parse_slurm_conf(path: Path, root: Path = Path("/"), _depth: int = 0) -> dict[str, str]:
    """The `Key=value` settings of a slurm.conf and the files it includes, by lower-case key.

    Slurm reads keys case-insensitively and the last setting wins. Lines with several
    pairs (NodeName=... CPUs=...) count by their first key, which is all AJR asks about.
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
        if word.lower() == "include" and _depth < 5:
            target = Path(rest.strip())
            # Relative includes are relative to slurm.conf's directory; absolute ones lie under the prefix.
            pattern = str(root / target.relative_to("/")) if target.is_absolute() else str(path.parent / target)
            for included in sorted(glob.glob(pattern)):
                values.update(parse_slurm_conf(Path(included), root, _depth + 1))
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip().split()[0] if value.strip() else ""
    return values


def plugin_names(value: str | None) -> list[str]:
    """JobSubmitPlugins as plain names: `job_submit/lua,pbs` -> ['lua', 'pbs']."""
    if not value or value == "(null)":
        return []
    return [p.strip().removeprefix("job_submit/") for p in value.split(",") if p.strip()]


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


# ---- probing the host ------------------------------------------------------------------------


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
    return Host(slurm_config=live, agent=find_agent(), luac=shutil.which("luac5.1"), pid1=pid1, run=_run)


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=False)


# ---- putting files in place ------------------------------------------------------------------


def _in_root(prefix: Path, path: Path) -> Path:
    if not path.is_absolute():
        raise InstallError(f"{path} is not an absolute path: a service has no working directory to resolve it "
                           "from; give the full path in the configuration")  # fmt: skip
    return prefix / path.relative_to("/")


def _write(path: Path, content: str, mode: int) -> None:
    """Replace a file atomically: slurmctld may read job_submit.lua at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def put_file(path: Path, content: str, mode: int, dry_run: bool,
             keep: Callable[[str], str | None] = lambda current: None) -> Change:  # fmt: skip
    """Create or update a file to `content` and `mode`.

    `keep` looks at an existing file that differs and says why it must stay as it is
    (the admin's configuration, a site's own job_submit.lua), or None to replace it.
    """
    if not path.exists():
        if not dry_run:
            _write(path, content, mode)
        return Change(path, Status.CREATED)
    try:
        current = path.read_text(errors="replace")
    except OSError as exc:
        raise InstallError(f"{path}: cannot be read ({exc.strerror}); fix or remove it, then run again") from exc
    current_mode = path.stat().st_mode & 0o7777
    if current == content and current_mode == mode:
        return Change(path, Status.UNCHANGED)
    reason = keep(current) if current != content else None
    if reason:
        return Change(path, Status.KEPT, reason)
    if not dry_run:
        if current == content:
            path.chmod(mode)
        else:
            _write(path, content, mode)
    return Change(path, Status.UPDATED, f"mode {mode:04o}" if current == content else "")


def put_dir(path: Path, uid: int, gid: int, mode: int, dry_run: bool, enforce: bool) -> Change:
    """Create a directory owned by uid:gid; with `enforce`, also fix an existing one's owner and mode.

    Parents are created as root with the usual 0755.
    """
    owner = f"owner {_user_name(uid)}:{_group_name(gid)}, mode {mode:04o}"
    if not path.exists():
        if not dry_run:
            path.mkdir(parents=True, exist_ok=True)
            _own(path, uid, gid, mode)
        return Change(path, Status.CREATED, owner, directory=True)
    if not path.is_dir():
        raise InstallError(f"{path} exists and is not a directory: move it away, then run again")
    stat = path.stat()
    if not enforce or (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (uid, gid, mode):
        return Change(path, Status.UNCHANGED, directory=True)
    if not dry_run:
        _own(path, uid, gid, mode)
    return Change(path, Status.UPDATED, owner, directory=True)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    try:
        os.chown(path, uid, gid)
    except PermissionError as exc:
        raise InstallError(f"cannot give {path} to {_user_name(uid)}: run `ajr install` as root") from exc
    path.chmod(mode)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def slurm_user(host: Host, conf: Mapping[str, str]) -> tuple[str, str]:
    """The SlurmUser that runs EpilogSlurmctld, and where it was read: the live config, slurm.conf, or root."""
    if host.slurm_config and host.slurm_config.get("SlurmUser"):
        return host.slurm_config["SlurmUser"].split("(")[0], "scontrol show config"
    if conf.get("slurmuser"):
        return conf["slurmuser"], "slurm.conf"
    return "root", "Slurm's default"


def render_epilog(template: str, spool: Path) -> str:
    """The epilog hook with its SPOOL= line naming `spool`."""
    if len(_SPOOL_LINE.findall(template)) != 1:
        raise InstallError("the shipped ajr-epilog has no single SPOOL= line: reinstall the ajr package")
    return _SPOOL_LINE.sub(lambda _: f"SPOOL={shlex.quote(str(spool))}", template)


def render_unit(template: str, agent: Path, config: Path, state_dir: Path, spool: Path) -> str:
    """The systemd unit with the installed paths filled in."""
    values = dict(zip(UNIT_PLACEHOLDERS, (agent, config, state_dir, spool)))
    for placeholder, path in values.items():
        if re.search(r"\s", str(path)):
            raise InstallError(f"{path} contains white space, which the systemd unit cannot hold unquoted "
                               f"(for {placeholder.strip('@')}): choose a path without it")  # fmt: skip
        if placeholder not in template:
            raise InstallError(f"the shipped ajr-agent.service lacks {placeholder}: reinstall the ajr package")
        template = template.replace(placeholder, str(path))
    return template


def install(prefix: Path, dry_run: bool, host: Host, environ: Mapping[str, str] = os.environ) -> Report:
    """Install AJR under `prefix` ("/" on a real host); change nothing when `dry_run`."""
    if host.agent is None:
        raise InstallError(f"ajr-agent is neither beside {sys.executable} nor on PATH: install the ajr "
                           "wheel into a venv and run that venv's `ajr install`")  # fmt: skip
    prefix = prefix.absolute()
    report = Report(prefix, dry_run)
    config_file = _in_root(prefix, DEFAULT_CONFIG_PATH)
    # The slurm.conf the Slurm commands read: $SLURM_CONF, else the running controller's, else Debian's.
    live_conf = (host.slurm_config or {}).get("SLURM_CONF")
    slurm_conf = _in_root(prefix, Path(environ.get("SLURM_CONF") or live_conf or DEFAULT_SLURM_CONF))

    job_submit = slurm_conf.parent / "job_submit.lua"
    script = shipped_file("slurm_hooks/job_submit.lua")
    _check_lua(script, host, report, job_submit)

    # Readable by root only: it may hold the cockpit's operator_token.
    shipped_config = shipped_file("packaging/etc/ajr.toml").read_text()
    report.changes.append(put_file(config_file, shipped_config, 0o640, dry_run, keep=_admins_config))
    # The agent reads this file without the installer's environment: so does the installer.
    settings = load_settings(config_file, environ={}) if config_file.exists() else Settings()
    spool = _in_root(prefix, settings.spool_dir)
    state_dir = _in_root(prefix, settings.state_db.parent)

    rules_dir = _in_root(prefix, DEFAULT_SITE_RULES_DIR)
    report.changes.append(put_dir(rules_dir, 0, 0, 0o755, dry_run, enforce=False))
    report.changes.append(put_file(rules_dir / RULES_EXAMPLE,
                                   shipped_file(f"packaging/etc/rules.d/{RULES_EXAMPLE}").read_text(), 0o644, dry_run))  # fmt: skip

    conf = parse_slurm_conf(slurm_conf, prefix)
    user, source = slurm_user(host, conf)
    try:
        account = pwd.getpwnam(user)
    except KeyError as exc:
        raise InstallError(f"SlurmUser {user} (from {source}) is not a user on this host: the epilog hook runs as "
                           "that user and must be able to write the spool; create the user or fix SlurmUser"
                           ) from exc  # fmt: skip
    report.changes.append(put_dir(state_dir, 0, 0, 0o755, dry_run, enforce=False))
    # The hook writes here as the SlurmUser; the agent (root, group root) reads and removes.
    report.changes.append(put_dir(spool, account.pw_uid, 0, 0o770, dry_run, enforce=True))
    report.notes.append(f"the epilog hook runs as SlurmUser {user} (from {source}): the spool is theirs")

    submit_change = put_file(job_submit, script.read_text(), 0o644, dry_run, keep=_sites_script)
    report.changes.append(submit_change)
    if submit_change.status is Status.KEPT:
        report.todo.append(f"{job_submit} is the site's own script: merge AJR's checks into it "
                           f"(AJR's slurm_job_submit and slurm_job_modify, in {script})")  # fmt: skip

    hook = _in_root(prefix, HOOK_PATH)
    epilog = render_epilog(shipped_file("slurm_hooks/ajr-epilog").read_text(), spool)
    report.changes.append(put_file(hook, epilog, 0o755, dry_run))

    unit_file = _in_root(prefix, UNIT_PATH)
    unit = render_unit(shipped_file("packaging/systemd/ajr-agent.service").read_text(), host.agent, config_file,
                       state_dir, spool)  # fmt: skip
    unit_change = put_file(unit_file, unit, 0o644, dry_run)
    report.changes.append(unit_change)

    missing, restart = slurm_conf_todo(conf, hook)
    if missing:
        where = f"{slurm_conf}" + ("" if slurm_conf.exists() else " (no such file: set SLURM_CONF to slurmctld's)")
        report.todo.append(f"add to {where}:\n" + "\n".join(f"  {line}" for line in missing))
    if conf.get("jobrequeue") == "0":
        report.notes.append("JobRequeue=0 in slurm.conf is fine: job_submit.lua makes requeue-mode jobs requeueable")
    if restart:
        report.todo.append("restart slurmctld (systemctl restart slurmctld): EpilogSlurmctld and JobSubmitPlugins "
                           "are read only at its start, `scontrol reconfigure` is not enough")  # fmt: skip
    service_steps(prefix, host, report, unit_file, changed=unit_change.status in (Status.CREATED, Status.UPDATED))
    report.todo.append("check the installation: ajr doctor" + ("" if prefix == Path("/") else f" --prefix {prefix}"))
    return report


def _admins_config(current: str) -> str:
    return "the admin's configuration: never overwritten"


def _sites_script(current: str) -> str | None:
    return None if JOB_SUBMIT_MARKER in current else "the site's own script: left as it is"


def _check_lua(script: Path, host: Host, report: Report, target: Path) -> None:
    # A job_submit.lua that does not load stops slurmctld at its next start: check before installing.
    if host.luac is None:
        report.todo.append(f"compile-check job_submit.lua with Slurm's Lua before slurmctld loads it: "
                           f"luac5.1 -p {target} (apt-get install lua5.1)")  # fmt: skip
        return
    done = host.run([host.luac, "-p", str(script)])
    if done.returncode != 0:
        raise InstallError(f"{script} does not compile under {host.luac}: {done.stderr.strip()}; "
                           "nothing was installed; reinstall the ajr package")  # fmt: skip
    report.notes.append(f"checked: job_submit.lua compiles with {Path(host.luac).name} -p")


def service_steps(prefix: Path, host: Host, report: Report, unit_file: Path, changed: bool) -> None:
    """Reload systemd for a changed unit (only where systemd runs), and say how to start the service."""
    start = f"{host.agent} --config {_in_root(prefix, DEFAULT_CONFIG_PATH)}"
    if prefix != Path("/"):
        report.todo.append(f"the unit is in {unit_file}, which systemd does not read; to try the agent: {start}")
        return
    if not host.systemd_running:
        report.todo.append(f"systemd is not running on this host (PID 1 is {host.pid1}): the unit waits in "
                           f"{unit_file}; until then start the agent with your init system: {start}")  # fmt: skip
        return
    if changed and not report.dry_run:
        done = host.run(["systemctl", "daemon-reload"])
        if done.returncode != 0:
            raise InstallError(f"systemctl daemon-reload failed: {done.stderr.strip()}")
        report.notes.append("ran: systemctl daemon-reload")
    enabled = host.run(["systemctl", "is-enabled", "ajr-agent"]).stdout.strip() == "enabled"
    active = host.run(["systemctl", "is-active", "ajr-agent"]).stdout.strip() == "active"
    if not (enabled and active):
        report.todo.append("enable and start the agent: systemctl enable --now ajr-agent")
    elif changed:
        report.todo.append("restart the agent for the new unit: systemctl restart ajr-agent")
