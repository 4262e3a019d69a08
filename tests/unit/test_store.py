"""The SQLite store: round trips, the action journal, offsets, migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ajr_agent.adapters.logs import FilePosition
from ajr_agent.domain.model import Action, ActionKind, ManagedJob, Note, Phase, UnmanagedJob
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.adapters.store import SCHEMA_VERSION, ActionStatus, FollowedFile, Store, StoreError


def job(**changes: object) -> ManagedJob:
    values = dict(job_id=42, name="train", user="alice", user_id=1000, mode=ResumeMode.REQUEUE,
                  requested_limit=3, limit=3)  # fmt: skip
    return ManagedJob(**(values | changes))  # type: ignore[arg-type]


def test_jobs_round_trip_and_gone_jobs_are_hidden_by_default(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    saved = job(phase=Phase.HELD, requeues_used=2, attempt_first_checkpoint=10.0, last_checkpoint=12.5)
    store.save_job(saved)
    store.save_job(job(job_id=43, phase=Phase.GONE))
    assert store.job(42) == saved
    assert list(store.load_jobs()) == [42]
    assert list(store.load_jobs(include_gone=True)) == [42, 43]
    assert store.job(99) is None


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    store = Store(path)
    store.save_job(job())
    store.add_note(42, 0, 5.0, Note("failure", "attempt 0 failed"), "/x.log", "segfault")
    store.close()
    again = Store(path)
    assert again.job(42) == job()
    assert [(e.kind, e.text, e.line) for e in again.events(42)] == [("failure", "attempt 0 failed", "segfault")]
    assert again.conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_events_come_in_time_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    store.add_note(42, 0, 9.0, Note("b", "later"))
    store.add_note(42, 0, 3.0, Note("a", "earlier"))
    assert [e.text for e in store.events(42)] == ["earlier", "later"]


def test_journal_tracks_an_action_from_decision_to_outcome(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    action = store.journal(Action(ActionKind.REQUEUE_HOLD, 42, 0, "segfault"), dry_run=False, now=1.0)
    assert action.journal_id is not None
    [entry] = store.open_actions()
    assert entry.status == ActionStatus.PENDING and entry.action == action and entry.tries == 0
    store.update_action(action, ActionStatus.RETRY, 2.0, error="timeout", next_try_at=4.0)
    [entry] = store.open_actions()
    assert entry.status == ActionStatus.RETRY and entry.tries == 1 and entry.next_try_at == 4.0
    store.update_action(action, ActionStatus.DONE, 5.0)
    assert store.open_actions() == []
    [entry] = store.actions(42)
    assert entry.status == ActionStatus.DONE and entry.tries == 2 and entry.error is None


def test_unjournaled_action_cannot_be_updated(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    with pytest.raises(StoreError, match="never journaled"):
        store.update_action(Action(ActionKind.RELEASE, 1, 0, "r"), ActionStatus.DONE, 1.0)


def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.save_job(job())
            store.journal(Action(ActionKind.REQUEUE_HOLD, 42, 0, "x"), dry_run=False, now=1.0)
            raise RuntimeError("crash between the two writes")
    assert store.job(42) is None and store.open_actions() == []


def test_file_positions_round_trip_and_are_forgotten_with_the_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    followed = FollowedFile(42, 1, FilePosition("/runs/train_42_date_x.log", 77, 3, 4096))
    store.save_files([followed])
    store.save_files([FollowedFile(42, 1, FilePosition("/runs/train_42_date_x.log", 77, 3, 8192))])
    assert store.files(42) == [FollowedFile(42, 1, FilePosition("/runs/train_42_date_x.log", 77, 3, 8192))]
    store.forget_files(42)
    assert store.files() == []


def test_unmanaged_jobs_keep_their_reason(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    store.save_unmanaged(UnmanagedJob(5, "train", "bob", "APS?", "not valid JSON", 1.0))
    assert store.unmanaged(5)[0].problem == "not valid JSON"
    assert store.unmanaged(6) == []


def test_meta_round_trips_json_values(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    store.set_meta(backend="commands", last_poll_at=12.5, dry_run=True)
    assert store.meta() == {"backend": "commands", "last_poll_at": 12.5, "dry_run": True}


def test_newer_schema_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("update meta set value = '99' where key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(path)


def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the state database"):
        Store(blocker / "ajr.db")


# ---- sqlite-utils over the store's connection ----------------------------------------------------


def test_reads_inside_a_transaction_leave_its_control_to_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.save_job(job())
            store.journal(Action(ActionKind.REQUEUE_HOLD, 42, 0, "x"), dry_run=False, now=1.0)
            # Reads through sqlite-utils see the transaction's writes and commit nothing.
            assert store.job(42) == job() and len(store.open_actions()) == 1 and store.drains_since(0.0) == 0
            raise RuntimeError("crash after the reads")
    control = [s for s in statements if s.split()[0].upper() in ("BEGIN", "COMMIT", "END", "ROLLBACK")]
    assert control == ["BEGIN IMMEDIATE", "ROLLBACK"]
    assert store.job(42) is None and store.open_actions() == []


def test_a_read_only_store_reads_everything_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    writer = Store(path)
    writer.save_job(job())
    writer.add_note(42, 0, 5.0, Note("failure", "attempt 0 failed"))
    writer.journal(Action(ActionKind.REQUEUE_HOLD, 42, 0, "segfault"), dry_run=False, now=1.0)
    writer.save_files([FollowedFile(42, 0, FilePosition("/runs/a.log", 1, 2, 3))])
    writer.set_meta(backend="commands")
    writer.close()
    original = path.read_bytes()
    store = Store(path, readonly=True)
    assert store.job(42) == job() and [e.text for e in store.events(42)] == ["attempt 0 failed"]
    assert len(store.open_actions()) == 1 and store.files(42)[0].position.offset == 3
    assert store.meta() == {"backend": "commands"} and store.drains_since(0.0) == 0
    # sqlite-utils set nothing on the connection (it would turn recursive_triggers on).
    assert store.conn.execute("PRAGMA recursive_triggers").fetchone()[0] == 0
    store.close()
    assert path.read_bytes() == original


def test_a_missing_table_is_an_error_not_an_empty_read(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    path.write_bytes(b"")
    store = Store(path, readonly=True)
    with pytest.raises(StoreError, match="no such table: meta"):
        store.meta()
    with pytest.raises(StoreError, match="no such table: events"):
        store.events(42)


def test_sqlite_s_own_tables_are_no_part_of_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    store = Store(path)
    store.save_job(job())
    store.conn.execute("ANALYZE")  # makes sqlite_stat1
    store.close()
    again = Store(path)
    assert again.schema_version == SCHEMA_VERSION and again.job(42) == job()
