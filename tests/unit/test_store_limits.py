"""Bounded storage: excerpts of long lines, per-job caps on notes, thinned throughput, retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ajr_agent.adapters.logs import FilePosition
from ajr_agent.domain.model import (
    Action,
    ActionKind,
    Attempt,
    ManagedJob,
    Note,
    Outcome,
    Phase,
    UnmanagedJob,
    Verdict,
)
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.adapters.store import (
    BULK_NOTE_KINDS,
    EXCERPT_BYTES,
    ActionStatus,
    FollowedFile,
    Limits,
    Pruned,
    Reading,
    Store,
    StoreError,
    excerpt,
)

DAY = 86_400.0


def job(job_id: int = 42, **changes: object) -> ManagedJob:
    values = dict(job_id=job_id, name="train", user="alice", user_id=1000, mode=ResumeMode.REQUEUE,
                  requested_limit=3, limit=3)  # fmt: skip
    return ManagedJob(**(values | changes))  # type: ignore[arg-type]


# ---- excerpts ----------------------------------------------------------------------------------


def test_a_short_text_is_kept_whole() -> None:
    assert excerpt("Rank0: segfault") == "Rank0: segfault"
    assert excerpt("é" * 512) == "é" * 512  # 1024 bytes exactly


def test_a_long_text_is_cut_on_a_character_boundary_with_a_marker() -> None:
    line = "x" + "é" * 40_000  # 80,001 bytes; a cut at 1 KiB would fall inside a character
    cut = excerpt(line)
    data = cut.encode("utf-8")
    assert len(data) <= EXCERPT_BYTES and len(data) > EXCERPT_BYTES - 40
    kept, marker = cut.rsplit(" [", 1)
    assert line.startswith(kept)
    assert marker == f"cut: {len(line.encode()) - len(kept.encode())} more bytes]"


def test_lines_and_texts_of_notes_are_stored_as_excerpts(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    store.add_note(42, 0, 1.0, Note("failure", "attempt 0 failed: " + "y" * 5000), "/x.log", "NCCL " + "z" * 65_000)
    [event] = store.events(42)
    assert len(event.line.encode()) <= EXCERPT_BYTES and event.line.startswith("NCCL zzz")  # type: ignore[union-attr]
    assert len(event.text.encode()) <= EXCERPT_BYTES and "more bytes]" in event.text


def test_verdict_evidence_is_stored_as_excerpts(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    store.save_verdict(42, 0, 1.0, Verdict("node", ("gpu-1",), "xid", ("log: " + "q" * 70_000, "short")))
    [(_, _, _, verdict)] = store.verdicts([42])
    assert [len(e.encode()) <= EXCERPT_BYTES for e in verdict.evidence] == [True, True]
    assert verdict.evidence[1] == "short"


# ---- caps on notes -----------------------------------------------------------------------------


def test_bulk_notes_past_the_cap_drop_the_oldest_and_are_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db", limits=Limits(max_bulk_notes_per_job=5))
    assert {"checkpoint", "log", "ignored", "duplicate"} <= BULK_NOTE_KINDS
    store.add_note(42, 0, 0.5, Note("managed", "managed in requeue mode"))
    for second in range(1, 9):
        store.add_note(42, 0, float(second), Note("checkpoint", f"checkpoint {second}"))
    store.add_note(42, 0, 9.0, Note("log", "following x.log"))
    assert [e.text for e in store.events(42)] == [
        "managed in requeue mode", "checkpoint 5", "checkpoint 6", "checkpoint 7", "checkpoint 8", "following x.log",
    ]  # fmt: skip
    assert store.dropped_notes(42) == {"checkpoint": 4}
    store.add_note(43, 0, 1.0, Note("checkpoint", "another job has a cap of its own"))
    assert len(store.events(43)) == 1 and store.dropped_notes(43) == {}


def test_decision_notes_are_kept_past_the_bulk_cap(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db", limits=Limits(max_bulk_notes_per_job=2, max_notes_per_job=100))
    for second in range(10):
        store.add_note(42, second, float(second), Note("failure", f"attempt {second} failed"))
        store.add_note(42, second, second + 0.5, Note("checkpoint", "saved"))
    kinds = [e.kind for e in store.events(42)]
    assert kinds.count("failure") == 10 and kinds.count("checkpoint") == 2


def test_past_the_hard_cap_new_notes_are_counted_not_stored(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db", limits=Limits(max_bulk_notes_per_job=2, max_notes_per_job=4))
    for second in range(6):
        store.add_note(42, 0, float(second), Note("action", f"action {second}"))
    assert [e.text for e in store.events(42)] == ["action 0", "action 1", "action 2", "action 3"]
    assert store.dropped_notes(42) == {"action": 2}


# ---- throughput --------------------------------------------------------------------------------


def test_throughput_of_an_attempt_is_thinned_to_its_cap_over_its_whole_span(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db", limits=Limits(max_readings_per_attempt=100))
    for start in range(0, 1000, 50):  # 1000 readings, one a second, in reads of 50
        store.add_throughput([Reading(42, 0, float(t), 400.0 + t % 7) for t in range(start, start + 50)])
    series = store.throughput(42, 0)
    assert 50 <= len(series) <= 100
    times = [at for _, at, _ in series]
    assert times[0] < 20 and times[-1] > 960  # the whole attempt, not just its end
    gaps = {b - a for a, b in zip(times, times[1:])}
    assert max(gaps) <= 2 * min(gaps)  # evenly spread
    store.add_throughput([Reading(42, 1, 5.0, 1.0)])
    assert store.throughput(42, 1) == [(1, 5.0, 1.0)]


def test_a_backlog_in_one_call_is_thinned_too(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db", limits=Limits(max_readings_per_attempt=1000))
    store.add_throughput([Reading(42, 0, float(t), 1.0) for t in range(20_000)])
    assert 500 <= len(store.throughput(42, 0)) <= 1000


def test_thinning_goes_on_from_what_a_reopened_store_finds(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    store = Store(path, limits=Limits(max_readings_per_attempt=100))
    store.add_throughput([Reading(42, 0, float(t), 1.0) for t in range(90)])
    store.close()
    again = Store(path, limits=Limits(max_readings_per_attempt=100))
    again.add_throughput([Reading(42, 0, float(t), 1.0) for t in range(90, 200)])
    assert len(again.throughput(42, 0)) <= 100


# ---- retention ---------------------------------------------------------------------------------


def story(store: Store, job_id: int, at: float, **changes: object) -> None:
    """A job with something in every table that holds a job's rows."""
    saved = job(job_id, last_seen=at, attempt_started=at - 100, **changes)
    store.save_job(saved)
    store.add_note(job_id, 0, at, Note("failure", "attempt 0 failed"), "/x.log", "segfault")
    store.add_throughput([Reading(job_id, 0, at - 50, 400.0)])
    store.save_verdict(job_id, 0, at, Verdict("application", (), "segfault", ("x: segfault",)))
    store.save_files([FollowedFile(job_id, 0, FilePosition(f"/runs/{job_id}.log", 1, 1, 10))])
    action = store.journal(Action(ActionKind.REQUEUE_HOLD, job_id, 0, "segfault"), dry_run=False, now=at)
    store.update_action(action, ActionStatus.DONE, at)


def test_prune_removes_finished_jobs_past_the_retention_and_says_what_it_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db", limits=Limits(max_bulk_notes_per_job=1))
    now = 100 * DAY
    story(store, 1, now - 40 * DAY, phase=Phase.GONE)
    store.add_note(1, 0, now - 40 * DAY, Note("log", "a"))
    store.add_note(1, 0, now - 40 * DAY, Note("log", "b"))  # one dropped: counted
    story(store, 2, now - 40 * DAY, phase=Phase.FORGOTTEN)
    story(store, 3, now - 10 * DAY, phase=Phase.GONE)  # within the retention
    story(store, 4, now - 40 * DAY, phase=Phase.WATCHING)  # still managed, however old
    story(store, 5, now - 40 * DAY, phase=Phase.STOPPED)  # left as it is in Slurm: not finished for AJR
    pruned = store.prune(now, keep_seconds=30 * DAY)
    assert pruned == Pruned(jobs=2, attempts=2, events=3, dropped_notes=1, throughput=2, verdicts=2, files=2,
                            actions=2, unmanaged=0, more=False)  # fmt: skip
    assert pruned.total == 16
    assert sorted(store.load_jobs(include_gone=True)) == [3, 4, 5]
    for gone in (1, 2):
        assert store.events(gone) == [] and store.throughput(gone) == [] and store.files(gone) == []
        assert store.verdicts([gone]) == [] and store.actions(gone) == [] and store.attempts([gone]) == []
    assert store.dropped_notes(1) == {}
    assert len(store.events(3)) == 1 and len(store.throughput(4)) == 1
    assert store.prune(now, keep_seconds=30 * DAY).total == 0


def test_a_late_note_keeps_a_gone_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    now = 100 * DAY
    story(store, 1, now - 40 * DAY, phase=Phase.GONE)
    store.add_note(1, 0, now - DAY, Note("gone", "job left slurmctld's memory"))
    assert store.prune(now, keep_seconds=30 * DAY).jobs == 0


def test_prune_keeps_a_job_with_an_open_action_and_a_chain_with_a_live_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    now = 100 * DAY
    story(store, 1, now - 40 * DAY, phase=Phase.GONE)
    store.journal(Action(ActionKind.RELEASE, 1, 0, "held"), dry_run=False, now=now - 40 * DAY)  # still open
    story(store, 2, now - 40 * DAY, phase=Phase.GONE, chain="train@2")
    story(store, 3, now - 1 * DAY, phase=Phase.WATCHING, chain="train@2")
    story(store, 4, now - 40 * DAY, phase=Phase.GONE, chain="train@4")
    story(store, 5, now - 35 * DAY, phase=Phase.GONE, chain="train@4")
    assert store.prune(now, keep_seconds=30 * DAY).jobs == 2  # chain train@4, whole
    assert sorted(store.load_jobs(include_gone=True)) == [1, 2, 3]


def test_prune_works_in_batches(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    now = 100 * DAY
    for job_id in range(1, 8):
        story(store, job_id, now - 40 * DAY, phase=Phase.GONE)
    first = store.prune(now, keep_seconds=30 * DAY, max_jobs=5)
    assert (first.jobs, first.more) == (5, True)
    second = store.prune(now, keep_seconds=30 * DAY, max_jobs=5)
    assert (second.jobs, second.more) == (2, False)


def test_prune_removes_old_refused_specs_and_closed_operator_actions_of_unmanaged_jobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    now = 100 * DAY
    store.save_unmanaged(UnmanagedJob(7, "x", "bob", "APS?", "not JSON", now - 40 * DAY))
    store.save_unmanaged(UnmanagedJob(8, "x", "bob", "APS?", "not JSON", now - 1 * DAY))
    done = store.journal(Action(ActionKind.REQUEUE, 9, 0, "operator"), dry_run=False, now=now - 40 * DAY,
                         origin="operator:root")  # fmt: skip
    store.update_action(done, ActionStatus.DONE, now - 40 * DAY)
    pruned = store.prune(now, keep_seconds=30 * DAY)
    assert (pruned.unmanaged, pruned.actions) == (1, 1)
    assert [u.job_id for u in store.unmanaged()] == [8] and store.actions(9) == []


def test_attempt_rows_of_kept_jobs_survive_a_prune(tmp_path: Path) -> None:
    store = Store(tmp_path / "ajr.db")
    store.save_job(job(1, phase=Phase.WATCHING, attempt_started=5.0))
    store.prune(100 * DAY, keep_seconds=DAY)
    assert store.attempts([1]) == [Attempt(1, 0, 5.0, None, Outcome.RUNNING, "", None, None, "")]


def test_prune_is_one_transaction_per_batch(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    store = Store(path)
    story(store, 1, 0.0, phase=Phase.GONE)
    with sqlite3.connect(path) as other:
        other.execute("create trigger refuse before delete on files begin select raise(abort, 'no'); end")
    with pytest.raises(StoreError, match="no"):
        store.prune(100 * DAY, keep_seconds=DAY)
    assert store.events(1) != [] and store.job(1) is not None
