"""Following slurmctld's failover: ask Slurm which controller is in control, hold the lease while
this agent acts, let go when Slurm moves control elsewhere.

`ControlWatch.check` is one look (a `scontrol ping`, the lease, this host's role record);
`wait_until_active` is the standby loop (the queue read, nothing followed, nothing written
to the shared state); `keep_while_active` runs beside the agent's loop and stops it when
control moves away.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from ajr_agent.adapters.control_files import ControlFileError, ControlRecordFile, LeaseFile, record_of
from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.slurm.controllers import ping_controllers
from ajr_agent.domain.control import Control, ControllerPing, Lease, LeaseWatch, NotAController, Role, judge
from ajr_agent.domain.settings import ConfigError, Settings

log = logging.getLogger(__name__)

Pinger = Callable[[], Sequence[ControllerPing]]


def lease_path(settings: Settings) -> Path:
    """The lease lives beside the state database: whoever reaches the database reaches it."""
    return settings.state_db.with_name(settings.state_db.name + ".lease")


class ControlWatch:
    """This agent's role under slurmctld's failover, judged anew at each check()."""

    def __init__(self, settings: Settings, ping: Pinger | None = None, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[Control], None] | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.ping = ping or (lambda: ping_controllers(settings.slurm_command_timeout))
        self.clock = clock
        self.on_change = on_change
        self.lease_file = LeaseFile(lease_path(settings))
        self.record_file = ControlRecordFile(settings.ha_status_file)
        self.watch = LeaseWatch(settings.ha_lease_seconds)
        self.host = settings.ha_host
        self.holder = ""
        self.serial = 0
        self.control = Control(Role.STANDBY, "", "not checked yet")
        self.since = time.time()
        self.unanswered_since: float | None = None  # since when no controller answers (monotonic)

    def _me(self, pings: Sequence[ControllerPing]) -> str:
        """This host as slurm.conf names it: ha_host, else the short or the full hostname (slurmctld takes either)."""
        if not self.host:
            names = [socket.gethostname().split(".")[0], socket.getfqdn()]
            self.host = next((n for n in names if n in {p.host for p in pings}), names[0])
            self.holder = f"{self.host}:{os.getpid()}"
        return self.host

    def check(self) -> Control:
        """Judge the role now; while active, renew the lease. A ConfigError when this host is no controller."""
        current = self.control.role
        try:
            pings = self.ping()
            me = self._me(pings)
            found = judge(me, pings, current)
        except NotAController as exc:
            raise ConfigError(str(exc)) from exc
        except SlurmError as exc:
            found = Control(current, "", f"cannot ask Slurm which controller is in control: {exc}")
        found = self._unanswered(found)
        if not self.holder:
            self.holder = f"{self.host or socket.gethostname()}:{os.getpid()}"
        if found.role is Role.ACTIVE:
            found = self._lease(found)
        self._record(found)
        return found

    def _unanswered(self, found: Control) -> Control:
        """An active agent that has reached no controller for half a lease stands down.

        Its host may be cut off from the controllers while still reaching the shared storage:
        renewing the lease on would keep the agent beside the new controller from ever acting.
        """
        if found.in_control:
            self.unanswered_since = None
            return found
        now = self.clock()
        self.unanswered_since = self.unanswered_since if self.unanswered_since is not None else now
        if found.role is Role.ACTIVE and now - self.unanswered_since >= self.settings.ha_lease_seconds / 2:
            return Control(Role.STANDBY, "", f"no slurmctld answered for {now - self.unanswered_since:.0f} s: "
                                             f"{found.reason}")  # fmt: skip
        return found

    def _lease(self, found: Control) -> Control:
        """ACTIVE only with the lease: taken when free, renewed while held."""
        try:
            lease = self.lease_file.read()
            taking = self.control.role is not Role.ACTIVE
            if taking and lease is not None and not self.watch.free_for(self.holder, lease, self.clock()):
                return Control(Role.STANDBY, found.in_control,
                               f"the slurmctld on this host is in control; waiting for {lease.holder} to let go of "
                               f"{self.lease_file.path} (or to stay silent {self.settings.ha_lease_seconds:g} s)")  # fmt: skip
            if lease is not None and lease.holder != self.holder and not taking:
                # Another agent took the lease while this one held it: it must have judged this
                # one gone. Stand down rather than act beside it.
                return Control(Role.STANDBY, found.in_control, f"{lease.holder} took the lease")
            self.serial += 1
            self.lease_file.write(Lease(self.holder, self.serial))
        except ControlFileError as exc:
            return Control(Role.STANDBY, found.in_control, f"no lease, so not acting: {exc}")
        return found

    def _record(self, found: Control) -> None:
        changed = found.role is not self.control.role or found.in_control != self.control.in_control
        if changed:
            self.since = time.time()
            log.info("failover: %s (%s)", found.role.value, found.reason)
        self.control = found
        try:
            self.record_file.write(record_of(found, self.host, self.since, time.time()))
        except ControlFileError as exc:
            log.warning("failover: %s", exc)
        if changed and self.on_change is not None:
            self.on_change(found)

    def let_go(self) -> None:
        """Give the lease up on purpose, once this agent has stopped acting: the next may take over at once."""
        try:
            lease = self.lease_file.read()
            if lease is not None and lease.holder == self.holder:
                self.lease_file.write(Lease(self.holder, self.serial + 1, released=True))
        except ControlFileError as exc:
            log.warning("failover: could not release the lease (the next agent waits for it to go stale): %s", exc)
        self._record(Control(Role.STANDBY, self.control.in_control, "stopped acting"))

    def wait_until_active(self, stop: threading.Event, read_queue: Callable[[], object] | None = None) -> bool:
        """Stand by until this agent may act (True), or until `stop` is set (False).

        Each poll interval: the queue is read (`read_queue`, so that a takeover starts from a
        Slurm known to answer), and Slurm and the lease are asked again.
        """
        while not stop.is_set():
            if self.check().role is Role.ACTIVE:
                return True
            if read_queue is not None:
                try:
                    read_queue()
                except SlurmError as exc:
                    log.debug("standby: the queue read failed: %s", exc)
            stop.wait(self.settings.poll_interval)
        return False

    def keep_while_active(self, stop_agent: Callable[[], None], done: threading.Event) -> threading.Thread:
        """A thread that checks at each poll interval and stops the agent when control moves away."""

        def watch() -> None:
            while not done.wait(self.settings.poll_interval):
                try:
                    role = self.check().role
                except ConfigError as exc:
                    log.error("failover: %s", exc)
                    role = Role.STANDBY
                if role is not Role.ACTIVE:
                    log.info("failover: control moved to %s; stopping after the current step",
                             self.control.in_control or "no controller")  # fmt: skip
                    stop_agent()
                    return

        thread = threading.Thread(target=watch, name="ajr-control-watch", daemon=True)
        thread.start()
        return thread
