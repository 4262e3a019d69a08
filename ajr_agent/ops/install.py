"""`ajr install`: put AJR's files in place on the slurmctld host, idempotently.

What it installs, each only when missing or different (a second run changes nothing):
the configuration (only when missing: an admin's file is never overwritten), the
site rules directory with an example, the two Slurm hooks (job_submit.lua next to
slurm.conf, ajr-epilog with its spool directory filled in), the state and spool
directories with the owners that must write them, and the systemd unit. What only
the admin may do (edit slurm.conf, restart slurmctld, start the service) it does
not do: it says what is left, checked against slurm.conf. On a cluster with a backup
controller it says what failover asks of this host and of the others.

`--prefix DIR` installs into DIR as if it were `/`: every path, both where files go
and the paths the installed files name, is under DIR. That is for tests and trials.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ajr_agent.adapters.config_file import DEFAULT_CONFIG_PATH, load_settings
from ajr_agent.adapters.slurm_config import DEFAULT_SLURM_CONF, listed, parse_slurm_conf
from ajr_agent.domain.control import FailoverMode
from ajr_agent.domain.settings import DEFAULT_SITE_RULES_DIR, Settings
from ajr_agent.ops.failover_check import HOST_LOCAL, MOVE_STATE_DB, storage_of
from ajr_agent.ops.files import Change, InstallError, Status, in_root, put_dir, put_file
from ajr_agent.ops.host import Host, probe_host
from ajr_agent.ops.shipped import (
    HOOK_PATH,
    JOB_SUBMIT_MARKER,
    RULES_EXAMPLE,
    RUNTIME_DIRECTORY,
    UNIT_PATH,
    render_epilog,
    render_unit,
    shipped_file,
)
from ajr_agent.ops.slurm_requirements import epilog_user, slurm_conf_todo

# probe_host: `ajr install` probes the host through this module, next to install().
__all__ = ["Report", "install", "probe_host", "service_steps"]


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


def install(prefix: Path, dry_run: bool, host: Host, environ: Mapping[str, str] = os.environ) -> Report:
    """Install AJR under `prefix` ("/" on a real host); change nothing when `dry_run`."""
    if host.agent is None:
        raise InstallError(f"ajr-agent is neither beside {sys.executable} nor on PATH: install the ajr "
                           "wheel into a venv and run that venv's `ajr install`")  # fmt: skip
    prefix = prefix.absolute()
    report = Report(prefix, dry_run)
    config_file = in_root(prefix, DEFAULT_CONFIG_PATH)
    # The slurm.conf the Slurm commands read: $SLURM_CONF, else the running controller's, else Debian's.
    live_conf = (host.slurm_config or {}).get("SLURM_CONF")
    slurm_conf = in_root(prefix, Path(environ.get("SLURM_CONF") or live_conf or DEFAULT_SLURM_CONF))

    job_submit = slurm_conf.parent / "job_submit.lua"
    script = shipped_file("slurm_hooks/job_submit.lua")
    _check_lua(script, host, report, job_submit)

    # Readable by root only: it may hold the cockpit's operator_token.
    shipped_config = shipped_file("packaging/etc/ajr.toml").read_text()
    report.changes.append(put_file(config_file, shipped_config, 0o640, dry_run, keep=_admins_config))
    # The agent reads this file without the installer's environment: so does the installer.
    settings = load_settings(config_file, environ={}) if config_file.exists() else Settings()
    spool = in_root(prefix, settings.spool_dir)
    state_dir = in_root(prefix, settings.state_db.parent)

    rules_dir = in_root(prefix, DEFAULT_SITE_RULES_DIR)
    report.changes.append(put_dir(rules_dir, 0, 0, 0o755, dry_run, enforce=False))
    report.changes.append(put_file(rules_dir / RULES_EXAMPLE,
                                   shipped_file(f"packaging/etc/rules.d/{RULES_EXAMPLE}").read_text(), 0o644, dry_run))  # fmt: skip

    conf = parse_slurm_conf(slurm_conf, prefix)
    user, source = epilog_user(host.slurm_config, conf)
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

    hook = in_root(prefix, HOOK_PATH)
    epilog = render_epilog(shipped_file("slurm_hooks/ajr-epilog").read_text(), spool)
    report.changes.append(put_file(hook, epilog, 0o755, dry_run))

    controllers = controller_hosts(host.slurm_config, conf)
    failover_steps(settings, controllers, state_dir, host, report)
    unit_file = in_root(prefix, UNIT_PATH)
    unit = render_unit(shipped_file("packaging/systemd/ajr-agent.service").read_text(), host.agent, config_file,
                       state_dir, spool, _status_dir(settings, prefix))  # fmt: skip
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


def controller_hosts(live: Mapping[str, str] | None, conf: Mapping[str, str]) -> list[str]:
    """The SlurmctldHost names, the primary first: the running controller's, else slurm.conf's."""
    items = listed((live or {}).get("SlurmctldHost")) or listed(conf.get("slurmctldhost"))
    return [item.split("(")[0] for item in items]


def failover_steps(settings: Settings, controllers: list[str], state_dir: Path, host: Host, report: Report) -> None:
    """What failover asks of this host and of the other controller hosts: notes and steps left."""
    if settings.failover is FailoverMode.OFF:
        if len(controllers) > 1:
            report.todo.append(f"slurm.conf names {len(controllers)} controllers ({', '.join(controllers)}): for "
                               f"an agent that follows slurmctld's failover, set failover = \"slurm\" and state_db "
                               f"on storage every controller host mounts in {DEFAULT_CONFIG_PATH}, then run "
                               "`ajr install` again (README, Failover)")  # fmt: skip
        return
    if len(controllers) < 2:
        named = f"one SlurmctldHost ({controllers[0]})" if controllers else "no SlurmctldHost"
        report.todo.append(f"failover is on but slurm.conf names {named}: add the backup's SlurmctldHost, "
                           f'or set failover = "off"')  # fmt: skip
        return
    me = settings.ha_host or host.name
    kind, local = storage_of(state_dir, host.mounts)
    report.notes.append(f"failover: this host is {me}, one of {', '.join(controllers)}; the state database lies "
                        f"on {kind or 'a file system not known'}")  # fmt: skip
    if me not in controllers:
        report.todo.append(f"this host ({me}) is not a SlurmctldHost of slurm.conf ({', '.join(controllers)}): "
                           "set ha_host in ajr.toml to its name there")  # fmt: skip
    if local:
        report.todo.append(f"{MOVE_STATE_DB}: {state_dir} is on {kind}, {HOST_LOCAL}")
    others = [name for name in controllers if name != me]
    report.todo.append(f"install on {', '.join(others)} too: the same {DEFAULT_CONFIG_PATH}, then `ajr install` "
                       "there; once every agent runs, `ajr doctor` on each controller host (it checks that they "
                       "share the state database and see the same controllers)")  # fmt: skip


def _status_dir(settings: Settings, prefix: Path) -> list[Path]:
    """The failover status file's directory, where the unit's RuntimeDirectory (/run/ajr) does not cover it."""
    if settings.failover is FailoverMode.OFF or settings.ha_status_file.parent == RUNTIME_DIRECTORY:
        return []
    return [in_root(prefix, settings.ha_status_file.parent)]


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
    start = f"{host.agent} --config {in_root(prefix, DEFAULT_CONFIG_PATH)}"
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
