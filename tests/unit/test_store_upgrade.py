"""Upgrading in place: databases made by earlier AJR commits (tests/fixtures/db, made by
running those commits' code: see make_fixtures.py there) are migrated, keep every row,
and the agent goes on managing their jobs."""

from __future__ import annotations

from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import called, running

import contextlib
import logging
import shutil
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from ajr_agent.runtime.agent import Agent, load_rules

from ajr_agent.runtime.inline_pool import InlinePool
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.model import Attempt, ManagedJob, Phase, StopCause
from ajr_agent.adapters.store import MIGRATIONS, SCHEMA_VERSION, ActionStatus, Store, StoreSchemaError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "db"
# Both say schema_version 1; their tables differ (f2f5759 added columns and tables).
MADE_BY = {"state-dbc6637.db": 1, "state-c1e4a11.db": 2}
T0 = 1_767_225_600.0  # make_fixtures.py's clock


@dataclass(frozen=True)
class Old:
    """A copy of one fixture database, free to be changed, and the schema its tables have."""

    path: Path
    version: int


@pytest.fixture(params=sorted(MADE_BY))
def old(request: pytest.FixtureRequest, tmp_path: Path) -> Old:
    copy = tmp_path / "state" / "ajr.db"
    copy.parent.mkdir()
    shutil.copyfile(FIXTURES / request.param, copy)
    return Old(copy, MADE_BY[request.param])


Shape = dict[str, tuple[dict[str, tuple[str, int]], list[tuple[str, ...]]]]


def shape(conn: sqlite3.Connection) -> Shape:
    """Each table's columns (declared type, place in the primary key) and its indexes' columns."""
    tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table' "
                                         "and name not like 'sqlite_%'")]  # fmt: skip
    return {t: ({r[1]: (r[2].upper(), r[5]) for r in conn.execute(f'pragma table_info("{t}")')},
                sorted(_index_columns(conn, t))) for t in tables}  # fmt: skip


def _index_columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, ...]]:
    names = [r[1] for r in conn.execute(f'pragma index_list("{table}")') if r[3] == "c"]  # made by CREATE INDEX
    return [tuple(c[2] for c in conn.execute(f'pragma index_info("{name}")')) for name in names]


def built(version: int) -> sqlite3.Connection:
    """An empty database with migrations 1..version applied, as written out in store/migrations.py."""
    conn = sqlite3.connect(":memory:")
    for step in range(1, version + 1):
        conn.executescript(";\n".join(MIGRATIONS[step]))
    return conn


def rows(path: Path) -> dict[str, list[dict[str, object]]]:
    """Every row of every table, in rowid order."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table' "
                                             "and name not like 'sqlite_%'")]  # fmt: skip
        return {t: [dict(r) for r in conn.execute(f'select * from "{t}" order by rowid')] for t in tables}


def test_each_fixture_has_the_schema_its_migrations_write_out(old: Old) -> None:
    with contextlib.closing(sqlite3.connect(old.path)) as fixture:
        assert fixture.execute("select value from meta where key = 'schema_version'").fetchone() == ("1",)
        assert shape(fixture) == shape(built(old.version))


def test_a_fresh_database_has_the_schema_of_every_migration_in_turn(tmp_path: Path) -> None:
    Store(tmp_path / "ajr.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "ajr.db")) as conn:
        assert shape(conn) == shape(built(SCHEMA_VERSION))
        assert conn.execute("select value from meta where key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_every_field_of_the_records_has_a_column() -> None:
    # The schema is written out, not derived from the dataclasses: a field added to them
    # needs a migration, and this test says so.
    tables = shape(built(SCHEMA_VERSION))
    for record, table in ((ManagedJob, "jobs"), (Attempt, "attempts")):
        columns, _ = tables[table]
        assert {f.name for f in fields(record)} == set(columns), f"{record.__name__} and table {table} differ"


def test_an_old_database_is_migrated_in_place_and_keeps_every_row(old: Old) -> None:
    before = rows(old.path)
    Store(old.path).close()
    after = rows(old.path)
    for table, old_rows in before.items():
        if table == "meta":
            continue
        assert len(after[table]) == len(old_rows), table
        for was, now in zip(old_rows, after[table]):
            assert {k: now[k] for k in was} == was, table
    old_meta = {r["key"]: r["value"] for r in before["meta"]}
    new_meta = {r["key"]: r["value"] for r in after["meta"]}
    assert new_meta == {**old_meta, "schema_version": str(SCHEMA_VERSION)}
    with contextlib.closing(sqlite3.connect(old.path)) as conn:
        assert shape(conn) == shape(built(SCHEMA_VERSION))


def test_the_migrated_jobs_read_back_as_the_old_code_left_them(old: Old) -> None:
    store = Store(old.path)
    jobs = store.load_jobs(include_gone=True)
    assert {j: jobs[j].phase for j in jobs} == {
        101: Phase.WATCHING, 102: Phase.HELD, 103: Phase.RESTARTING, 104: Phase.STOPPED, 105: Phase.HANDED_OVER,
        106: Phase.WATCHING, 107: Phase.RELEASING, 109: Phase.FORGOTTEN, 110: Phase.GONE,
    }  # fmt: skip
    assert (jobs[101].requeues_used, jobs[101].attempt, jobs[101].handled_attempt, jobs[101].limit) == (1, 1, 0, 3)
    assert jobs[104].stop_reason == "segfault (segfault); requeue limit reached (0/0)"
    # Why a job stopped is a value now, read from the words the old code wrote.
    assert (jobs[104].stop_cause, jobs[109].stop_cause, jobs[101].stop_cause) == (StopCause.LIMIT,
                                                                                  StopCause.FORGOTTEN, None)  # fmt: skip
    assert (jobs[105].chain, jobs[105].successor) == ("chain@105", 106)
    assert (jobs[106].chain, jobs[106].requeues_used) == ("chain@105", 1)
    # Columns the old code did not have read back with the records' defaults.
    assert jobs[101].excluded_nodes == "" and jobs[101].straggler_reported is False
    if old.version >= 2:
        assert (jobs[103].verdict, jobs[103].excluded_nodes) == ("node", "node-4")
        assert [(job, verdict.fault) for job, _, _, verdict in store.verdicts([103])] == [(103, "node")]
        assert [value for _, _, value in store.throughput(101)] == [400.0, 401.0, 399.5, 402.5]
    else:
        assert store.verdicts([101, 103]) == [] and store.throughput(101) == []
    opened = {(e.action.job_id, e.action.kind.value): e.status for e in store.open_actions()}
    assert opened == {(107, "release"): ActionStatus.RETRY, (103, "annotate"): ActionStatus.PENDING}
    assert store.actions(101)[0].origin == "operator:root"
    assert [(f.attempt, f.position.offset > 0) for f in store.files(101)] == [(0, True), (1, True)]
    assert store.files(110) == []
    assert [a.attempt for a in store.attempts([101])] == [0, 1]
    assert store.forgotten() == {109: "root"}
    assert [u.job_id for u in store.unmanaged()] == [108]
    assert any(e.kind == "failure" for e in store.events(101))
    store.close()


def test_a_backup_is_made_before_migrating(old: Old, caplog: pytest.LogCaptureFixture) -> None:
    before = rows(old.path)
    with caplog.at_level(logging.INFO, logger="ajr.store"):
        store = Store(old.path, now=lambda: T0 + 3600)
    backup = old.path.parent / f"ajr.db.bak-v{old.version}-20260101T010000Z"
    assert store.backup == backup
    store.close()
    assert rows(backup) == before
    [message] = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert f"from schema {old.version} to {SCHEMA_VERSION}" in message and str(backup) in message
    # Opened again, nothing is left to do.
    Store(old.path).close()
    assert list(old.path.parent.glob("ajr.db.bak-*")) == [backup]


def test_read_only_open_says_a_migration_is_due_and_changes_nothing(old: Old) -> None:
    original = old.path.read_bytes()
    store = Store(old.path, readonly=True)
    assert store.pending_migration == (old.version, SCHEMA_VERSION)
    assert store.meta()["watching_since"] == 1.0
    store.close()
    assert old.path.read_bytes() == original
    assert list(old.path.parent.glob("ajr.db.bak-*")) == []


def test_the_agent_goes_on_managing_a_migrated_job(old: Old, tmp_path: Path) -> None:
    settings = Settings(state_db=old.path, rules_dirs=(), spool_dir=tmp_path / "spool", clear_begin_time=True)
    store = Store(old.path)
    queue = MemorySlurm()
    agent = Agent(settings, store, queue, load_rules(settings), pool=InlinePool())
    assert agent.jobs[101].requeues_used == 1
    # Attempt 1 of job 101, released by the old agent, has failed while the agent was being upgraded.
    spec = '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 3}}'
    queue.jobs[101] = running(tmp_path, job_id=101, name="llama", user="alice", comment=spec, restart_count=1,
                              start_time=T0 + 115, state="FAILED", end_time=T0 + 200, nodes="node-2")  # fmt: skip
    agent.poll(T0 + 210)
    assert "requeue_hold 101" in called(queue)
    [comment] = [c for c in called(queue) if c.startswith("update 101 AdminComment=")]
    assert comment.startswith("update 101 AdminComment=ajr: requeued after") and comment.endswith("(2/3)")
    job = agent.store.job(101)
    assert job is not None and (job.phase, job.requeues_used, job.handled_attempt) == (Phase.HELD, 2, 1)
    store.close()


def test_a_database_stamped_1_of_an_unknown_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    with sqlite3.connect(path) as conn:
        # The very first commit's tables: no attempts, no forgotten, actions without origin.
        conn.executescript("""
            create table jobs (job_id integer primary key, name text not null, user text not null);
            create table events (id integer primary key, job_id integer, at real, kind text, text text);
            create table meta (key text primary key, value text);
            insert into meta values ('schema_version', '1');
        """)
    original = path.read_bytes()
    with pytest.raises(StoreSchemaError, match=r"schema_version 1 but .* neither .* missing: .*attempts"):
        Store(path)
    assert path.read_bytes() == original and list(tmp_path.glob("ajr.db.bak-*")) == []


def test_a_database_from_a_newer_ajr_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ajr.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("update meta set value = ? where key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    with pytest.raises(StoreSchemaError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this AJR "
                                                f"understands \\({SCHEMA_VERSION}\\); upgrade AJR"):  # fmt: skip
        Store(path)
    with pytest.raises(StoreSchemaError, match="is newer"):
        Store(path, readonly=True)
