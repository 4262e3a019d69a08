"""`ajr install` and the files it ships: the default configuration, the unit, the slurm.conf lines.

Installations go into a temporary prefix; the host (Slurm's answer, the init system,
the commands run) is plain data.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Sequence

import pytest
from click.testing import CliRunner

import ajr_agent
from ajr_agent.ops import install as installer
from ajr_agent.ops import shipped
from ajr_agent.surfaces.cli import main as cli
from ajr_agent.domain.settings import ConfigError, Settings
from ajr_agent.adapters.config_file import load_settings
from ajr_agent.adapters.slurm_config import parse_slurm_conf
from ajr_agent.ops.files import InstallError, Status
from ajr_agent.ops.host import Host, run_command
from ajr_agent.ops.install import install
from ajr_agent.ops.shipped import HOOK_PATH, UNIT_PATH, render_epilog, render_unit, shipped_file
from ajr_agent.ops.slurm_requirements import MIN_JOB_AGE, slurm_conf_todo
from ajr_agent.detect.rules import RuleSet, default_rules_dir

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = ROOT / "packaging" / "etc" / "ajr.toml"
UNIT = ROOT / "packaging" / "systemd" / "ajr-agent.service"
KEY_LINE = re.compile(r"^# (\w+) = (.*)$")
ME = pwd.getpwuid(os.geteuid()).pw_name


class Commands:
    """Records the commands the installer runs; each answers `answers[command[0:2]]` or success."""

    def __init__(self, answers: dict[tuple[str, ...], str] | None = None) -> None:
        self.ran: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.ran.append(list(command))
        return subprocess.CompletedProcess(list(command), 0, self.answers.get(tuple(command[:2]), ""), "")


def host(tmp_path: Path, slurm_user: str | None = ME, pid1: str = "init", luac: str | None = None,
         run: Commands | None = None) -> Host:  # fmt: skip
    agent = tmp_path / "venv" / "bin" / "ajr-agent"
    agent.parent.mkdir(parents=True, exist_ok=True)
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    config = None if slurm_user is None else {"SlurmUser": f"{slurm_user}(1)", "SLURM_VERSION": "22.05.8"}
    return Host(slurm_config=config, agent=agent, luac=luac, pid1=pid1, run=run or Commands())


@pytest.fixture(autouse=True)
def no_slurm_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    """slurm.conf is where Debian has it, whatever the environment of the test run says."""
    monkeypatch.delenv("SLURM_CONF", raising=False)


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    return tmp_path / "root"


def in_prefix(prefix: Path, path: str) -> Path:
    return prefix / path.lstrip("/")


# ---- the shipped configuration --------------------------------------------------------------


def commented_keys() -> dict[str, str]:
    keys = {}
    for line in CONFIG.read_text().splitlines():
        found = KEY_LINE.match(line)
        if found:
            keys[found.group(1)] = found.group(2)
    return keys


def test_every_setting_is_in_the_shipped_config_with_an_explanation() -> None:
    lines = CONFIG.read_text().splitlines()
    keys = commented_keys()
    missing, unknown = set(Settings.model_fields) - set(keys), set(keys) - set(Settings.model_fields)
    assert not missing and not unknown, f"packaging/etc/ajr.toml lacks {sorted(missing)}, has unknown {sorted(unknown)}"
    for number, line in enumerate(lines):
        if KEY_LINE.match(line):
            above = lines[number - 1]
            assert above.startswith("# ") and not KEY_LINE.match(above), f"no explanation above {line!r}"


def test_uncommenting_every_key_gives_the_defaults(tmp_path: Path) -> None:
    uncommented = tmp_path / "ajr.toml"
    uncommented.write_text("\n".join(line[2:] if KEY_LINE.match(line) else line
                                     for line in CONFIG.read_text().splitlines()))  # fmt: skip
    assert tomllib.loads(uncommented.read_text()).keys() == Settings.model_fields.keys()
    assert load_settings(uncommented, environ={}) == Settings()


def test_the_shipped_config_as_is_gives_the_defaults() -> None:
    assert tomllib.loads(CONFIG.read_text()) == {}
    assert load_settings(CONFIG, environ={}) == Settings()


def test_the_settings_a_reload_cannot_change_are_marked_restart() -> None:
    from ajr_agent.runtime.reload import RESTART_SETTINGS

    lines = CONFIG.read_text().splitlines()
    for number, line in enumerate(lines):
        found = KEY_LINE.match(line)
        if found and found.group(1) in RESTART_SETTINGS:
            explanation = " ".join(lines[max(0, number - 3):number])
            assert "(restart)" in explanation, f"{found.group(1)} is not marked (restart)"


def test_the_rules_example_loads_once_named_toml(tmp_path: Path) -> None:
    example = ROOT / "packaging" / "etc" / "rules.d" / shipped.RULES_EXAMPLE
    site = tmp_path / "rules.d"
    site.mkdir()
    shutil.copy(example, site / "50-site.toml")
    names = {rule.name for rule in RuleSet.load([default_rules_dir(), site]).rules}
    assert {"site_lustre_evicted", "site_checkpoint_done"} <= names
    # As shipped (.example) it is not read.
    shutil.copy(example, tmp_path / "rules.d" / shipped.RULES_EXAMPLE)
    (site / "50-site.toml").unlink()
    assert "site_lustre_evicted" not in {rule.name for rule in RuleSet.load([site]).rules}


# ---- the shipped unit and slurm.conf lines ----------------------------------------------------


def test_unit_has_its_placeholders_and_the_required_options() -> None:
    text = UNIT.read_text()
    for placeholder in shipped.UNIT_PLACEHOLDERS:
        assert placeholder in text
    for option in ("Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict",
                   "ReadWritePaths=@AJR_STATE_DIR@ @AJR_SPOOL_DIR@", "NoNewPrivileges=yes", "PrivateTmp=yes"):  # fmt: skip
        assert option in text.splitlines(), option
    # Job logs on shared storage are often under /home.
    assert not any(line.startswith("ProtectHome=") for line in text.splitlines())


def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: packaging/dev/setup-env.sh installs systemd")
    agent = host(tmp_path).agent
    assert agent is not None
    unit = tmp_path / "ajr-agent.service"
    unit.write_text(render_unit(UNIT.read_text(), agent, Path("/etc/ajr/ajr.toml"), Path("/var/lib/ajr"),
                                Path("/var/spool/ajr/epilog")))  # fmt: skip
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # Unknown or misspelt options are only warnings: any output is a failure.
    assert done.returncode == 0 and not done.stderr.strip() and "@AJR_" not in unit.read_text(), done.stderr


def test_unit_refuses_paths_with_white_space(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="white space"):
        render_unit(UNIT.read_text(), Path("/opt/my venv/bin/ajr-agent"), Path("/etc/ajr/ajr.toml"),
                    Path("/var/lib/ajr"), Path("/var/spool/ajr/epilog"))  # fmt: skip


def test_the_slurm_conf_snippet_holds_every_line_the_installer_asks_for() -> None:
    snippet = (ROOT / "packaging" / "slurm" / "slurm.conf.ajr").read_text().splitlines()
    missing, restart = slurm_conf_todo({}, HOOK_PATH)
    assert restart and missing == [f"EpilogSlurmctld={HOOK_PATH}", "JobSubmitPlugins=lua"]
    for line in [*missing, f"MinJobAge={MIN_JOB_AGE}"]:
        assert line in snippet


def test_hooks_carry_the_markers_that_tell_them_from_a_sites_own() -> None:
    assert shipped.JOB_SUBMIT_MARKER in shipped_file("slurm_hooks/job_submit.lua").read_text()
    assert shipped.EPILOG_MARKER in shipped_file("slurm_hooks/ajr-epilog").read_text()


# ---- finding the shipped files ---------------------------------------------------------------


def test_shipped_files_come_from_the_checkout_first() -> None:
    assert shipped_file("packaging/etc/ajr.toml") == CONFIG


def test_shipped_files_come_from_share_ajr_in_an_installed_package(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    site_packages = tmp_path / "lib" / "site-packages" / "ajr_agent"
    site_packages.mkdir(parents=True)
    # site-packages has a `packaging` directory of its own (the library): only the file counts.
    (tmp_path / "lib" / "site-packages" / "packaging" / "etc").mkdir(parents=True)
    shared = tmp_path / "share" / "ajr" / "packaging" / "etc" / "ajr.toml"
    shared.parent.mkdir(parents=True)
    shared.write_text("# shipped\n")
    monkeypatch.setattr(ajr_agent, "__file__", str(site_packages / "__init__.py"))
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    assert shipped_file("packaging/etc/ajr.toml") == shared
    with pytest.raises(InstallError, match="reinstall the ajr wheel"):
        shipped_file("slurm_hooks/ajr-epilog")


# ---- slurm.conf ------------------------------------------------------------------------------


def test_slurm_conf_lines_set_in_included_files_count(tmp_path: Path) -> None:
    # How slurm.conf and its includes are read: tests/unit/test_slurm_config.py.
    conf = tmp_path / "etc" / "slurm" / "slurm.conf"
    conf.parent.mkdir(parents=True)
    (conf.parent / "hooks.conf").write_text("jobsubmitplugins=job_submit/lua # AJR\n")
    conf.write_text("# EpilogSlurmctld=/commented/out\nSlurmUser=slurm\nMinJobAge=60\nInclude hooks.conf\n"
                    "Include /etc/slurm/abs.conf\nNodeName=n1 CPUs=4\n")  # fmt: skip
    (conf.parent / "abs.conf").write_text("EpilogSlurmctld=/usr/local/lib/ajr/ajr-epilog\n")
    missing, restart = slurm_conf_todo(parse_slurm_conf(conf, root=tmp_path), HOOK_PATH)
    assert not restart
    assert missing == ["MinJobAge=300 (it is 60: finished jobs would leave slurmctld's memory before the agent sees "
                       "how they ended)"]  # fmt: skip


def test_slurm_conf_lines_are_completed_not_replaced() -> None:
    missing, restart = slurm_conf_todo({"jobsubmitplugins": "pbs", "epilogslurmctld": "/site/epilog",
                                        "minjobage": "300"}, HOOK_PATH)  # fmt: skip
    assert restart
    assert missing[0].startswith(f"EpilogSlurmctld is /site/epilog: Slurm 22.05 runs only one, so call {HOOK_PATH}")
    assert missing[1] == "JobSubmitPlugins=pbs,lua"


# ---- installing --------------------------------------------------------------------------------


def statuses(report: installer.Report) -> dict[Path, Status]:
    return {change.path: change.status for change in report.changes}


def test_install_puts_everything_in_place_then_changes_nothing(tmp_path: Path, prefix: Path) -> None:
    first = install(prefix, False, host(tmp_path))
    assert set(statuses(first).values()) == {Status.CREATED}
    config = in_prefix(prefix, "/etc/ajr/ajr.toml")
    assert config.read_text() == CONFIG.read_text()
    assert (in_prefix(prefix, "/etc/ajr/rules.d") / shipped.RULES_EXAMPLE).is_file()
    assert in_prefix(prefix, "/etc/slurm/job_submit.lua").read_text() == shipped_file(
        "slurm_hooks/job_submit.lua").read_text()  # fmt: skip
    hook = in_prefix(prefix, str(HOOK_PATH))
    spool = in_prefix(prefix, "/var/spool/ajr/epilog")
    assert f"\nSPOOL={spool}\n" in hook.read_text() and hook.stat().st_mode & 0o777 == 0o755
    assert spool.is_dir() and spool.stat().st_mode & 0o7777 == 0o770 and spool.stat().st_uid == os.geteuid()
    assert in_prefix(prefix, "/var/lib/ajr").is_dir()
    unit = in_prefix(prefix, "/etc/systemd/system/ajr-agent.service").read_text()
    assert f"ExecStart={tmp_path / 'venv/bin/ajr-agent'} --config {config}\n" in unit
    assert f"ReadWritePaths={in_prefix(prefix, '/var/lib/ajr')} {spool}\n" in unit

    second = install(prefix, False, host(tmp_path))
    assert set(statuses(second).values()) == {Status.UNCHANGED}
    assert "nothing changed: every file was already in place" in second.lines()
    assert second.todo == first.todo


def test_dry_run_writes_nothing_and_says_what_it_would_do(tmp_path: Path, prefix: Path) -> None:
    report = install(prefix, True, host(tmp_path))
    assert not prefix.exists()
    assert any(line.startswith("  would create ") and line.endswith("ajr-agent.service") for line in report.lines())


def test_an_admins_config_is_kept_and_used(tmp_path: Path, prefix: Path) -> None:
    config = in_prefix(prefix, "/etc/ajr/ajr.toml")
    config.parent.mkdir(parents=True)
    config.write_text('spool_dir = "/shared/ajr/spool"\nstate_db = "/shared/ajr/state/ajr.db"\n')
    report = install(prefix, False, host(tmp_path))
    assert statuses(report)[config] is Status.KEPT
    assert config.read_text().startswith('spool_dir = "/shared/ajr/spool"')
    spool = in_prefix(prefix, "/shared/ajr/spool")
    assert spool.is_dir() and f"SPOOL={spool}\n" in in_prefix(prefix, str(HOOK_PATH)).read_text()
    unit = in_prefix(prefix, "/etc/systemd/system/ajr-agent.service").read_text()
    assert f"ReadWritePaths={in_prefix(prefix, '/shared/ajr/state')} {spool}\n" in unit


def test_a_broken_admin_config_stops_the_install_with_its_reason(tmp_path: Path, prefix: Path) -> None:
    config = in_prefix(prefix, "/etc/ajr/ajr.toml")
    config.parent.mkdir(parents=True)
    config.write_text("site_requeue_cap = -1\n")
    with pytest.raises(ConfigError, match="site_requeue_cap"):
        install(prefix, False, host(tmp_path))


def test_changed_hooks_are_updated(tmp_path: Path, prefix: Path) -> None:
    install(prefix, False, host(tmp_path))
    hook = in_prefix(prefix, str(HOOK_PATH))
    hook.write_text(hook.read_text().replace("SPOOL=", "SPOOL=/old"))
    hook.chmod(0o644)
    report = install(prefix, False, host(tmp_path))
    assert statuses(report)[hook] is Status.UPDATED and hook.stat().st_mode & 0o777 == 0o755
    assert "/old" not in hook.read_text()


def test_a_sites_own_job_submit_lua_is_kept(tmp_path: Path, prefix: Path) -> None:
    script = in_prefix(prefix, "/etc/slurm/job_submit.lua")
    script.parent.mkdir(parents=True)
    script.write_text("function slurm_job_submit() return 0 end\nfunction slurm_job_modify() return 0 end\n")
    report = install(prefix, False, host(tmp_path))
    assert statuses(report)[script] is Status.KEPT and script.read_text().startswith("function slurm_job_submit")
    assert any("the site's own script: merge AJR's checks into it" in item for item in report.todo)


def test_job_submit_lua_goes_next_to_slurm_conf(tmp_path: Path, prefix: Path) -> None:
    report = install(prefix, False, host(tmp_path), environ={"SLURM_CONF": "/etc/slurm-llnl/slurm.conf"})
    assert in_prefix(prefix, "/etc/slurm-llnl/job_submit.lua") in statuses(report)
    running = host(tmp_path)
    running.slurm_config["SLURM_CONF"] = "/opt/slurm/etc/slurm.conf"  # type: ignore[index]
    report = install(prefix, False, running, environ={})
    assert in_prefix(prefix, "/opt/slurm/etc/job_submit.lua") in statuses(report)


def test_slurm_conf_lines_already_present_are_not_asked_for(tmp_path: Path, prefix: Path) -> None:
    conf = in_prefix(prefix, "/etc/slurm/slurm.conf")
    conf.parent.mkdir(parents=True)
    conf.write_text(f"EpilogSlurmctld={in_prefix(prefix, str(HOOK_PATH))}\nJobSubmitPlugins=lua\nJobRequeue=0\n")
    report = install(prefix, False, host(tmp_path))
    assert not any(item.startswith(("add to", "restart slurmctld")) for item in report.todo), report.todo
    assert any("JobRequeue=0 in slurm.conf is fine" in note for note in report.notes)
    conf.write_text("JobSubmitPlugins=lua\n")
    report = install(prefix, False, host(tmp_path))
    assert f"add to {conf}:\n  EpilogSlurmctld={in_prefix(prefix, str(HOOK_PATH))}" in report.todo
    assert any(item.startswith("restart slurmctld") for item in report.todo)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the spool to another user needs root")
def test_the_spool_belongs_to_the_slurm_user_from_slurm_conf_when_slurm_is_away(tmp_path: Path, prefix: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    conf = in_prefix(prefix, "/etc/slurm/slurm.conf")
    conf.parent.mkdir(parents=True)
    conf.write_text("SlurmUser=nobody\n")
    report = install(prefix, False, host(tmp_path, slurm_user=None))
    spool = in_prefix(prefix, "/var/spool/ajr/epilog")
    assert (spool.stat().st_uid, spool.stat().st_gid) == (nobody.pw_uid, 0)
    assert "the epilog hook runs as SlurmUser nobody (from slurm.conf): the spool is theirs" in report.notes
    # An admin's chmod that locks the SlurmUser out is put right.
    spool.chmod(0o700)
    os.chown(spool, 0, 0)
    assert statuses(install(prefix, False, host(tmp_path, slurm_user=None)))[spool] is Status.UPDATED
    assert spool.stat().st_uid == nobody.pw_uid


def test_without_slurm_or_slurm_conf_the_slurm_user_is_root(tmp_path: Path, prefix: Path) -> None:
    report = install(prefix, True, host(tmp_path, slurm_user=None))
    assert "the epilog hook runs as SlurmUser root (from Slurm's default): the spool is theirs" in report.notes


def test_an_unknown_slurm_user_stops_the_install(tmp_path: Path, prefix: Path) -> None:
    with pytest.raises(InstallError, match="SlurmUser no-such-user .* is not a user on this host"):
        install(prefix, False, host(tmp_path, slurm_user="no-such-user"))


def test_without_an_ajr_agent_nothing_is_installed(tmp_path: Path, prefix: Path) -> None:
    bare = Host(slurm_config=None, agent=None, luac=None, pid1="init", run=Commands())
    with pytest.raises(InstallError, match="ajr-agent is neither beside"):
        install(prefix, False, bare)
    assert not prefix.exists()


def test_job_submit_lua_is_compile_checked_before_it_is_installed(tmp_path: Path, prefix: Path) -> None:
    luac = shutil.which("luac5.1")
    if luac is None:
        pytest.fail("luac5.1 is missing: packaging/dev/setup-env.sh installs lua5.1")
    report = install(prefix, False, host(tmp_path, luac=luac, run=run_command))
    assert "checked: job_submit.lua compiles with luac5.1 -p" in report.notes
    assert not any("luac5.1 -p" in item for item in report.todo)


def test_without_luac_the_admin_is_told_to_check(tmp_path: Path, prefix: Path) -> None:
    report = install(prefix, False, host(tmp_path))
    assert any(f"luac5.1 -p {in_prefix(prefix, '/etc/slurm/job_submit.lua')}" in item for item in report.todo)


def test_a_job_submit_lua_that_does_not_compile_stops_the_install(tmp_path: Path, prefix: Path) -> None:
    class Failing(Commands):
        def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess(list(command), 1, "", "luac5.1: job_submit.lua:3: '=' expected")

    with pytest.raises(InstallError, match="does not compile under /usr/bin/luac5.1: .*'=' expected"):
        install(prefix, False, host(tmp_path, luac="/usr/bin/luac5.1", run=Failing()))
    assert not in_prefix(prefix, "/etc/slurm/job_submit.lua").exists()


# ---- the service ---------------------------------------------------------------------------------


def test_under_systemd_a_changed_unit_is_reloaded_and_the_service_step_named(tmp_path: Path) -> None:
    run = Commands({("systemctl", "is-enabled"): "disabled\n", ("systemctl", "is-active"): "inactive\n"})
    report = installer.Report(Path("/"), dry_run=False)
    installer.service_steps(Path("/"), host(tmp_path, pid1="systemd", run=run), report, UNIT_PATH,
                            changed=True)  # fmt: skip
    assert ["systemctl", "daemon-reload"] in run.ran and "ran: systemctl daemon-reload" in report.notes
    assert report.todo == ["enable and start the agent: systemctl enable --now ajr-agent"]


def test_under_systemd_an_unchanged_unit_of_a_running_service_needs_nothing(tmp_path: Path) -> None:
    run = Commands({("systemctl", "is-enabled"): "enabled\n", ("systemctl", "is-active"): "active\n"})
    report = installer.Report(Path("/"), dry_run=False)
    installer.service_steps(Path("/"), host(tmp_path, pid1="systemd", run=run), report, UNIT_PATH,
                            changed=False)  # fmt: skip
    assert ["systemctl", "daemon-reload"] not in run.ran and report.todo == []


def test_without_systemd_nothing_is_run_and_the_admin_is_told(tmp_path: Path) -> None:
    run = Commands()
    report = installer.Report(Path("/"), dry_run=False)
    installer.service_steps(Path("/"), host(tmp_path, pid1="process_api", run=run), report,
                            UNIT_PATH, changed=True)  # fmt: skip
    assert run.ran == []
    assert report.todo[0].startswith("systemd is not running on this host (PID 1 is process_api)")


def test_the_epilog_spool_line_is_quoted() -> None:
    assert "\nSPOOL='/shared/my spool'\n" in render_epilog("#!/bin/sh\nSPOOL=/var/spool/ajr/epilog\n",
                                                            Path("/shared/my spool"))  # fmt: skip
    with pytest.raises(InstallError, match="no single SPOOL= line"):
        render_epilog("#!/bin/sh\n", Path("/x"))


# ---- the command -----------------------------------------------------------------------------------


def test_ajr_install_command(tmp_path: Path, prefix: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installer, "probe_host", lambda: host(tmp_path))
    first = CliRunner().invoke(cli, ["install", "--prefix", str(prefix)])
    assert first.exit_code == 0, first.output
    assert f"  created      {in_prefix(prefix, '/etc/ajr/ajr.toml')}" in first.output
    second = CliRunner().invoke(cli, ["install", "--prefix", str(prefix)])
    assert "nothing changed" in second.output and "created" not in second.output


def test_ajr_install_refuses_config(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["--config", str(tmp_path / "x.toml"), "install", "--dry-run"])
    assert done.exit_code == 2 and "--config does not apply" in done.output


def test_ajr_install_reports_errors_without_a_traceback(tmp_path: Path, prefix: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(installer, "probe_host", lambda: host(tmp_path, slurm_user="no-such-user"))
    done = CliRunner().invoke(cli, ["install", "--prefix", str(prefix)])
    assert done.exit_code == 1 and "Error: SlurmUser no-such-user" in done.output


def test_the_installed_files_are_modes_an_admin_expects(tmp_path: Path, prefix: Path) -> None:
    install(prefix, False, host(tmp_path))
    # The configuration may hold the cockpit's operator token.
    for path, mode in [("/etc/ajr/ajr.toml", 0o640), ("/etc/slurm/job_submit.lua", 0o644),
                       ("/etc/systemd/system/ajr-agent.service", 0o644), (str(HOOK_PATH), 0o755)]:  # fmt: skip
        assert stat.S_IMODE(in_prefix(prefix, path).stat().st_mode) == mode, path


# ---- a cluster with a backup controller (failover) ---------------------------------------------

TWO_CONTROLLERS = "ctl1(10.0.0.1),ctl2(10.0.0.2)"


def ha_host(tmp_path: Path, controllers: str = TWO_CONTROLLERS, mounts: str = "") -> Host:
    base = host(tmp_path)
    return Host(slurm_config={**(base.slurm_config or {}), "SlurmctldHost": controllers}, agent=base.agent,
                luac=None, pid1="init", run=Commands(), mounts=mounts, name="ctl1")  # fmt: skip


def admins_config(prefix: Path, text: str) -> None:
    config = in_prefix(prefix, "/etc/ajr/ajr.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def test_two_controllers_without_failover_ask_for_it(tmp_path: Path, prefix: Path) -> None:
    report = install(prefix, False, ha_host(tmp_path))
    [todo] = [item for item in report.todo if "failover" in item]
    assert "ctl1, ctl2" in todo and 'failover = "slurm"' in todo and "state_db" in todo


def test_one_controller_without_failover_says_nothing_of_it(tmp_path: Path, prefix: Path) -> None:
    report = install(prefix, False, ha_host(tmp_path, controllers="ctl1(10.0.0.1)"))
    assert not [item for item in report.todo + report.notes if "failover" in item]


def test_failover_on_shared_storage_names_the_other_controllers_to_install_on(tmp_path: Path, prefix: Path) -> None:
    admins_config(prefix, 'failover = "slurm"\nstate_db = "/shared/ajr/ajr.db"\n')
    mounts = f"server:/export {in_prefix(prefix, '/shared')} nfs4 rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    report = install(prefix, False, ha_host(tmp_path, mounts=mounts))
    assert any("this host is ctl1, one of ctl1, ctl2" in note and "nfs4" in note for note in report.notes)
    [todo] = [item for item in report.todo if "ctl2" in item]
    assert "ajr install" in todo and "ajr.toml" in todo and "ajr doctor" in todo
    assert not [item for item in report.todo if "move state_db" in item]


def test_failover_with_the_database_on_local_storage_asks_to_move_it(tmp_path: Path, prefix: Path) -> None:
    admins_config(prefix, 'failover = "slurm"\n')
    report = install(prefix, False, ha_host(tmp_path, mounts="/dev/sda1 / ext4 rw 0 0\n"))
    [todo] = [item for item in report.todo if "move state_db" in item]
    assert "/var/lib/ajr" in todo and "ext4" in todo


def test_failover_with_one_controller_says_there_is_nothing_to_follow(tmp_path: Path, prefix: Path) -> None:
    admins_config(prefix, 'failover = "slurm"\n')
    report = install(prefix, False, ha_host(tmp_path, controllers="ctl1(10.0.0.1)"))
    [todo] = [item for item in report.todo if "SlurmctldHost" in item]
    assert "one SlurmctldHost (ctl1)" in todo and 'failover = "off"' in todo


def test_failover_without_slurm_reads_the_controllers_from_slurm_conf(tmp_path: Path, prefix: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    conf = in_prefix(prefix, "/etc/slurm/slurm.conf")
    conf.parent.mkdir(parents=True)
    conf.write_text("ClusterName=c\nSlurmctldHost=ctl1(10.0.0.1)\nSlurmctldHost=ctl2(10.0.0.2)\n")
    report = install(prefix, False, host(tmp_path, slurm_user=None))
    assert [item for item in report.todo if 'failover = "slurm"' in item and "ctl1, ctl2" in item]


def test_the_agent_may_write_its_failover_status_file_under_systemd(tmp_path: Path, prefix: Path) -> None:
    # ProtectSystem=strict leaves /run read-only but for the service's RuntimeDirectory.
    admins_config(prefix, 'failover = "slurm"\n')
    install(prefix, False, ha_host(tmp_path))
    unit = in_prefix(prefix, "/etc/systemd/system/ajr-agent.service").read_text()
    assert "RuntimeDirectory=ajr\n" in unit
    admins_config(prefix, 'failover = "slurm"\nha_status_file = "/srv/ajr-status/control.json"\n')
    install(prefix, False, ha_host(tmp_path))
    unit = in_prefix(prefix, "/etc/systemd/system/ajr-agent.service").read_text()
    assert f" {in_prefix(prefix, '/srv/ajr-status')}\n" in unit.split("ReadWritePaths=")[1].split("\n")[0] + "\n"


def test_failover_on_a_host_slurm_conf_does_not_name_asks_for_ha_host(tmp_path: Path, prefix: Path) -> None:
    admins_config(prefix, 'failover = "slurm"\nha_host = "login1"\n')
    report = install(prefix, False, ha_host(tmp_path))
    [todo] = [item for item in report.todo if "ha_host" in item]
    assert "this host (login1) is not a SlurmctldHost" in todo and "ctl1, ctl2" in todo
