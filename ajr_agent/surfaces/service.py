"""`ajr-agent`: the service. Builds the agent, the cockpit, the metrics and the notifier, and runs the loop.

With `failover = "slurm"` it follows slurmctld's own failover: it stands by until the
slurmctld on its host is in control (runtime.control_watch), runs the agent while it is,
and stands by again when control moves away, the cockpit and metrics serving throughout.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click

from ajr_agent import __version__
from ajr_agent.adapters.config_file import load_settings
from ajr_agent.adapters.logs import ChangeWatcher
from ajr_agent.adapters.slurm import SlurmGateway, open_gateway
from ajr_agent.adapters.store import Store, StoreFullError
from ajr_agent.detect.rules import RuleSet
from ajr_agent.domain.control import FailoverMode
from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.control_watch import ControlWatch
from ajr_agent.runtime.guard import EXIT_NEEDS_ADMIN, EXIT_RESTART
from ajr_agent.runtime.observers import Observers
from ajr_agent.runtime.reload import reload, store_limits
from ajr_agent.surfaces import web
from ajr_agent.surfaces.metrics import Metrics
from ajr_agent.surfaces.notify import Notifier

log = logging.getLogger("ajr.agent")


@dataclass
class Service:
    """What outlives one run of the agent: settings (a reload changes them), rules, Slurm, observers."""

    settings: Settings
    rules: RuleSet
    gateway: SlurmGateway
    observers: Observers
    config_file: Path | None
    forced_dry_run: bool
    stopping: threading.Event = field(default_factory=threading.Event)
    agent: Agent | None = None

    def stop(self) -> None:
        """SIGTERM: stop the agent after its current step, and stop standing by."""
        self.stopping.set()
        if self.agent is not None:
            self.agent.stop()

    def reload(self) -> None:
        """SIGHUP: reload into the running agent; a standby agent reads the file again when it takes over."""
        if self.agent is not None:
            reload(self.agent, self.config_file, force_dry_run=self.forced_dry_run)
            self.settings, self.rules = self.agent.settings, self.agent.rules

    def run_agent(self, watch: ControlWatch | None = None) -> int:
        """Open the state database, run the agent until it stops (or `watch` sees control move away); its exit code."""
        settings = self.settings
        try:
            store = Store.open_for_agent(settings.state_db, limits=store_limits(settings), wal=settings.state_db_wal,
                                         reserve_bytes=settings.state_reserve_mb * 1024 * 1024)  # fmt: skip
        except StoreFullError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_RESTART
        except AjrError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_NEEDS_ADMIN
        watcher = ChangeWatcher()
        agent = Agent(settings, store, self.gateway, self.rules, watcher, self.observers)
        store.set_meta(backend=self.gateway.backend, dry_run=settings.dry_run, agent_started_at=time.time(),
                       agent_version=__version__, agent_host=watch.host if watch else "")  # fmt: skip
        log.info("ajr-agent %s started: backend %s, %d rules, state %s", __version__, self.gateway.backend,
                 len(self.rules.rules), settings.state_db)  # fmt: skip
        self.agent = agent
        done = threading.Event()
        if watch is not None:
            watch.keep_while_active(agent.stop, done)
        try:
            if not self.stopping.is_set():
                agent.run()
        finally:
            done.set()
            self.agent = None
            watcher.close()
            store.close()
        return agent.guard.exit_code

    def follow_failover(self, metrics: Metrics) -> int:
        """Stand by, act while the slurmctld beside this agent is in control, stand by again; until SIGTERM."""
        watch = ControlWatch(self.settings, on_change=metrics.controlled)
        log.info("ajr-agent %s started under failover: standing by until the slurmctld on this host is in control",
                 __version__)  # fmt: skip
        while watch.wait_until_active(self.stopping, self.gateway.list_jobs):
            code = self.run_agent(watch)
            watch.let_go()
            if code != 0:
                return code
        watch.let_go()
        return 0


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
        gateway = open_gateway(settings)
    except AjrError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_NEEDS_ADMIN)
    if settings.dry_run:
        log.info("DRY_RUN mode is active")
    metrics, notifier = Metrics(), Notifier.from_settings(settings)
    notifier.start()
    service = Service(settings, rules, gateway, Observers([metrics, notifier]), config_file, bool(dry_run))
    server = web.start_for_agent(settings, metrics)

    def on_term(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current step", signum)
        service.stop()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        service.reload()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        if settings.failover is FailoverMode.SLURM:
            code = service.follow_failover(metrics)
        else:
            code = service.run_agent()
    except AjrError as exc:
        log.error("stopping: %s", exc)
        code = EXIT_NEEDS_ADMIN
    finally:
        if server is not None:
            server.close()
        notifier.stop(grace=settings.notify_timeout)
        log.info("ajr-agent stopped")
    sys.exit(code)


if __name__ == "__main__":
    main()
