"""Reloading a running agent (SIGHUP): new settings and rules, or the old ones and why not."""

from __future__ import annotations

import logging
from pathlib import Path

from ajr_agent.adapters.config_file import load_settings
from ajr_agent.adapters.store import Limits
from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules

log = logging.getLogger("ajr.agent")


# Read once, at start: the store, the spool watch, the gateway, the log tailer, the cockpit's
# server and the notifier are built from them. A reload reports a change to one of these and
# keeps the running value. (packaging/etc/ajr.toml marks them "(restart)".)
RESTART_SETTINGS = (
    "state_db", "state_reserve_mb", "spool_dir", "slurm_backend", "slurm_command_timeout", "max_line_bytes",
    "tail_quiet_after", "tail_quiet_interval",
    "http_bind", "http_port", "operator_token",
    "notify_webhook_url", "notify_command", "notify_held_after", "notify_timeout", "notify_retry_delay",
    "notify_max_tries", "notify_queue_size",
    "failover", "ha_host", "ha_lease_seconds", "ha_status_file",
)  # fmt: skip


def reload(agent: Agent, config_file: Path | None, force_dry_run: bool = False) -> list[str]:
    """Reload the configuration and the rules into a running agent (SIGHUP); returns what happened.

    Both are built before either is applied: when one fails (a bad value, a broken rule
    file) the agent goes on with the old ones. Settings in RESTART_SETTINGS keep their
    running value and are reported as needing a restart; the others take effect at once.
    """
    old_settings = agent.settings
    try:
        settings = load_settings(config_file)
        if force_dry_run:
            settings = settings.with_overrides(dry_run=True)
        rules = load_rules(settings)
    except AjrError as exc:
        message = f"reload refused, the running settings and rules stay in force: {exc}"
        log.error("%s", message)
        return [message]
    messages = []
    kept = {name: getattr(old_settings, name) for name in RESTART_SETTINGS
            if getattr(settings, name) != getattr(old_settings, name)}  # fmt: skip
    for name, value in kept.items():
        messages.append(f"{name} = {_shown(getattr(settings, name))} needs a restart of the agent; "
                        f"it still uses {_shown(value)}")  # fmt: skip
        log.warning("%s", messages[-1])
    settings = settings.with_overrides(**kept)
    for name in Settings.model_fields:
        if getattr(settings, name) != getattr(old_settings, name):
            messages.append(f"{name}: {_shown(getattr(old_settings, name))} -> {_shown(getattr(settings, name))}")
            log.info("%s", messages[-1])
    agent.apply(settings, rules)
    agent.store.limits = store_limits(settings)
    if settings.dry_run != old_settings.dry_run:
        agent.store.set_meta(dry_run=settings.dry_run)
        if settings.dry_run:
            log.info("DRY_RUN mode is active")
    changed = len(messages) > len(kept)
    messages.append(f"reloaded: {len(rules.rules)} rules" + ("" if changed else ", no setting changed"))
    log.info("%s", messages[-1])
    return messages


def _shown(value: object) -> str:
    """A setting's value as it is written in ajr.toml."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return str(getattr(value, "value", value))  # enums by their value


def store_limits(settings: Settings) -> Limits:
    """How much of each job's story the store keeps, as the settings say."""
    return Limits(settings.max_bulk_notes_per_job, settings.max_notes_per_job, settings.max_readings_per_attempt)
