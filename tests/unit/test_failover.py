"""Following slurmctld's failover: what `scontrol ping` says, which agent acts, the lease between them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ajr_agent.adapters.control_files import ControlRecordFile, LeaseFile
from ajr_agent.adapters.slurm import SlurmError
from ajr_agent.adapters.slurm.controllers import parse_ping
from ajr_agent.adapters.store import Store, StoreError
from ajr_agent.domain.control import (
    ControllerPing,
    FailoverMode,
    Lease,
    LeaseWatch,
    NotAController,
    Role,
    controller_in_control,
    judge,
)
from ajr_agent.domain.settings import ConfigError, Settings
from ajr_agent.ops.check import Check
from ajr_agent.ops.failover_check import check_failover, file_system_of
from ajr_agent.runtime.control_watch import ControlWatch, lease_path
from ajr_agent.surfaces.cli_render import status_lines
from ajr_agent.views import queries
from ajr_agent.views.models import JobsQuery

# As scontrol 22.05 prints it (as root, one controller down); 24.11 and 26.05 print the same lines.
PING_PRIMARY_DOWN = """Slurmctld(primary) at ctl1 is DOWN
Slurmctld(backup) at ctl2 is UP
*****************************************
** RESTORE SLURMCTLD DAEMON TO SERVICE **
*****************************************
"""
BOTH_UP = [ControllerPing(0, "ctl1", True), ControllerPing(1, "ctl2", True)]
PRIMARY_DOWN = [ControllerPing(0, "ctl1", False), ControllerPing(1, "ctl2", True)]
NONE_UP = [ControllerPing(0, "ctl1", False), ControllerPing(1, "ctl2", False)]


def test_ping_lines_are_read_in_slurm_conf_order_and_the_banner_is_skipped() -> None:
    assert parse_ping(PING_PRIMARY_DOWN) == PRIMARY_DOWN
    three = "Slurmctld(primary) at a is UP\nSlurmctld(backup1) at b is DOWN\nSlurmctld(backup2) at c is UP\n"
    assert parse_ping(three) == [ControllerPing(0, "a", True), ControllerPing(1, "b", False), ControllerPing(2, "c", True)]
    assert parse_ping("slurm_load_ctl_conf error: Unable to contact slurm controller") == []


def test_the_first_controller_that_answers_is_in_control() -> None:
    assert controller_in_control(BOTH_UP) == BOTH_UP[0]
    assert controller_in_control(list(reversed(PRIMARY_DOWN))) == PRIMARY_DOWN[1]
    assert controller_in_control(NONE_UP) is None


def test_only_the_agent_beside_the_controller_in_control_acts() -> None:
    assert judge("ctl1", BOTH_UP, Role.STANDBY).role is Role.ACTIVE
    standby = judge("ctl2", BOTH_UP, Role.STANDBY)
    assert (standby.role, standby.in_control, standby.reason) == (Role.STANDBY, "ctl1", "primary is ctl1")
    assert judge("ctl2", PRIMARY_DOWN, Role.STANDBY).role is Role.ACTIVE
    assert judge("ctl1", PRIMARY_DOWN, Role.ACTIVE).role is Role.STANDBY


def test_with_no_controller_answering_each_agent_keeps_its_role() -> None:
    assert judge("ctl1", NONE_UP, Role.ACTIVE).role is Role.ACTIVE
    kept = judge("ctl2", NONE_UP, Role.STANDBY)
    assert (kept.role, kept.in_control) == (Role.STANDBY, "")
    assert "no slurmctld answers" in kept.reason


def test_an_agent_on_a_host_that_is_no_controller_is_told_how_to_fix_it() -> None:
    with pytest.raises(NotAController, match="SlurmctldHost entries are ctl1, ctl2.*ha_host"):
        judge("login1", BOTH_UP, Role.STANDBY)


def test_a_lease_is_free_when_absent_released_or_own_and_else_only_once_it_stood_still() -> None:
    watch = LeaseWatch(lease_seconds=10)
    assert watch.free_for("b:2", None, now=0)
    assert watch.free_for("b:2", Lease("b:2", 5), now=0)
    assert watch.free_for("b:2", Lease("a:1", 5, released=True), now=0)
    assert not watch.free_for("b:2", Lease("a:1", 5), now=1)
    assert not watch.free_for("b:2", Lease("a:1", 5), now=10.9)
    assert not watch.free_for("b:2", Lease("a:1", 6), now=11)  # renewed: the wait starts again
    assert not watch.free_for("b:2", Lease("a:1", 6), now=20.9)
    assert watch.free_for("b:2", Lease("a:1", 6), now=21)


class Cluster:
    """What `scontrol ping` answers, changed by the test; a SlurmError when `broken`."""

    def __init__(self, pings: list[ControllerPing]) -> None:
        self.pings = pings
        self.broken = False

    def __call__(self) -> list[ControllerPing]:
        if self.broken:
            raise SlurmError(["scontrol", "ping"], "no answer within 15 s", transient=True)
        return self.pings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watch_on(host: str, tmp_path: Path, cluster: Cluster, clock: Clock) -> ControlWatch:
    settings = Settings(state_db=tmp_path / "shared" / "ajr.db", failover=FailoverMode.SLURM, ha_host=host,
                        ha_lease_seconds=10, ha_status_file=tmp_path / host / "control.json")  # fmt: skip
    return ControlWatch(settings, ping=cluster, clock=clock)


def test_the_backup_agent_takes_over_when_the_primary_agent_lets_go(tmp_path: Path) -> None:
    cluster, clock = Cluster(BOTH_UP), Clock()
    first, second = watch_on("ctl1", tmp_path, cluster, clock), watch_on("ctl2", tmp_path, cluster, clock)
    assert first.check().role is Role.ACTIVE
    assert second.check().role is Role.STANDBY
    lease = LeaseFile(lease_path(first.settings)).read()
    assert lease is not None and lease.holder == first.holder
    assert first.check().role is Role.ACTIVE
    assert LeaseFile(lease_path(first.settings)).read() == Lease(first.holder, lease.serial + 1)

    cluster.pings = PRIMARY_DOWN
    assert first.check().role is Role.STANDBY
    # The first agent has not stopped acting yet: its lease holds the second one off.
    waiting = second.check()
    assert waiting.role is Role.STANDBY and f"waiting for {first.holder}" in waiting.reason
    first.let_go()
    assert second.check().role is Role.ACTIVE
    assert LeaseFile(lease_path(first.settings)).read().holder == second.holder  # type: ignore[union-attr]


def test_a_silent_lease_holder_is_taken_over_after_the_lease_time(tmp_path: Path) -> None:
    cluster, clock = Cluster(BOTH_UP), Clock()
    first, second = watch_on("ctl1", tmp_path, cluster, clock), watch_on("ctl2", tmp_path, cluster, clock)
    first.check()
    cluster.pings = PRIMARY_DOWN  # ctl1's host is lost: its agent never checks again
    assert second.check().role is Role.STANDBY
    clock.now = 9.9
    assert second.check().role is Role.STANDBY
    clock.now = 10.0
    assert second.check().role is Role.ACTIVE


def test_an_active_agent_whose_lease_was_taken_stands_down(tmp_path: Path) -> None:
    cluster, clock = Cluster(BOTH_UP), Clock()
    first = watch_on("ctl1", tmp_path, cluster, clock)
    first.check()
    LeaseFile(lease_path(first.settings)).write(Lease("ctl2:99", 1))
    found = first.check()
    assert (found.role, found.reason) == (Role.STANDBY, "ctl2:99 took the lease")


def test_an_active_agent_cut_off_from_every_controller_stands_down_after_half_a_lease(tmp_path: Path) -> None:
    cluster, clock = Cluster(BOTH_UP), Clock()
    first = watch_on("ctl1", tmp_path, cluster, clock)
    first.check()
    cluster.broken = True
    clock.now = 1
    assert first.check().role is Role.ACTIVE  # a slurmctld restart is no reason to hand over
    clock.now = 6
    found = first.check()
    assert found.role is Role.STANDBY and "no slurmctld answered for 5 s" in found.reason


def test_each_agent_says_what_it_is_in_its_hosts_record_and_ajr_status_shows_it(tmp_path: Path) -> None:
    cluster, clock = Cluster(BOTH_UP), Clock()
    second = watch_on("ctl2", tmp_path, cluster, clock)
    second.check()
    record = ControlRecordFile(second.settings.ha_status_file).read()
    assert record is not None and (record.host, record.role, record.in_control) == ("ctl2", Role.STANDBY, "ctl1")
    assert queries.control_record(second.settings) == record
    assert queries.control_record(second.settings.with_overrides(failover=FailoverMode.OFF)) is None
    store = Store(tmp_path / "status.db")
    store.set_meta(agent_host="ctl1", last_poll_at=record.checked_at)
    overview = queries.overview(store, JobsQuery(), record.checked_at, record)
    lines = status_lines(overview, record.checked_at)
    assert lines[0].startswith("this host (ctl2): standby, primary is ctl1 (since ")
    assert "the state database was last written by the agent on ctl1" in lines


def test_a_host_that_is_no_controller_is_a_configuration_error(tmp_path: Path) -> None:
    watch = watch_on("login1", tmp_path, Cluster(BOTH_UP), Clock())
    with pytest.raises(ConfigError, match="this host is 'login1'"):
        watch.check()


def test_under_failover_the_database_keeps_sqlites_rollback_journal(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db", wal=False)
    store.close()
    with sqlite3.connect(tmp_path / "ajr.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        # Leaving WAL needs the file to itself: an opener in WAL mode beside it is refused, not joined.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        with pytest.raises(StoreError, match="locked by another process"):
            Store(tmp_path / "ajr.db", wal=False, busy_timeout_ms=100)


MOUNTS = "/dev/sda1 / ext4 rw 0 0\nfiler:/ajr /shared nfs4 rw,vers=4.2 0 0\ntmpfs /run tmpfs rw 0 0\n"


def doctor_on(host: str, state_db: Path, pings: list[ControllerPing] = BOTH_UP, mounts: str = MOUNTS) -> list[Check]:
    settings = Settings(state_db=state_db, failover=FailoverMode.SLURM)
    return check_failover(settings, host, lambda: pings, mounts)


def test_doctor_checks_nothing_of_failover_when_it_is_off(tmp_path: Path) -> None:
    assert check_failover(Settings(state_db=tmp_path / "ajr.db"), "ctl1", lambda: BOTH_UP, MOUNTS) == []


def test_the_file_system_of_a_path_is_its_longest_mount_point() -> None:
    assert file_system_of(Path("/shared/ajr/ajr.db"), MOUNTS) == "nfs4"
    assert file_system_of(Path("/sharedother/x"), MOUNTS) == "ext4"
    assert file_system_of(Path("/run/ajr"), MOUNTS) == "tmpfs"


def test_doctor_finds_a_local_state_database_and_a_controller_that_never_ran_doctor(tmp_path: Path) -> None:
    checks = {c.name: c for c in doctor_on("ctl1", tmp_path / "ajr.db", mounts=f"/dev/sda1 {tmp_path} ext4 rw 0 0\n")}
    assert checks["failover"].ok and "its agent would be active" in checks["failover"].detail
    assert not checks["failover_storage"].ok and "a file system of this host alone" in checks["failover_storage"].detail
    hosts = checks["failover_hosts"]
    assert not hosts.ok and "no record of ctl2" in hosts.detail and "run `ajr doctor` on ctl2" in hosts.fix


def test_doctor_on_both_controllers_sees_the_shared_storage_and_a_differing_slurm_conf(tmp_path: Path) -> None:
    shared = tmp_path / "ajr.db"
    mounts = f"filer:/ajr {tmp_path} nfs4 rw 0 0\n"
    doctor_on("ctl1", shared, mounts=mounts)
    second = {c.name: c for c in doctor_on("ctl2", shared, mounts=mounts)}
    assert second["failover_storage"].ok and second["failover_hosts"].ok
    assert "primary is ctl1" in second["failover"].detail
    three = [*BOTH_UP, ControllerPing(2, "ctl3", True)]
    first = {c.name: c for c in doctor_on("ctl1", shared, three, mounts)}
    assert not first["failover_hosts"].ok and "ctl2 sees ctl1, ctl2" in first["failover_hosts"].detail


def test_doctor_refuses_a_host_that_is_no_controller_and_a_single_controller(tmp_path: Path) -> None:
    (stranger,) = doctor_on("login1", tmp_path / "ajr.db")
    assert not stranger.ok and "this host is 'login1'" in stranger.detail
    alone = doctor_on("ctl1", tmp_path / "ajr.db", [ControllerPing(0, "ctl1", True)])[0]
    assert not alone.ok and "there is no failover to follow" in alone.detail
