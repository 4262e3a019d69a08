"""SIGHUP: the agent reloads its configuration and rules, or keeps the old ones when the new do not load."""

from __future__ import annotations

from ajr_agent.adapters.slurm.memory import MemorySlurm

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ajr_agent.runtime.agent import Agent, load_rules

from ajr_agent.runtime.inline_pool import InlinePool
from ajr_agent.runtime.reload import RESTART_SETTINGS, reload
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.config_file import load_settings
from ajr_agent.detect.rules import RuleSet
from ajr_agent.adapters.store import Store

SITE_RULE = '[[rule]]\nname = "site_oops"\nkind = "anomaly"\npattern = "site oops"\ncategory = "site"\n'


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ajr.toml"
    path.write_text(base_config(tmp_path))
    return path


def base_config(tmp_path: Path) -> str:
    # http_port = 0: no cockpit, so that the agent started here takes no port.
    return (f'state_db = "{tmp_path / "ajr.db"}"\nspool_dir = "{tmp_path / "spool"}"\n'
            f'rules_dirs = ["{tmp_path / "rules.d"}"]\nhttp_port = 0\n')  # fmt: skip


@pytest.fixture
def agent(tmp_path: Path, config: Path) -> Agent:
    settings = load_settings(config, environ={})
    return Agent(settings, Store(settings.state_db), MemorySlurm(), load_rules(settings), pool=InlinePool())


def holders_of(agent: Agent, attribute: str, kind: type) -> list[object]:
    """The agent and its helpers (the executor, ...) whose `attribute` is a `kind`."""
    return [holder for holder in [agent, *vars(agent).values()] if isinstance(getattr(holder, attribute, None), kind)]


def test_changed_settings_and_new_rules_take_effect(agent: Agent, config: Path, tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "50-site.toml").write_text(SITE_RULE)
    config.write_text(base_config(tmp_path) + "poll_interval = 2.5\nsite_requeue_cap = 4\n")
    messages = reload(agent, config)
    assert "poll_interval: 1.0 -> 2.5" in messages and "site_requeue_cap: 50 -> 4" in messages
    assert messages[-1].startswith("reloaded: ")
    assert "site_oops" in {rule.name for rule in agent.rules.rules}
    # Every helper the agent gave its settings and rules to sees the new ones.
    for holder in holders_of(agent, "settings", Settings):
        assert holder.settings.poll_interval == 2.5, holder  # type: ignore[attr-defined]
    for holder in holders_of(agent, "rules", RuleSet):
        assert "site_oops" in {r.name for r in holder.rules.rules}, holder  # type: ignore[attr-defined]
    assert agent.executor.settings is agent.settings


def test_the_stores_caps_follow_a_reload(agent: Agent, config: Path, tmp_path: Path) -> None:
    config.write_text(base_config(tmp_path) + "max_notes_per_job = 300\nmax_readings_per_attempt = 500\n")
    reload(agent, config)
    assert agent.store.limits.max_notes_per_job == 300 and agent.store.limits.max_readings_per_attempt == 500


def test_a_broken_config_keeps_the_running_settings_and_rules(agent: Agent, config: Path) -> None:
    before_settings, before_rules = agent.settings, agent.rules
    config.write_text("poll_interval = -1\n")
    messages = reload(agent, config)
    assert len(messages) == 1 and messages[0].startswith("reload refused, the running settings and rules stay")
    assert "poll_interval" in messages[0]
    assert agent.settings is before_settings and agent.rules is before_rules
    assert agent.executor.settings is before_settings


def test_a_broken_rule_file_keeps_the_running_settings_and_rules(agent: Agent, config: Path, tmp_path: Path) -> None:
    before_settings, before_rules = agent.settings, agent.rules
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "50-site.toml").write_text('[[rule]]\nname = "bad"\nkind = "anomaly"\npattern = "("\n')
    config.write_text(base_config(tmp_path) + "poll_interval = 2.5\n")
    messages = reload(agent, config)
    assert messages[0].startswith("reload refused") and "50-site.toml" in messages[0]
    assert agent.settings is before_settings and agent.rules is before_rules


def test_settings_read_at_start_need_a_restart_and_keep_their_value(agent: Agent, config: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    config.write_text(f'state_db = "{tmp_path / "other.db"}"\nspool_dir = "{tmp_path / "spool2"}"\n'
                      f'rules_dirs = ["{tmp_path / "rules.d"}"]\nhttp_port = 0\nslurm_backend = "commands"\n'
                      "max_line_bytes = 1024\nslurm_command_timeout = 3\ntail_interval = 0.5\n")  # fmt: skip
    messages = reload(agent, config)
    assert f"state_db = {tmp_path / 'other.db'} needs a restart of the agent; it still uses {tmp_path / 'ajr.db'}" \
        in messages  # fmt: skip
    restart = {m.split(" = ")[0] for m in messages if "needs a restart" in m}
    assert restart == {"state_db", "spool_dir", "slurm_backend", "max_line_bytes", "slurm_command_timeout"}
    assert restart <= set(RESTART_SETTINGS)
    assert "slurm_backend = commands needs a restart of the agent; it still uses auto" in messages
    assert agent.settings.state_db == tmp_path / "ajr.db" and agent.settings.spool_dir == tmp_path / "spool"
    assert agent.settings.max_line_bytes == Settings().max_line_bytes
    assert agent.settings.tail_interval == 0.5 and "tail_interval: 0.25 -> 0.5" in messages


def test_nothing_changed_is_said(agent: Agent, config: Path) -> None:
    assert reload(agent, config)[-1].endswith(", no setting changed")


def test_dry_run_from_the_command_line_survives_a_reload(agent: Agent, config: Path) -> None:
    agent.settings = agent.executor.settings = agent.settings.with_overrides(dry_run=True)
    reload(agent, config, force_dry_run=True)
    assert agent.settings.dry_run and agent.executor.settings.dry_run


def test_turning_dry_run_on_is_recorded_for_ajr_status(agent: Agent, config: Path, tmp_path: Path) -> None:
    config.write_text(base_config(tmp_path) + "dry_run = true\n")
    reload(agent, config)
    assert agent.executor.settings.dry_run and agent.store.meta()["dry_run"] is True


def test_sighup_reloads_and_sigterm_stops_a_real_agent(tmp_path: Path) -> None:
    config = tmp_path / "ajr.toml"
    # No Slurm is needed: a failed poll is logged and retried.
    config.write_text(base_config(tmp_path) + 'slurm_backend = "commands"\n')
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AJR_", "APS_"))}
    env["PATH"] = str(tmp_path / "no-slurm")  # squeue is not found: the agent runs on regardless
    agent = subprocess.Popen([sys.executable, "-m", "ajr_agent.surfaces.service", "--config", str(config)],
                             stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                             cwd=Path(__file__).resolve().parent.parent.parent)  # fmt: skip
    try:
        wait_for_log(log, "started")
        config.write_text(base_config(tmp_path) + 'slurm_backend = "commands"\npoll_interval = 3\n')
        agent.send_signal(signal.SIGHUP)
        wait_for_log(log, "poll_interval: 1.0 -> 3.0")
        config.write_text("poll_interval = soon\n")
        agent.send_signal(signal.SIGHUP)
        wait_for_log(log, "reload refused")
        assert agent.poll() is None, "a refused reload stopped the agent"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
        assert "ajr-agent stopped" in log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()


def wait_for_log(log: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not in the agent's log:\n{log.read_text()}")
        time.sleep(0.1)
