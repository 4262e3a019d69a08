"""`ajr doctor`'s checks on plain data: Slurm's answers are dicts, files are temporary."""

from __future__ import annotations

from ajr_agent.adapters.slurm.memory import MemorySlurm

import os
import pwd
import shutil
import sqlite3
from pathlib import Path
from typing import Mapping

import pytest
from click.testing import CliRunner

from ajr_agent.ops import doctor
from ajr_agent.surfaces.cli import main as cli
from ajr_agent.domain.settings import Settings
from ajr_agent.ops.doctor import (
    Check,
    Probes,
    check_agent,
    check_database,
    check_epilog,
    check_job_submit,
    check_min_job_age,
    check_rules,
    check_slurm,
    check_slurm_errors,
    check_spool,
    check_state,
    diagnose,
    doctor_config,
    format_checks,
)
from ajr_agent.ops.shipped import HOOK_PATH, shipped_file
from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.store import SCHEMA_VERSION, Store

ME = pwd.getpwuid(os.geteuid()).pw_name
NOW = 1_000_000.0


def slurm_config(tmp_path: Path, **changes: str) -> dict[str, str]:
    """`scontrol show config` of a cluster whose slurm.conf lies in tmp_path/etc/slurm."""
    return {
        "SLURM_VERSION": "22.05.8", "SLURM_CONF": str(tmp_path / "etc" / "slurm" / "slurm.conf"),
        "SlurmUser": f"{ME}({os.geteuid()})", "JobSubmitPlugins": "lua", "MinJobAge": "600 sec",
        "EpilogSlurmctld": str(tmp_path / "hook" / "ajr-epilog"), **changes,
    }  # fmt: skip


def settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(state_db=tmp_path / "state" / "ajr.db", spool_dir=tmp_path / "spool",
                    rules_dirs=(tmp_path / "rules.d",), **changes)  # type: ignore[arg-type]  # fmt: skip


def put_hooks(tmp_path: Path, spool: Path | None = None) -> None:
    """AJR's hooks where slurm_config() says they are, the epilog writing to `spool`."""
    (tmp_path / "etc" / "slurm").mkdir(parents=True, exist_ok=True)
    shutil.copy(shipped_file("slurm_hooks/job_submit.lua"), tmp_path / "etc" / "slurm" / "job_submit.lua")
    hook = tmp_path / "hook" / "ajr-epilog"
    hook.parent.mkdir(exist_ok=True)
    text = shipped_file("slurm_hooks/ajr-epilog").read_text()
    hook.write_text(text.replace("SPOOL=/var/spool/ajr/epilog", f"SPOOL={spool or tmp_path / 'spool'}"))
    hook.chmod(0o755)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


# ---- Slurm ---------------------------------------------------------------------------------------


def test_slurm_answers_with_its_version(tmp_path: Path) -> None:
    check = check_slurm(slurm_config(tmp_path), "")
    assert check.ok and check.detail.startswith("Slurm 22.05.8 answers")


def test_slurm_away_names_the_error_and_the_fix() -> None:
    check = check_slurm(None, "`scontrol show config` failed: Unable to contact slurm controller")
    assert not check.ok and "Unable to contact" in check.detail and "scontrol ping" in check.fix


def test_min_job_age() -> None:
    assert check_min_job_age({"MinJobAge": "300 sec"}).ok
    short = check_min_job_age({"MinJobAge": "60 sec"})
    assert not short.ok and short.fix.startswith("set MinJobAge=300")


# ---- job_submit.lua --------------------------------------------------------------------------------


def test_job_submit_installed_and_enabled_passes(tmp_path: Path) -> None:
    put_hooks(tmp_path)
    check = check_job_submit(slurm_config(tmp_path), None, {})
    assert check.ok and "not compile-checked: luac5.1 is not installed" in check.detail


def test_job_submit_plugin_off_says_how_to_turn_it_on(tmp_path: Path) -> None:
    put_hooks(tmp_path)
    check = check_job_submit(slurm_config(tmp_path, JobSubmitPlugins="(null)"), None, {})
    assert not check.ok and "JobSubmitPlugins is not set" in check.detail
    assert "add lua to JobSubmitPlugins" in check.fix and "restart slurmctld" in check.fix


def test_job_submit_script_missing_while_enabled(tmp_path: Path) -> None:
    check = check_job_submit(slurm_config(tmp_path, JobSubmitPlugins="job_submit/lua"), None, {})
    assert not check.ok and "job_submit.lua is missing" in check.detail and "ajr install" in check.fix


def test_a_sites_own_job_submit_fails(tmp_path: Path) -> None:
    put_hooks(tmp_path)
    (tmp_path / "etc" / "slurm" / "job_submit.lua").write_text("function slurm_job_submit() return 0 end\n")
    check = check_job_submit(slurm_config(tmp_path), None, {})
    assert not check.ok and "is not AJR's" in check.detail and "merge AJR's checks" in check.fix


@pytest.fixture
def luac() -> str:
    found = shutil.which("luac5.1")
    if found is None:
        pytest.fail("luac5.1 is missing: packaging/dev/setup-env.sh installs lua5.1")
    return found


def test_job_submit_is_compile_checked(tmp_path: Path, luac: str) -> None:
    put_hooks(tmp_path)
    assert "compiles with luac5.1 -p" in check_job_submit(slurm_config(tmp_path), luac, {}).detail
    script = tmp_path / "etc" / "slurm" / "job_submit.lua"
    script.write_text(script.read_text() + "\nlocal broken = \n")
    check = check_job_submit(slurm_config(tmp_path), luac, {})
    assert not check.ok and "does not compile" in check.detail and "next start of slurmctld" in check.fix


def test_an_older_job_submit_passes_with_a_note(tmp_path: Path) -> None:
    put_hooks(tmp_path)
    script = tmp_path / "etc" / "slurm" / "job_submit.lua"
    script.write_text(script.read_text() + "\n-- site note\n")
    check = check_job_submit(slurm_config(tmp_path), None, {})
    assert check.ok and "differs from the one shipped" in check.detail


# ---- the epilog hook ---------------------------------------------------------------------------------


def test_epilog_installed_and_configured_passes(tmp_path: Path) -> None:
    put_hooks(tmp_path)
    check = check_epilog(slurm_config(tmp_path), settings(tmp_path), HOOK_PATH)
    assert check.ok and check.detail.endswith(f"writing to {tmp_path / 'spool'}")


def test_epilog_not_set_names_the_line_to_add(tmp_path: Path) -> None:
    check = check_epilog(slurm_config(tmp_path, EpilogSlurmctld="(null)"), settings(tmp_path), HOOK_PATH)
    assert not check.ok and "EpilogSlurmctld is not set" in check.detail
    assert check.fix == (f"add EpilogSlurmctld={HOOK_PATH} to slurm.conf (`ajr install` puts the hook there), "
                         "then restart slurmctld")  # fmt: skip


def test_a_sites_epilog_that_calls_the_hook_passes(tmp_path: Path) -> None:
    put_hooks(tmp_path)
    hook = tmp_path / "hook" / "ajr-epilog"
    site = tmp_path / "site-epilog"
    site.write_text(f"#!/bin/sh\n/usr/local/bin/site-things\n{hook}\n")
    site.chmod(0o755)
    assert check_epilog(slurm_config(tmp_path, EpilogSlurmctld=str(site)), settings(tmp_path), hook).ok
    other = check_epilog(slurm_config(tmp_path, EpilogSlurmctld=str(site)), settings(tmp_path), HOOK_PATH)
    assert not other.ok and f"call {HOOK_PATH} from {site}" in other.fix


def test_epilog_writing_to_another_spool_fails(tmp_path: Path) -> None:
    put_hooks(tmp_path, spool=tmp_path / "elsewhere")
    check = check_epilog(slurm_config(tmp_path), settings(tmp_path), HOOK_PATH)
    assert not check.ok and f"writes to {tmp_path / 'elsewhere'}, the agent reads {tmp_path / 'spool'}" in check.detail


def test_epilog_not_executable_fails(tmp_path: Path) -> None:
    put_hooks(tmp_path)
    (tmp_path / "hook" / "ajr-epilog").chmod(0o644)
    # Even root may not execute a file without any x bit: the check rests on that.
    assert not os.access(tmp_path / "hook" / "ajr-epilog", os.X_OK)
    check = check_epilog(slurm_config(tmp_path), settings(tmp_path), HOOK_PATH)
    assert not check.ok and check.fix.startswith("chmod 755")


# ---- directories ----------------------------------------------------------------------------------------


def test_spool_missing(tmp_path: Path) -> None:
    check = check_spool(settings(tmp_path), slurm_config(tmp_path))
    assert not check.ok and "is missing" in check.detail and "ajr install" in check.fix


def test_spool_writable_by_its_owner_passes(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir(mode=0o770)
    assert check_spool(settings(tmp_path), slurm_config(tmp_path)).ok


def test_spool_the_slurm_user_cannot_write_says_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir(mode=0o755)
    (tmp_path / "spool").chmod(0o755)
    check = check_spool(settings(tmp_path), slurm_config(tmp_path, SlurmUser="nobody(65534)"))
    assert not check.ok and "SlurmUser nobody cannot write" in check.detail
    assert check.fix == f"chown nobody:root {tmp_path / 'spool'} && chmod 0770 {tmp_path / 'spool'}"


def test_state_directory(tmp_path: Path) -> None:
    assert not check_state(settings(tmp_path)).ok
    (tmp_path / "state").mkdir()
    assert check_state(settings(tmp_path)).ok


# ---- the state database ------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "db"


def test_database_at_the_current_schema_passes(tmp_path: Path) -> None:
    assert check_database(settings(tmp_path)).ok  # none yet: the agent makes it
    Store(tmp_path / "state" / "ajr.db").close()
    check = check_database(settings(tmp_path))
    assert check.ok and check.detail.startswith(f"{tmp_path / 'state' / 'ajr.db'}: schema {SCHEMA_VERSION}, ")


def test_database_of_an_older_ajr_is_reported_and_left_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ajr.db"
    db.parent.mkdir()
    shutil.copyfile(FIXTURES / "state-dbc6637.db", db)
    original = db.read_bytes()
    checks = by_name(diagnose(healthy_config(tmp_path), tmp_path, probes(tmp_path, slurm_config(tmp_path)), environ={}))
    check = checks["database"]
    assert not check.ok
    assert check.detail == (f"{db}: schema 1, written by an older AJR; this AJR uses schema {SCHEMA_VERSION}: the "
                            "agent migrates it at its next start, after a backup copy beside it "
                            f"({db.name}.bak-v1-<time>)")  # fmt: skip
    assert check.fix == "restart the agent (systemctl restart ajr-agent); its log says what it did"
    assert "managed jobs" in checks["agent"].detail  # what the old agent recorded is read all the same
    assert db.read_bytes() == original and list(db.parent.glob("*.bak-*")) == []


def test_database_of_a_newer_ajr_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ajr.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("update meta set value = '99' where key = 'schema_version'")
    check = check_database(settings(tmp_path))
    assert not check.ok and "schema version 99 is newer" in check.detail and "upgrade AJR" in check.fix


def test_a_corrupt_database_is_reported_with_what_the_agent_will_do(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ajr.db"
    db.parent.mkdir()
    db.write_bytes(b"garbage " * 1000)
    check = check_database(settings(tmp_path))
    assert not check.ok and f"state database {db} is corrupt" in check.detail
    assert "restart the agent" in check.fix and db.read_bytes() == b"garbage " * 1000


def test_a_database_the_agent_moved_aside_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ajr.db"
    Store(db).close()
    moved = db.parent / "ajr.db.corrupt-20260101T000000Z"
    moved.write_bytes(b"garbage")
    check = check_database(settings(tmp_path))
    assert not check.ok and f"the agent found it corrupt and moved it aside to {moved}" in check.detail
    assert f"sqlite3 {moved} .recover" in check.fix and "delete it" in check.fix


def test_rules_valid_and_broken(tmp_path: Path) -> None:
    assert check_rules(settings(tmp_path)).ok
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "50-site.toml").write_text('[[rule]]\nname = "x"\nkind = "anomaly"\npattern = "("\n')
    check = check_rules(settings(tmp_path))
    assert not check.ok and "50-site.toml" in check.detail and "ajr rules check" in check.fix


# ---- the agent ------------------------------------------------------------------------------------------


def test_agent_never_ran(tmp_path: Path) -> None:
    check = check_agent(None, settings(tmp_path), NOW)
    assert not check.ok and "never run" in check.detail and "systemctl enable --now ajr-agent" in check.fix


def test_agent_polling_recently_passes_and_says_dry_run(tmp_path: Path) -> None:
    meta = {"last_poll_at": NOW - 2, "backend": "commands", "managed_jobs": 3, "dry_run": True}
    check = check_agent(meta, settings(tmp_path), NOW)
    assert check.ok and "last poll 2.0 s ago, backend commands, 3 managed jobs, DRY RUN" in check.detail


def test_agent_silent_too_long_fails(tmp_path: Path) -> None:
    # 3 poll intervals + 10 s: 13 s with the default interval.
    assert check_agent({"last_poll_at": NOW - 12}, settings(tmp_path), NOW).ok
    check = check_agent({"last_poll_at": NOW - 14}, settings(tmp_path), NOW)
    assert not check.ok and "more than 13 s" in check.detail and "journalctl -u ajr-agent" in check.fix


def test_slurm_errors() -> None:
    assert check_slurm_errors({}, NOW).ok
    recovered = check_slurm_errors({"last_poll_error": "boom", "last_poll_error_at": NOW - 60,
                                    "last_poll_at": NOW - 1}, NOW)  # fmt: skip
    assert recovered.ok and "none since the last good poll; the last one: boom (60.0 s ago)" == recovered.detail
    current = check_slurm_errors({"last_poll_error": "boom", "last_poll_error_at": NOW - 1,
                                  "last_poll_at": NOW - 60}, NOW)  # fmt: skip
    assert not current.ok and current.detail == "the agent's last poll failed: boom (1.0 s ago)"


# ---- all of them ------------------------------------------------------------------------------------------


def probes(tmp_path: Path, live: Mapping[str, str] | None = None) -> Probes:
    def answer() -> Mapping[str, str]:
        if live is None:
            raise SlurmError(["scontrol", "show", "config"], "Unable to contact slurm controller", transient=True)
        return live

    def gateway(_: Settings) -> MemorySlurm:
        if live is None:
            raise SlurmError(["squeue"], "Unable to contact slurm controller", transient=True)
        return MemorySlurm()

    return Probes(answer, gateway, None, lambda: NOW)  # type: ignore[arg-type]


def healthy_config(tmp_path: Path) -> Path:
    """A complete installation in tmp_path, but for the state database; returns its config file."""
    config = tmp_path / "ajr.toml"
    config.write_text(f'state_db = "{tmp_path / "state" / "ajr.db"}"\nspool_dir = "{tmp_path / "spool"}"\n'
                      f'rules_dirs = ["{tmp_path / "rules.d"}"]\n')  # fmt: skip
    put_hooks(tmp_path)
    (tmp_path / "spool").mkdir(mode=0o770)
    return config


def healthy(tmp_path: Path) -> Path:
    """A complete installation in tmp_path with an agent that just polled; returns its config file."""
    config = healthy_config(tmp_path)
    store = Store(tmp_path / "state" / "ajr.db")
    store.set_meta(last_poll_at=NOW - 1, backend="commands", managed_jobs=0)
    store.close()
    return config


def test_a_healthy_installation_passes_every_check(tmp_path: Path) -> None:
    checks = diagnose(healthy(tmp_path), tmp_path, probes(tmp_path, slurm_config(tmp_path)), environ={})
    assert [c.name for c in checks if not c.ok] == []
    assert [c.name for c in checks] == ["config", "slurm", "backend", "job_submit", "epilog", "min_job_age", "spool",
                                        "state", "database", "rules", "agent", "slurm_errors"]  # fmt: skip
    assert format_checks(checks)[-1] == "12 checks: all passed"


def test_doctor_only_reads_the_state_database(tmp_path: Path) -> None:
    config = healthy(tmp_path)
    db = tmp_path / "state" / "ajr.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    diagnose(config, tmp_path, probes(tmp_path, slurm_config(tmp_path)), environ={})
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


def test_slurm_away_fails_what_depends_on_it(tmp_path: Path) -> None:
    checks = by_name(diagnose(healthy(tmp_path), tmp_path, probes(tmp_path, None), environ={}))
    for name in ("slurm", "backend", "job_submit", "epilog", "min_job_age"):
        assert not checks[name].ok, name
    assert checks["epilog"].fix == "fix the slurm check first"
    assert checks["spool"].ok and checks["rules"].ok and checks["agent"].ok


def test_a_broken_config_is_the_one_failure_reported(tmp_path: Path) -> None:
    config = tmp_path / "ajr.toml"
    config.write_text("poll_interval = -1\n")
    checks = diagnose(config, tmp_path, probes(tmp_path, slurm_config(tmp_path)), environ={})
    assert len(checks) == 1 and not checks[0].ok and "poll_interval" in checks[0].detail


def test_the_shells_ajr_variables_are_ignored_and_said_so(tmp_path: Path) -> None:
    checks = diagnose(healthy(tmp_path), tmp_path, probes(tmp_path, slurm_config(tmp_path)),
                      environ={"AJR_POLL_INTERVAL": "-5"})  # fmt: skip
    assert checks[0].ok and "AJR_POLL_INTERVAL of this shell ignored" in checks[0].detail


def test_the_epilog_fix_names_the_hook_under_the_prefix(tmp_path: Path) -> None:
    live = slurm_config(tmp_path, EpilogSlurmctld="(null)")
    checks = by_name(diagnose(healthy(tmp_path), tmp_path, probes(tmp_path, live), environ={}))
    assert f"EpilogSlurmctld={tmp_path}/usr/local/lib/ajr/ajr-epilog" in checks["epilog"].fix


def test_format_puts_the_fix_under_a_failure() -> None:
    lines = format_checks([Check("slurm", True, "fine"), Check("epilog", False, "not set", "add it")])
    assert lines == ["PASS  slurm   fine", "FAIL  epilog  not set", "              fix: add it", "2 checks: 1 failed"]


def test_which_config_doctor_reads(tmp_path: Path) -> None:
    assert doctor_config(None, Path("/"), {}) == Path("/etc/ajr/ajr.toml")
    assert doctor_config(None, Path("/"), {"AJR_CONFIG": "/x.toml"}) == Path("/x.toml")
    assert doctor_config(None, tmp_path, {}) == tmp_path / "etc" / "ajr" / "ajr.toml"
    assert doctor_config(tmp_path / "a.toml", tmp_path, {}) == tmp_path / "a.toml"


def test_the_command_exits_non_zero_on_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = healthy(tmp_path)
    monkeypatch.setattr(doctor, "live_probes", lambda: probes(tmp_path, slurm_config(tmp_path)))
    passed = CliRunner().invoke(cli, ["--config", str(config), "doctor", "--prefix", str(tmp_path)])
    assert passed.exit_code == 0 and passed.output.endswith("12 checks: all passed\n"), passed.output
    monkeypatch.setattr(doctor, "live_probes", lambda: probes(tmp_path, None))
    failed = CliRunner().invoke(cli, ["--config", str(config), "doctor", "--prefix", str(tmp_path)])
    assert failed.exit_code == 1 and "FAIL  slurm" in failed.output
