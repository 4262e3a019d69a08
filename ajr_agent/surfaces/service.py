"""`ajr-agent`: the service. Builds the agent, the cockpit, the metrics and the notifier, and runs the loop."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from ajr_agent import __version__
from ajr_agent.adapters.config_file import load_settings
from ajr_agent.adapters.logs import ChangeWatcher
from ajr_agent.adapters.slurm import open_gateway
from ajr_agent.adapters.store import Store, StoreFullError
from ajr_agent.domain.errors import AjrError
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.guard import EXIT_NEEDS_ADMIN, EXIT_RESTART
from ajr_agent.runtime.observers import Observers
from ajr_agent.runtime.reload import reload, store_limits
from ajr_agent.surfaces import web
from ajr_agent.surfaces.metrics import Metrics
from ajr_agent.surfaces.notify import Notifier

log = logging.getLogger("ajr.agent")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="settings file (default $AJR_CONFIG or /etc/ajr/ajr.toml)")  # fmt: skip
@click.option("--dry-run", is_flag=True, default=None, help="decide and record, change nothing in Slurm")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))  # fmt: skip
@click.version_option(__version__)
def main(config_file: Path | None, dry_run: bool | None, log_level: str) -> None:
    """Run the AJR agent: watch managed Slurm jobs and recover the ones that fail."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s | %(levelname)s | %(name)s - %(message)s")
    try:
        settings = load_settings(config_file)
        if dry_run:
            settings = settings.with_overrides(dry_run=True)
        rules = load_rules(settings)
        store = Store.open_for_agent(settings.state_db, limits=store_limits(settings),
                                     reserve_bytes=settings.state_reserve_mb * 1024 * 1024)  # fmt: skip
        gateway = open_gateway(settings)
    except StoreFullError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_RESTART)
    except AjrError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_NEEDS_ADMIN)
    if settings.dry_run:
        log.info("DRY_RUN mode is active")
    watcher = ChangeWatcher()
    metrics, notifier = Metrics(), Notifier.from_settings(settings)
    notifier.start()
    agent = Agent(settings, store, gateway, rules, watcher, Observers([metrics, notifier]))
    server = web.start_for_agent(settings, metrics)
    store.set_meta(backend=gateway.backend, dry_run=settings.dry_run, agent_started_at=time.time(),
                   agent_version=__version__)  # fmt: skip
    log.info("ajr-agent %s started: backend %s, %d rules, state %s", __version__, gateway.backend,
             len(rules.rules), settings.state_db)  # fmt: skip

    def on_term(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current step", signum)
        agent.stop()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload(agent, config_file, force_dry_run=bool(dry_run))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        agent.run()
    finally:
        if server is not None:
            server.close()
        notifier.stop(grace=settings.notify_timeout)
        watcher.close()
        store.close()
        log.info("ajr-agent stopped")
    sys.exit(agent.guard.exit_code)


if __name__ == "__main__":
    main()
