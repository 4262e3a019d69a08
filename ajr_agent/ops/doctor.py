"""`ajr doctor`: check a live installation, one PASS or FAIL line per item, each with its fix.

Each check is a small function returning a Check. Whatever touches Slurm comes in
through Probes, so the checks run on plain data in tests; the files they look at
(hooks, spool, state, rules) are ordinary paths.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ajr_agent.adapters.config_file import DEFAULT_CONFIG_PATH, config_path, load_settings
from ajr_agent.domain.settings import ConfigError, Settings
from ajr_agent.domain.errors import AjrError
from ajr_agent.adapters.slurm_config import DEFAULT_SLURM_CONF, listed, plugin_names, slurm_user
from ajr_agent.ops.check import Check
from ajr_agent.ops.failover_check import check_failover
from ajr_agent.ops.host import show_config
from ajr_agent.ops.shipped import EPILOG_MARKER, HOOK_PATH, JOB_SUBMIT_MARKER, shipped_file
from ajr_agent.ops.slurm_requirements import MIN_JOB_AGE
from ajr_agent.detect.rules import RuleFileError, RuleSet, default_rules_dir
from ajr_agent.adapters.slurm import SlurmGateway, open_gateway
from ajr_agent.adapters.slurm.controllers import ping_controllers
from ajr_agent.domain.control import ControllerPing
from ajr_agent.adapters.store import (
    DEFAULT_RESERVE_BYTES,
    Store,
    StoreCorruptError,
    StoreError,
    StoreSchemaError,
    quarantined_files,
)

SLURM_FIRST = "fix the slurm check first"


@dataclass(frozen=True)
class Probes:
    """The doctor's ways into the running system; tests give their own."""

    slurm_config: Callable[[], Mapping[str, str]]  # `scontrol show config`; raises AjrError when Slurm is away
    open_gateway: Callable[[Settings], SlurmGateway]
    luac: str | None  # Slurm's Lua compiler (5.1); None: job_submit.lua is not compile-checked
    now: Callable[[], float]
    # Under failover only: `scontrol ping`, and /proc/mounts' text.
    ping: Callable[[], Sequence[ControllerPing]] = lambda: ping_controllers(15.0)
    mounts: Callable[[], str] = lambda: Path("/proc/mounts").read_text()


def live_probes(timeout: float = 15.0) -> Probes:
    """The probes of this machine."""
    return Probes(lambda: show_config(timeout), open_gateway, shutil.which("luac5.1"), time.time)


def doctor_config(explicit: Path | None, prefix: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """The configuration to check: --config, else $AJR_CONFIG, else the one `ajr install --prefix` put in place."""
    if explicit is not None or prefix == Path("/"):
        return config_path(explicit, environ)
    return prefix / DEFAULT_CONFIG_PATH.relative_to("/")


def diagnose(config_file: Path, prefix: Path, probes: Probes, environ: Mapping[str, str] = os.environ) -> list[Check]:
    """Every check, in the order an admin fixes things: configuration, Slurm, hooks, files, the agent.

    `prefix` is where `ajr install` put AJR ("/" on a real host): the fixes name the hook there.
    """
    hook = prefix / HOOK_PATH.relative_to("/")
    try:
        # As the service reads it: the AJR_* variables of the admin's shell are not the service's.
        settings = load_settings(config_file, environ={}) if config_file.exists() else Settings()
    except ConfigError as exc:
        return [Check("config", False, str(exc), f"correct {config_file}; `ajr doctor` checks it again")]
    checks = [check_config(config_file, sorted(k for k in environ if k.startswith("AJR_")))]
    try:
        live: Mapping[str, str] | None = probes.slurm_config()
        slurm_error = ""
    except AjrError as exc:
        live, slurm_error = None, str(exc)
    checks += [
        check_slurm(live, slurm_error),
        check_backend(settings, probes.open_gateway),
        check_job_submit(live, probes.luac, environ),
        check_epilog(live, settings, hook),
        check_min_job_age(live),
        check_spool(settings, live),
        check_state(settings),
        check_database(settings),
        check_rules(settings),
    ]
    try:
        meta, store_error = read_meta(settings.state_db), ""
    except StoreError as exc:
        meta, store_error = None, str(exc)
    now = probes.now()
    checks += [check_agent(meta, settings, now, store_error), check_slurm_errors(meta, now)]
    checks += check_failover(settings, socket.gethostname().split(".")[0], probes.ping, probes.mounts)
    return checks


def format_checks(checks: list[Check]) -> list[str]:
    """The lines `ajr doctor` prints: one per check, the fix under each failure, a summary."""
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{'PASS' if check.ok else 'FAIL'}  {check.name:<{width}}  {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"      {'':<{width}}  fix: {check.fix}")
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks)} checks: " + (f"{failed} failed" if failed else "all passed"))
    return lines


def read_meta(state_db: Path) -> dict[str, object] | None:
    """What the agent recorded about itself; None when it has never run with this state database."""
    if not state_db.exists():
        return None  # opening it would create it
    # Read-only: the doctor migrates nothing and writes nothing; an older schema's meta reads the same.
    store = Store(state_db, readonly=True)
    try:
        return store.meta()
    finally:
        store.close()


# ---- the checks --------------------------------------------------------------------------------


def check_config(path: Path, shell_overrides: list[str]) -> Check:
    """The configuration loads (a broken one is reported by diagnose() instead)."""
    detail = str(path) if path.exists() else f"no file at {path}: every setting at its default"
    if shell_overrides:
        detail += f" ({', '.join(shell_overrides)} of this shell ignored: the service does not see them)"
    return Check("config", True, detail)


def check_slurm(live: Mapping[str, str] | None, error: str) -> Check:
    """slurmctld answers, and which Slurm it is."""
    if live is None:
        return Check("slurm", False, f"Slurm does not answer: {error}",
                     "start munged and slurmctld; `munge -n | unmunge` and `scontrol ping` must work, with the "
                     "SLURM_CONF the agent uses")  # fmt: skip
    return Check("slurm", True, f"Slurm {live.get('SLURM_VERSION', '?')} answers "
                 f"(SLURM_CONF {live.get('SLURM_CONF', '?')}, SlurmUser {live.get('SlurmUser', '?')})")  # fmt: skip


def check_backend(settings: Settings, opener: Callable[[Settings], SlurmGateway]) -> Check:
    """The backend the agent would use reads the queue."""
    try:
        gateway = opener(settings)
        started = time.monotonic()
        jobs = gateway.list_jobs()
    except AjrError as exc:
        return Check("backend", False, f"slurm_backend = {settings.slurm_backend.value}: {exc}",
                     "set slurm_backend = \"auto\" (the Slurm commands), or install the pyslurm built for this Slurm; "
                     "if the commands fail, fix the slurm check first")  # fmt: skip
    took = time.monotonic() - started
    return Check("backend", True, f"{gateway.backend}: the queue read in {took:.2f} s ({len(jobs)} jobs)")


def check_job_submit(live: Mapping[str, str] | None, luac: str | None, environ: Mapping[str, str]) -> Check:
    """JobSubmitPlugins has lua, and AJR's job_submit.lua lies next to slurm.conf and compiles."""
    if live is None:
        return Check("job_submit", False, "unknown: Slurm does not answer", SLURM_FIRST)
    conf = Path(live.get("SLURM_CONF") or environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF)
    script = conf.parent / "job_submit.lua"
    plugins = plugin_names(live.get("JobSubmitPlugins"))
    if "lua" not in plugins:
        return Check("job_submit", False,
                     f"JobSubmitPlugins is {','.join(plugins) or 'not set'}: specs are not checked at submission "
                     "and requeue-mode jobs are not made requeueable",
                     f"`ajr install` puts job_submit.lua in {conf.parent}; check it with `luac5.1 -p {script}`, add "
                     f"lua to JobSubmitPlugins in {conf}, then restart slurmctld")  # fmt: skip
    if not script.is_file():
        return Check("job_submit", False, f"JobSubmitPlugins has lua but {script} is missing: slurmctld will not "
                     "start again", f"run `ajr install` (it puts {script} in place)")  # fmt: skip
    text = script.read_text(errors="replace")
    if JOB_SUBMIT_MARKER not in text:
        return Check("job_submit", False, f"{script} is not AJR's: specs are not checked",
                     f"merge AJR's checks ({shipped_file('slurm_hooks/job_submit.lua')}) into it")  # fmt: skip
    if luac is None:
        compiled = "not compile-checked: luac5.1 is not installed"
    else:
        done = subprocess.run([luac, "-p", str(script)], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            return Check("job_submit", False, f"{script} does not compile: {done.stderr.strip()}",
                         "the next start of slurmctld would fail: run `ajr install` to put AJR's script back")  # fmt: skip
        compiled = f"compiles with {Path(luac).name} -p"
    if text != shipped_file("slurm_hooks/job_submit.lua").read_text():
        compiled += "; differs from the one shipped with this AJR (site-merged, or older: `ajr install` updates it)"
    return Check("job_submit", True, f"JobSubmitPlugins={','.join(plugins)}, {script} {compiled}")


def check_epilog(live: Mapping[str, str] | None, settings: Settings, hook: Path) -> Check:
    """EpilogSlurmctld runs AJR's hook, and the hook writes where the agent reads."""
    fix = f"add EpilogSlurmctld={hook} to slurm.conf (`ajr install` puts the hook there), then restart slurmctld"
    if live is None:
        return Check("epilog", False, "unknown: Slurm does not answer", SLURM_FIRST)
    value = live.get("EpilogSlurmctld", "")
    configured = listed(value)
    if not configured:
        return Check("epilog", False, "EpilogSlurmctld is not set: the agent sees job ends at its next poll only", fix)
    for path in map(Path, configured):
        text = _read(path)
        # A site's own epilog may call AJR's hook: follow it.
        if EPILOG_MARKER not in text and str(hook) in text:
            path, text = hook, _read(hook)
        if EPILOG_MARKER in text:
            break
    else:
        return Check("epilog", False, f"EpilogSlurmctld={value} is not AJR's hook and does not call {hook}",
                     f"call {hook} from {value}, or set EpilogSlurmctld={hook}; then restart slurmctld")  # fmt: skip
    if not os.access(path, os.X_OK):
        return Check("epilog", False, f"{path} is not executable: slurmctld cannot run it", f"chmod 755 {path}")
    spool = _spool_of(text)
    if spool != settings.spool_dir:
        return Check("epilog", False, f"{path} writes to {spool}, the agent reads {settings.spool_dir}",
                     "run `ajr install` again (it sets the hook's SPOOL= from spool_dir), then restart the agent")  # fmt: skip
    return Check("epilog", True, f"EpilogSlurmctld={value}, writing to {spool}")


def check_min_job_age(live: Mapping[str, str] | None) -> Check:
    """Finished jobs stay in slurmctld's memory long enough for the agent to see how they ended."""
    if live is None:
        return Check("min_job_age", False, "unknown: Slurm does not answer", SLURM_FIRST)
    raw = live.get("MinJobAge", "")
    seconds = int(raw.split()[0]) if raw.split() and raw.split()[0].isdigit() else None
    if seconds is None or seconds < MIN_JOB_AGE:
        return Check("min_job_age", False, f"MinJobAge is {raw or 'unknown'}: a finished job may be gone before the "
                     "agent sees how it ended", f"set MinJobAge={MIN_JOB_AGE} (or more) in slurm.conf, then "
                     "`scontrol reconfigure`")  # fmt: skip
    return Check("min_job_age", True, f"MinJobAge {seconds} s (at least {MIN_JOB_AGE})")


def check_spool(settings: Settings, live: Mapping[str, str] | None) -> Check:
    """The spool exists, the agent can empty it and the SlurmUser (who runs the hook) can write it."""
    spool = settings.spool_dir
    user = slurm_user(live or {}) or "root"
    fix = f"run `ajr install` (it makes {spool} with owner {user}, mode 0770)"
    if not spool.is_dir():
        return Check("spool", False, f"{spool} is missing: the hook's job-end records are lost", fix)
    if not os.access(spool, os.W_OK | os.X_OK):
        return Check("spool", False, f"{spool} is not writable by uid {os.geteuid()}, as the agent needs", fix)
    if not writable_by(spool, user):
        stat = spool.stat()
        return Check("spool", False, f"SlurmUser {user} cannot write {spool} (owner uid {stat.st_uid}, mode "
                     f"{stat.st_mode & 0o7777:04o}): the hook's job-end records are lost",
                     f"chown {user}:root {spool} && chmod 0770 {spool}")  # fmt: skip
    return Check("spool", True, f"{spool} writable by the agent and by SlurmUser {user}")


def writable_by(path: Path, user: str) -> bool:
    """Whether `user` may create files in the directory `path`, by its owner, group and mode."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return False
    if account.pw_uid == 0:
        return True
    stat = path.stat()
    if stat.st_uid == account.pw_uid:
        return stat.st_mode & 0o300 == 0o300
    if stat.st_gid in os.getgrouplist(user, account.pw_gid):
        return stat.st_mode & 0o030 == 0o030
    return stat.st_mode & 0o003 == 0o003


def check_state(settings: Settings) -> Check:
    """The state database's directory (and the database, once there) is writable."""
    directory = settings.state_db.parent
    fix = f"run `ajr install` (it makes {directory}), or point state_db at a writable directory"
    if not directory.is_dir():
        return Check("state", False, f"{directory} is missing", fix)
    for path in (directory, settings.state_db):
        if path.exists() and not os.access(path, os.W_OK):
            return Check("state", False, f"{path} is not writable by uid {os.geteuid()}", fix)
    return Check("state", True, f"{settings.state_db} writable")


def check_database(settings: Settings) -> Check:
    """The state database is sound and at this AJR's schema; one the agent moved aside is reported."""
    db = settings.state_db
    moved = quarantined_files(db)
    if moved:
        others = f" ({len(moved) - 1} older such files beside it)" if len(moved) > 1 else ""
        return Check("database", False, f"the agent found it corrupt and moved it aside to {moved[-1]}{others}, and "
                     "started a new one: what AJR knew of the jobs before is only in the moved file",
                     f"salvage what you need with `sqlite3 {moved[-1]} .recover`, then delete it (or move it out of "
                     f"{db.parent}) to clear this check")  # fmt: skip
    if not db.exists():
        return Check("database", True, f"no database at {db} yet: the agent makes it at its first start")
    try:
        store = Store(db, readonly=True)
        try:
            store.integrity()
            version, pending = store.schema_version, store.pending_migration
        finally:
            store.close()
    except StoreCorruptError as exc:
        return Check("database", False, str(exc), "restart the agent (systemctl restart ajr-agent): it moves the file "
                     "aside and starts a new one")  # fmt: skip
    except StoreSchemaError as exc:
        return Check("database", False, str(exc), "upgrade AJR to the release that wrote it, or point state_db at "
                     "another file")  # fmt: skip
    except StoreError as exc:
        return Check("database", False, str(exc), "fix the state check first; `ls -l` the file and its directory")
    if pending is not None:
        return Check("database", False, f"{db}: schema {pending[0]}, written by an older AJR; this AJR uses schema "
                     f"{pending[1]}: the agent migrates it at its next start, after a backup copy beside it "
                     f"({db.name}.bak-v{pending[0]}-<time>)",
                     "restart the agent (systemctl restart ajr-agent); its log says what it did")  # fmt: skip
    free = shutil.disk_usage(db.parent).free
    size = db.stat().st_size / 2**20
    detail = f"{db}: schema {version}, {size:.1f} MiB, {free / 2**20:.0f} MiB free on its file system"
    if free < DEFAULT_RESERVE_BYTES:
        return Check("database", False, detail + ": nearly full, the agent will soon stop recording",
                     f"free space on the file system of {db.parent} (`df -h {db.parent}`)")  # fmt: skip
    return Check("database", True, detail)


def check_rules(settings: Settings) -> Check:
    """The shipped and the site's rules load, as the agent would load them."""
    dirs = [default_rules_dir(), *settings.rules_dirs]
    try:
        rules = RuleSet.load(dirs)
    except RuleFileError as exc:
        return Check("rules", False, str(exc), "correct that file (`ajr rules check` shows the problem); a running "
                     "agent keeps its old rules until `systemctl reload ajr-agent` loads good ones")  # fmt: skip
    return Check("rules", True, f"{len(rules.rules)} rules from {', '.join(map(str, dirs))}")


def check_agent(meta: Mapping[str, object] | None, settings: Settings, now: float, store_error: str = "") -> Check:
    """The agent runs: it polled Slurm within three poll intervals (and 10 s of slack)."""
    fix = "systemctl enable --now ajr-agent; if it does not stay up, `journalctl -u ajr-agent` says why"
    if store_error:
        return Check("agent", False, store_error, "check the state check; " + fix)
    if meta is None:
        return Check("agent", False, f"no state database at {settings.state_db}: the agent has never run with "
                     "this configuration", fix)  # fmt: skip
    last = meta.get("last_poll_at")
    if not isinstance(last, (int, float)):
        return Check("agent", False, "the agent has never completed a poll", fix)
    age, limit = now - last, 3 * settings.poll_interval + 10
    if age > limit:
        return Check("agent", False, f"last poll {_age(age)} ago (more than {limit:g} s): the agent is stopped or "
                     "stuck", fix)  # fmt: skip
    mode = ", DRY RUN: it changes nothing in Slurm" if meta.get("dry_run") else ""
    return Check("agent", True, f"last poll {_age(age)} ago, backend {meta.get('backend', '?')}, "
                 f"{meta.get('managed_jobs', 0)} managed jobs{mode}")  # fmt: skip


def check_slurm_errors(meta: Mapping[str, object] | None, now: float) -> Check:
    """The agent's last failed poll, if any; a failure after the last good poll fails the check."""
    if not meta or not meta.get("last_poll_error"):
        return Check("slurm_errors", True, "the agent has met no Slurm error")
    at = meta.get("last_poll_error_at")
    last_ok = meta.get("last_poll_at")
    when = f"{_age(now - at)} ago" if isinstance(at, (int, float)) else "at an unknown time"
    text = f"{meta['last_poll_error']} ({when})"
    if isinstance(at, (int, float)) and isinstance(last_ok, (int, float)) and last_ok > at:
        return Check("slurm_errors", True, f"none since the last good poll; the last one: {text}")
    return Check("slurm_errors", False, f"the agent's last poll failed: {text}",
                 "fix the slurm check; the agent tries again at every poll")  # fmt: skip


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _spool_of(hook_text: str) -> Path | None:
    for line in hook_text.splitlines():
        if line.startswith("SPOOL="):
            words = shlex.split(line.removeprefix("SPOOL="))
            return Path(words[0]) if words else None
    return None


def _age(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
