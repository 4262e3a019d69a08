"""When the disk fills, another process holds the lock, or the file is corrupt: real SQLite,
real files, a real full file system (a tiny tmpfs; these tests need root to mount it)."""

from __future__ import annotations

from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import called, running

import errno
import logging
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from ajr_agent.runtime.agent import Agent, load_rules

from ajr_agent.runtime.inline_pool import InlinePool
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.logs import FilePosition
from ajr_agent.domain.model import Action, ActionKind, ManagedJob, Note
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.adapters.store import (
    AGENT_BUSY_TIMEOUT_MS,
    DEFAULT_BUSY_TIMEOUT_MS,
    FollowedFile,
    Reading,
    Store,
    StoreCorruptError,
    StoreFullError,
    StoreLockedError,
)

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
RESERVE = 256 * 1024


def job(**changes: object) -> ManagedJob:
    values = dict(job_id=42, name="train", user="alice", user_id=1000, mode=ResumeMode.REQUEUE,
                  requested_limit=3, limit=3)  # fmt: skip
    return ManagedJob(**(values | changes))  # type: ignore[arg-type]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own, unmounted afterwards."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"cannot mount a 2 MiB tmpfs at {mount_point} (these tests need root): "
                    f"{done.stderr.strip() or done.returncode}")  # fmt: skip
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)]).returncode != 0:
            # Still in use (a test failed with a file open): detach it, and say so.
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
            pytest.fail(f"{mount_point} was still in use at the end of the test")


def fill(directory: Path, leave: int = 0) -> Path:
    """A file that takes every free block of the file system `directory` is on, but `leave` bytes."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096):
            while True:
                try:
                    os.write(fd, b"\xa5" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


# ---- a full disk -----------------------------------------------------------------------------------


def test_a_full_disk_releases_the_reserve_and_the_journal_goes_on(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tiny_fs / "ajr.db"
    store = Store.open_for_agent(db, reserve_bytes=RESERVE)
    reserve = tiny_fs / "ajr.db.reserve"
    assert reserve.stat().st_size == RESERVE
    store.save_job(job())
    filler = fill(tiny_fs)
    journaled: list[int] = []
    after_release = 0
    with caplog.at_level(logging.WARNING, logger="ajr.store"):
        with pytest.raises(StoreFullError) as raised:
            for n in range(100_000):
                action = store.journal(Action(ActionKind.REQUEUE_HOLD, 42, n, "x" * 400), dry_run=False, now=T0 + n)
                journaled.append(action.journal_id)  # type: ignore[arg-type]
                store.add_note(42, n, T0 + n, Note("failure", f"attempt {n} failed: " + "y" * 400))
                if store.low_space:
                    after_release += 1
                    # While the reserve is spent, bulk writes are left out: the journal comes first.
                    store.add_throughput([Reading(42, n, T0 + n, 400.0)])
                    store.add_note(42, n, T0 + n, Note("checkpoint", "saved"))
    [released] = [r for r in caplog.records if "reserve" in r.getMessage() and r.levelno == logging.CRITICAL]
    assert str(reserve) in released.getMessage() and "free space" in released.getMessage()
    assert not reserve.exists()
    assert after_release >= 150, "the reserve bought too little room"  # ~900 bytes of rows a round
    assert store.throughput(42) == [] and not any(e.kind == "checkpoint" for e in store.events(42))
    message = str(raised.value)
    assert message.startswith(f"disk full at {db}: ") and "free space on that file system" in message
    # Every action journaled before the disk was full for good is there.
    assert [entry.id for entry in store.actions(42)] == journaled

    filler.unlink()
    with caplog.at_level(logging.WARNING, logger="ajr.store"):
        assert store.check_space() is True
    assert reserve.stat().st_size == RESERVE and not store.low_space
    assert any("reserve" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)
    store.add_throughput([Reading(42, 0, T0, 400.0)])
    assert store.throughput(42) == [(0, T0, 400.0)]
    store.close()


def test_a_write_the_full_disk_rolled_back_is_run_again_in_the_room_of_the_reserve(tiny_fs: Path) -> None:
    store = Store.open_for_agent(tiny_fs / "ajr.db", reserve_bytes=RESERVE)
    # Room enough not to give the reserve back before writing, too little for what comes.
    fill(tiny_fs, leave=RESERVE // 4 + 16384)
    followed = [FollowedFile(42, 0, FilePosition(f"/runs/train_42_{n:05d}.log", n, 1, 4096)) for n in range(3000)]
    store.save_files(followed)
    assert store.files(42) == followed and store.low_space
    store.close()


def test_a_transaction_the_full_disk_rolled_back_is_said_and_the_next_write_has_room(tiny_fs: Path) -> None:
    store = Store.open_for_agent(tiny_fs / "ajr.db", reserve_bytes=RESERVE)
    with pytest.raises(StoreFullError, match="this write was rolled back, and the reserve given back so that the "
                                             "next one has room"):  # fmt: skip
        with store.transaction():
            store.save_job(job())
            fill(tiny_fs)  # the disk fills while the decision is being written
            store.journal(Action(ActionKind.REQUEUE_HOLD, 42, 0, "segfault"), dry_run=False, now=T0)
    assert store.job(42) is None and store.actions(42) == []  # all or nothing
    with store.transaction():
        store.save_job(job())
        store.journal(Action(ActionKind.REQUEUE_HOLD, 42, 0, "segfault"), dry_run=False, now=T0)
    assert store.job(42) == job() and len(store.actions(42)) == 1
    store.close()


def test_a_disk_full_at_start_gives_the_reserve_back_and_the_agent_starts(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tiny_fs / "ajr.db"
    Store.open_for_agent(db, reserve_bytes=RESERVE).close()
    fill(tiny_fs)  # while the agent was stopped
    with caplog.at_level(logging.WARNING, logger="ajr.store"):
        store = Store.open_for_agent(db, reserve_bytes=RESERVE)
    assert store.low_space and not (tiny_fs / "ajr.db.reserve").exists()
    assert any(r.levelno == logging.CRITICAL and "given back" in r.getMessage() for r in caplog.records)
    store.journal(Action(ActionKind.RELEASE, 42, 0, "held"), dry_run=False, now=T0)
    store.close()


def test_a_disk_full_at_start_without_a_reserve_is_said_plainly(tiny_fs: Path) -> None:
    db = tiny_fs / "ajr.db"
    Store(db).close()
    fill(tiny_fs)
    with pytest.raises(StoreFullError, match=f"disk full at {db}: 0 bytes left on its file system .*free space on "
                                             "that file system"):  # fmt: skip
        Store.open_for_agent(db, reserve_bytes=RESERVE)


def test_too_little_room_for_the_reserve_at_start_is_said(tiny_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    Store(tiny_fs / "ajr.db").close()
    fill(tiny_fs, leave=RESERVE)  # room to work, not twice the reserve
    with caplog.at_level(logging.WARNING, logger="ajr.store"):
        store = Store.open_for_agent(tiny_fs / "ajr.db", reserve_bytes=RESERVE)
    assert not (tiny_fs / "ajr.db.reserve").exists() and store.low_space
    [said] = [r.getMessage() for r in caplog.records if "reserve" in r.getMessage()]
    assert "cannot set aside" in said and str(tiny_fs) in said
    store.close()


def test_a_store_without_reserve_says_the_disk_is_full(tiny_fs: Path) -> None:
    store = Store(tiny_fs / "ajr.db")
    fill(tiny_fs)
    with pytest.raises(StoreFullError, match=f"disk full at {tiny_fs / 'ajr.db'}: .*free space on that file system"):
        for n in range(100_000):
            store.add_note(42, 0, float(n), Note("failure", "z" * 900))
    store.close()


# ---- a lock held by someone else ---------------------------------------------------------------------


def test_a_write_lock_held_elsewhere_fails_the_agents_write_fast_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    store = Store.open_for_agent(path, reserve_bytes=0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("begin immediate")  # as an sqlite3 shell with an open transaction would
    started = time.monotonic()
    with pytest.raises(StoreLockedError) as raised:
        store.save_job(job())
    waited = time.monotonic() - started
    assert AGENT_BUSY_TIMEOUT_MS / 1000 * 0.8 <= waited < 1.0
    message = str(raised.value)
    assert message.startswith(f"state database {path} locked by another process for more than "
                              f"{AGENT_BUSY_TIMEOUT_MS} ms: something else holds a write lock")  # fmt: skip
    assert "fuser" in message
    other.execute("rollback")
    store.save_job(job())
    assert store.job(42) == job()
    other.close()


def test_an_operators_write_waits_for_the_agents_lock(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    Store(path).close()
    agent = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    agent.execute("begin immediate")  # the agent writing a backlog's readings
    releasing = threading.Timer(0.5, agent.execute, ["commit"])
    releasing.start()
    operator = Store(path)  # the CLI's
    assert operator.busy_timeout_ms == DEFAULT_BUSY_TIMEOUT_MS >= 1000
    operator.forget(42, "root", T0)
    releasing.join()
    assert operator.forgotten() == {42: "root"}
    operator.close()
    agent.close()


def test_a_reader_does_not_block_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    store = Store(path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("begin")
    reader.execute("select count(*) from jobs").fetchone()
    store.save_job(job())  # WAL: a reader's open transaction holds no lock against the writer
    reader.execute("rollback")
    reader.close()


# ---- a corrupt file -----------------------------------------------------------------------------------


def truncated(path: Path) -> bytes:
    """A real state database with rows on many pages, cut in half; its bytes."""
    store = Store(path)
    for n in range(400):
        store.add_note(n, 0, float(n), Note("failure", "w" * 900))
    store.close()
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_database_is_moved_aside_at_agent_start_and_a_new_one_begins(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ajr.db"
    if damage == "garbage":
        data = b"\x00\x13 not a database, whatever it was \xff" * 300
        path.write_bytes(data)
    else:
        data = truncated(path)
    with caplog.at_level(logging.WARNING, logger="ajr.store"):
        store = Store.open_for_agent(path, reserve_bytes=0, now=lambda: T0)
    moved = tmp_path / "ajr.db.corrupt-20260101T000000Z"
    assert store.quarantined == moved and moved.read_bytes() == data
    [said] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert f"moved aside to {moved}" in said.getMessage() and "new, empty" in said.getMessage()
    store.save_job(job())
    assert store.job(42) == job()
    store.close()
    # Started again, the new database is fine and stays.
    again = Store.open_for_agent(path, reserve_bytes=0)
    assert again.quarantined is None and again.job(42) == job()
    again.close()


def test_after_moving_a_corrupt_database_aside_the_agent_recovers_jobs(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    path.write_bytes(b"garbage " * 1000)
    settings = Settings(state_db=path, rules_dirs=(), spool_dir=tmp_path / "spool", clear_begin_time=True)
    queue = MemorySlurm()
    agent = Agent(settings, Store.open_for_agent(path, reserve_bytes=0), queue, load_rules(settings), pool=InlinePool())
    queue.jobs[7] = running(tmp_path)
    agent.poll(200.0)
    queue.jobs[7] = running(tmp_path, state="FAILED", end_time=201.0)
    agent.poll(202.0)
    assert called(queue)[0] == "requeue_hold 7"
    agent.store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_other_openers_are_told_and_leave_a_corrupt_database_where_it_is(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    if damage == "garbage":
        path.write_bytes(b"garbage " * 1000)
        data = path.read_bytes()
    else:
        data = truncated(path)
    with pytest.raises(StoreCorruptError, match=f"state database {path} is corrupt .*: the agent moves it aside"):
        store = Store(path)
        store.load_jobs(include_gone=True)
        store.events(399)
    with pytest.raises(StoreCorruptError):
        store = Store(path, readonly=True)
        store.integrity()
    assert path.read_bytes() == data and list(tmp_path.glob("ajr.db.corrupt-*")) == []


# ---- the agent over a store that fails -------------------------------------------------------------

LOG = "train_7_date_26-01-01_time_00-00-00.log"
SEGFAULT = "Rank0: (1) segmentation fault: artificial segfault\n"


def agent_over(db: Path, logs: Path, queue: MemorySlurm, reserve: int = 0) -> Agent:
    settings = Settings(state_db=db, rules_dirs=(), spool_dir=logs / "spool", clear_begin_time=False)
    store = Store.open_for_agent(db, reserve_bytes=reserve)
    store.set_meta(watching_since=1.0)
    agent = Agent(settings, store, queue, load_rules(settings), pool=InlinePool())
    queue.jobs[7] = running(logs)
    (logs / LOG).write_text("step 1\n")
    agent.poll(T0)
    agent.read_logs(T0 + 0.5)
    assert agent.store.files(7), "the job's log is followed"
    return agent


def fail_in_log(agent: Agent, logs: Path, at: float) -> None:
    with (logs / LOG).open("a") as handle:
        handle.write(SEGFAULT)
    agent.read_logs(at)


def test_a_full_disk_holds_recovery_back_until_there_is_room_and_loses_no_failure(
    tiny_fs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = MemorySlurm()
    agent = agent_over(tiny_fs / "ajr.db", tmp_path, queue)
    filler = fill(tiny_fs)
    with caplog.at_level(logging.ERROR, logger="ajr.agent"):
        fail_in_log(agent, tmp_path, T0 + 1)
        for second in range(2, 12):  # many more passes than a poisonous line gets
            agent.poll(T0 + second)
            agent.read_logs(T0 + second + 0.5)
    assert called(queue) == [], "no action runs that could not be journaled first"
    said = [r.getMessage() for r in caplog.records if "state database" in r.getMessage()]
    assert len(said) == 1 and "full" in said[0] and "No job is requeued or released" in said[0]
    filler.unlink()
    for second in range(20, 23):
        agent.poll(T0 + second)
        agent.read_logs(T0 + second + 0.5)
    assert called(queue).count("requeue_hold 7") == 1, "the failure was kept, and handled once"
    assert agent.guard.store_trouble is None
    agent.store.close()


def test_with_a_reserve_a_full_disk_does_not_even_delay_recovery(tiny_fs: Path, tmp_path: Path) -> None:
    queue = MemorySlurm()
    agent = agent_over(tiny_fs / "ajr.db", tmp_path, queue, reserve=RESERVE)
    fill(tiny_fs)
    fail_in_log(agent, tmp_path, T0 + 1)
    assert called(queue)[0] == "requeue_hold 7"
    agent.poll(T0 + 2)
    assert called(queue).count("release 7") == 1
    agent.store.close()


class FillsTheDiskWhenItRequeues(MemorySlurm):
    """Slurm requeues the job, and in that instant the state database's disk fills."""

    disk: Path | None = None

    def requeue_hold(self, job_id: int) -> None:
        super().requeue_hold(job_id)
        assert self.disk is not None
        fill(self.disk)


def test_slurms_answer_whose_decision_could_not_be_saved_is_decided_again(tiny_fs: Path, tmp_path: Path) -> None:
    queue = FillsTheDiskWhenItRequeues()
    queue.disk = tiny_fs
    agent = agent_over(tiny_fs / "ajr.db", tmp_path, queue)
    fail_in_log(agent, tmp_path, T0 + 1)
    assert called(queue) == ["requeue_hold 7"]
    assert agent.unsaved_outcomes, "the requeuehold's outcome waits for room"
    agent.poll(T0 + 2)  # still full: nothing is lost, nothing runs
    assert called(queue) == ["requeue_hold 7"]
    (tiny_fs / "filler").unlink()
    agent.poll(T0 + 3)  # the outcome is decided: held
    agent.poll(T0 + 4)  # Slurm shows it pending: released
    assert called(queue).count("requeue_hold 7") == 1 and called(queue).count("release 7") == 1
    assert [e.status for e in agent.store.actions(7) if e.action.kind is ActionKind.REQUEUE_HOLD] == ["done"]
    agent.store.close()


def test_a_locked_database_holds_recovery_back_only_while_the_lock_is_held(tmp_path: Path) -> None:
    queue = MemorySlurm()
    agent = agent_over(tmp_path / "ajr.db", tmp_path, queue)
    holder = sqlite3.connect(tmp_path / "ajr.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    fail_in_log(agent, tmp_path, T0 + 1)
    agent.poll(T0 + 2)
    assert called(queue) == []
    holder.execute("ROLLBACK")
    holder.close()
    agent.read_logs(T0 + 3)
    agent.poll(T0 + 4)
    assert called(queue).count("requeue_hold 7") == 1
    agent.store.close()


def test_a_database_that_turns_corrupt_under_the_agent_stops_it_for_a_restart(tmp_path: Path) -> None:
    from ajr_agent.runtime.guard import EXIT_RESTART

    queue = MemorySlurm()
    agent = agent_over(tmp_path / "ajr.db", tmp_path, queue)
    # Everything in the file itself, then the file overwritten, as a failing disk or a stray
    # `dd` would; a page cache of one page makes the connection read the damage at once.
    agent.store.conn.execute("PRAGMA cache_size = 1")
    agent.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = (tmp_path / "ajr.db").stat().st_size
    with open(tmp_path / "ajr.db", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xa5" * (size - 100))
    for second in range(2, 5):
        agent.poll(T0 + second)
    assert agent.guard.exit_code == EXIT_RESTART and agent.stop_requested.is_set()
