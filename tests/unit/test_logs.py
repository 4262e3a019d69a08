"""Tests of ajr_agent.adapters.logs: log file naming, discovery, tailing and change notification, on real files."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ajr_agent.adapters.logs import (
    ChangeWatcher,
    FilePosition,
    LogFinder,
    LogLine,
    LogTailer,
    TailNotice,
    TailNoticeKind,
    TailResult,
    find_job_logs,
    is_job_log_name,
    log_prefix,
)
from ajr_agent.detect.timestamps import line_time

EXAMPLE = "AJR-verification-test_42_date_26-11-27_time_00-44-51.log"


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


def kinds(notices: list[TailNotice]) -> list[str]:
    return [notice.kind for notice in notices]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


# --- naming -------------------------------------------------------------------------


def test_log_prefix() -> None:
    assert log_prefix("AJR-verification-test", 42) == "AJR-verification-test_42_date"


def test_accepts_the_example_name() -> None:
    assert is_job_log_name(EXAMPLE, "AJR-verification-test", 42)


@pytest.mark.parametrize(
    "file_name",
    [
        "AJR-verification-test_43_date_26-11-27_time_00-44-51.log",  # wrong id
        "AJR-verification-test_421_date_26-11-27_time_00-44-51.log",  # id with a digit more
        "other-test_42_date_26-11-27_time_00-44-51.log",  # wrong job name
        "xAJR-verification-test_42_date_26-11-27_time_00-44-51.log",  # wrong prefix
        "AJR-verification-test_42.log",  # no date part
        "AJR-verification-test_42_date_26-11-27.log",  # no time part
        "AJR-verification-test_42_date_26-11-27_time_00-44-51.log.1",  # rotated away
        "AJR-verification-test_42_date_26-11-27_time_00-44-51.txt",
        "AJR-verification-test_42_date_2026-11-27_time_00-44-51.log",
        "AJR-verification-test_42_date_٢٦-11-27_time_00-44-51.log",  # non-ASCII digits
    ],
)
def test_rejects_other_names(file_name: str) -> None:
    assert not is_job_log_name(file_name, "AJR-verification-test", 42)


def test_job_name_metacharacters_are_literal() -> None:
    assert is_job_log_name("a.b+c_7_date_26-01-02_time_03-04-05.log", "a.b+c", 7)
    # Unescaped, "." would match "X" and "b+" would match "bbb".
    assert not is_job_log_name("aXb+c_7_date_26-01-02_time_03-04-05.log", "a.b+c", 7)
    assert not is_job_log_name("a.bbbc_7_date_26-01-02_time_03-04-05.log", "a.b+c", 7)
    assert is_job_log_name("x(y)[z]*?_1_date_26-01-02_time_03-04-05.log", "x(y)[z]*?", 1)


# --- finding a job's logs: find_job_logs, and LogFinder, which lists a directory again only once it changed ---


def make_log(directory: Path, stamp: str, job_name: str = "train", job_id: int = 42) -> Path:
    path = directory / f"{job_name}_{job_id}_date_{stamp}.log"
    path.write_text("x\n")
    return path


Find = Callable[[str, int, Iterable[Path], "int | None"], list[Path]]
AN_HOUR_AGO = time.time() - 3600


def age(directories: Iterable[Path]) -> None:
    """Set the directories' mtime an hour back, as a directory nobody wrote to lately has."""
    for directory in directories:
        with contextlib.suppress(OSError):
            os.utime(directory, (AN_HOUR_AGO, AN_HOUR_AGO))


@pytest.fixture(params=["find_job_logs", "LogFinder", "LogFinder, listed before"])
def find(request: pytest.FixtureRequest) -> Find:
    """Each way of finding a job's logs, which must all find the same files."""
    if request.param == "find_job_logs":
        return find_job_logs
    finder = LogFinder()
    if request.param == "LogFinder":
        return finder.find

    def listed_before(job_name: str, job_id: int, dirs: Iterable[Path], owner_uid: int | None) -> list[Path]:
        dirs = list(dirs)
        age(dirs)
        first = finder.find(job_name, job_id, dirs, owner_uid)
        again = finder.find(job_name, job_id, dirs, owner_uid)
        assert again == first
        return again

    return listed_before


def test_finds_every_step_log_sorted(tmp_path: Path, find: Find) -> None:
    second = make_log(tmp_path, "26-11-27_time_01-00-00")
    first = make_log(tmp_path, "26-11-27_time_00-44-51")
    make_log(tmp_path, "26-11-27_time_00-44-51", job_id=43)
    make_log(tmp_path, "26-11-27_time_00-44-51", job_name="other")
    (tmp_path / "train_42_date_notes.txt").write_text("not a log\n")
    assert find("train", 42, [tmp_path], owner_uid=None) == [first, second]


def test_searches_several_dirs_once_each(tmp_path: Path, find: Find) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (tmp_path / "alias").symlink_to(work)
    in_work = make_log(work, "26-11-27_time_00-00-01")
    in_out = make_log(out, "26-11-27_time_00-00-02")
    found = find("train", 42, [work, out, tmp_path / "alias", work], owner_uid=None)
    assert found == [in_work, in_out]


def test_skips_symlinks_and_non_regular_files(tmp_path: Path, find: Find) -> None:
    target = tmp_path / "elsewhere.log"
    target.write_text("secret\n")
    (tmp_path / "train_42_date_26-11-27_time_00-00-01.log").symlink_to(target)
    (tmp_path / "train_42_date_26-11-27_time_00-00-02.log").mkdir()
    os.mkfifo(tmp_path / "train_42_date_26-11-27_time_00-00-03.log")
    real = make_log(tmp_path, "26-11-27_time_00-00-04")
    assert find("train", 42, [tmp_path], owner_uid=None) == [real]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_skips_files_of_another_owner(tmp_path: Path, find: Find) -> None:
    path = make_log(tmp_path, "26-11-27_time_00-44-51")
    os.chown(path, 12345, 12345)
    assert find("train", 42, [tmp_path], owner_uid=0) == []
    assert find("train", 42, [tmp_path], owner_uid=12345) == [path]
    assert find("train", 42, [tmp_path], owner_uid=None) == [path]


def test_missing_and_non_directory_dirs_are_skipped(tmp_path: Path, find: Find) -> None:
    real = make_log(tmp_path, "26-11-27_time_00-44-51")
    missing = tmp_path / "missing"
    a_file = tmp_path / "plain"
    a_file.write_text("")
    assert find("train", 42, [missing, a_file, tmp_path], owner_uid=None) == [real]
    assert find("train", 42, [missing], owner_uid=None) == []


def count_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the directories listed from now on."""
    listed: list[str] = []
    real_scandir = os.scandir

    def counted(path: str) -> object:
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr("ajr_agent.adapters.logs.discovery.os.scandir", counted)
    return listed


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unchanged_directory_is_not_listed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_log(tmp_path, "26-11-27_time_00-44-51")
    make_log(tmp_path, "26-11-27_time_00-44-51", job_id=43)
    age([tmp_path])
    listed = count_listings(monkeypatch)
    finder = LogFinder()
    for _ in range(3):
        assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first]
    assert listed == [str(tmp_path)]
    # Each job's files are its own: another job in the same directory gets its own listing.
    assert [p.name for p in finder.find("train", 43, [tmp_path], owner_uid=None)] == [first.name.replace("42", "43")]


def test_a_file_created_in_a_listed_directory_is_found_at_the_next_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_log(tmp_path, "26-11-27_time_00-44-51")
    age([tmp_path])
    finder = LogFinder()
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first]
    second = make_log(tmp_path, "26-11-27_time_01-00-00")
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first, second]
    # Changed a moment ago: listed at every look until its mtime is older than a coarse clock's tick.
    listed = count_listings(monkeypatch)
    finder.find("train", 42, [tmp_path], owner_uid=None)
    assert listed == [str(tmp_path)]


def test_a_file_created_within_the_same_tick_of_a_coarse_clock_is_not_missed(tmp_path: Path) -> None:
    # Lustre keeps whole seconds: a file created in the second the directory was listed leaves its
    # mtime as it was. So a listing of a directory changed that recently is never kept.
    tick = int(time.time())
    first = make_log(tmp_path, "26-11-27_time_00-44-51")
    os.utime(tmp_path, (tick, tick))
    finder = LogFinder()
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first]
    second = make_log(tmp_path, "26-11-27_time_01-00-00")
    os.utime(tmp_path, (tick, tick))
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first, second]


def test_an_unchanged_directory_is_listed_again_after_relist_after(tmp_path: Path) -> None:
    first = make_log(tmp_path, "26-11-27_time_00-44-51")
    age([tmp_path])
    clock = FakeClock()
    finder = LogFinder(relist_after=60.0, clock=clock)
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first]
    # What a directory's mtime does not show (a file given to the job's user by chown, say)
    # is found at the next listing after relist_after.
    second = make_log(tmp_path, "26-11-27_time_01-00-00")
    age([tmp_path])
    clock.now += 59.0
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first]
    clock.now += 2.0
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first, second]


def test_the_list_found_is_the_caller_s(tmp_path: Path) -> None:
    first = make_log(tmp_path, "26-11-27_time_00-44-51")
    age([tmp_path])
    finder = LogFinder()
    finder.find("train", 42, [tmp_path], owner_uid=None).clear()
    assert finder.find("train", 42, [tmp_path], owner_uid=None) == [first]


def test_a_directory_that_vanished_is_not_listed_from_memory(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    make_log(logs, "26-11-27_time_00-44-51")
    age([logs])
    finder = LogFinder()
    assert len(finder.find("train", 42, [logs], owner_uid=None)) == 1
    for path in logs.iterdir():
        path.unlink()
    logs.rmdir()
    assert finder.find("train", 42, [logs], owner_uid=None) == []


# --- LogTailer ---------------------------------------------------------------------------


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / EXAMPLE
    path.write_bytes(b"")
    return path


def test_lines_appear_incrementally(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    assert tailer.read(log_file).lines == []
    append(log_file, b"one\ntwo\n")
    result = tailer.read(log_file)
    assert result.lines == [
        LogLine(str(log_file), "one", 4, False, 0),
        LogLine(str(log_file), "two", 8, False, 4),
    ]
    assert result.notices == []
    assert tailer.read(log_file).lines == []
    append(log_file, b"three\n")
    assert texts(tailer.read(log_file).lines) == ["three"]
    position = tailer.position(log_file)
    info = log_file.stat()
    assert position == FilePosition(str(log_file), info.st_ino, info.st_dev, 14)


def test_rewind_reads_the_lines_after_a_position_again(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"one\n")
    tailer.read(log_file)
    saved = tailer.position(log_file)
    append(log_file, b"two\nthree\n")
    assert texts(tailer.read(log_file).lines) == ["two", "three"]
    tailer.rewind(log_file, saved)
    assert texts(tailer.read(log_file).lines) == ["two", "three"]
    tailer.rewind(log_file, None)
    assert texts(tailer.read_all()[42].lines) == ["one", "two", "three"]  # the key is kept

def test_existing_content_is_read_from_the_start(log_file: Path) -> None:
    log_file.write_bytes(b"early\n")
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    assert texts(tailer.read(log_file).lines) == ["early"]


def test_partial_line_waits_for_its_newline(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"done\npart")
    assert texts(tailer.read(log_file).lines) == ["done"]
    assert tailer.position(log_file).offset == 5
    assert tailer.read(log_file).lines == []
    append(log_file, b"ial")
    assert tailer.read(log_file).lines == []
    append(log_file, b" line\n")
    assert tailer.read(log_file).lines == [LogLine(str(log_file), "partial line", 18, False, 5)]


def test_resume_from_saved_position_does_not_reread(log_file: Path) -> None:
    first = LogTailer()
    first.follow(log_file, key=42)
    append(log_file, b"old 1\nold 2\n")
    assert texts(first.read(log_file).lines) == ["old 1", "old 2"]
    saved = first.position(log_file)

    append(log_file, b"written while down\n")
    second = LogTailer()
    second.follow(log_file, key=42, position=saved)
    result = second.read(log_file)
    assert texts(result.lines) == ["written while down"]
    assert result.notices == []


def test_saved_position_of_another_inode_reads_from_start(log_file: Path) -> None:
    first = LogTailer()
    first.follow(log_file, key=42)
    append(log_file, b"old file line\n")
    first.read(log_file)
    saved = first.position(log_file)

    fresh = log_file.with_name("fresh")
    fresh.write_bytes(b"new file line\nsecond\n")
    os.replace(fresh, log_file)
    second = LogTailer()
    second.follow(log_file, key=42, position=saved)
    result = second.read(log_file)
    assert texts(result.lines) == ["new file line", "second"]
    assert kinds(result.notices) == ["replaced"]


def test_saved_offset_beyond_size_reads_from_start(log_file: Path) -> None:
    log_file.write_bytes(b"a long first line\n")
    info = log_file.stat()
    log_file.write_bytes(b"short\n")  # same inode, truncated while the agent was down
    tailer = LogTailer()
    tailer.follow(log_file, key=42, position=FilePosition(str(log_file), info.st_ino, info.st_dev, 18))
    result = tailer.read(log_file)
    assert texts(result.lines) == ["short"]
    assert kinds(result.notices) == ["truncated"]


def test_position_of_another_path_is_refused(log_file: Path) -> None:
    tailer = LogTailer()
    with pytest.raises(ValueError, match="position of"):
        tailer.follow(log_file, key=42, position=FilePosition("/elsewhere.log", 1, 1, 10))


def test_truncation_gives_notice_and_rereads(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"before truncation\n")
    tailer.read(log_file)
    inode = log_file.stat().st_ino
    with open(log_file, "wb"):  # like `: > file`, or logrotate copytruncate
        pass
    append(log_file, b"after\n")
    assert log_file.stat().st_ino == inode
    result = tailer.read(log_file)
    assert kinds(result.notices) == ["truncated"]
    assert result.lines == [LogLine(str(log_file), "after", 6, False, 0)]
    assert tailer.read(log_file) == TailResult([], [])


def test_replacement_gives_notice_and_reads_new_file(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"a line of the old file\n")
    tailer.read(log_file)
    fresh = log_file.with_name("fresh")
    fresh.write_bytes(b"new 1\nnew 2\n")
    os.replace(fresh, log_file)
    result = tailer.read(log_file)
    assert kinds(result.notices) == ["replaced"]
    assert texts(result.lines) == ["new 1", "new 2"]
    assert tailer.position(log_file).inode == log_file.stat().st_ino
    append(log_file, b"new 3\n")
    assert texts(tailer.read(log_file).lines) == ["new 3"]


def test_notice_kinds_are_an_enum_that_reads_as_its_text(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    log_file.unlink()
    (notice,) = tailer.read(log_file).notices
    assert notice.kind is TailNoticeKind.VANISHED
    # A StrEnum: notes made with an f-string, and callers comparing with the word, see the word.
    assert f"{notice.kind}" == "vanished" and notice.kind == "vanished"


def test_replacement_by_a_longer_file_still_reads_from_start(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"x\n")
    tailer.read(log_file)
    fresh = log_file.with_name("fresh")
    fresh.write_bytes(b"first of new\nsecond of new\n")
    os.replace(fresh, log_file)
    result = tailer.read(log_file)
    assert texts(result.lines) == ["first of new", "second of new"]


def test_vanished_then_recreated(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"before\n")
    assert texts(tailer.read(log_file).lines) == ["before"]
    log_file.unlink()
    first = tailer.read(log_file)
    assert kinds(first.notices) == ["vanished"] and first.lines == []
    second = tailer.read(log_file)
    assert second.notices == [] and second.lines == []
    assert tailer.followed() == [str(log_file)]
    log_file.write_bytes(b"reborn\n")
    result = tailer.read(log_file)
    assert texts(result.lines) == ["reborn"]
    assert result.notices == []
    # A second disappearance is a new occurrence and is reported again.
    log_file.unlink()
    assert kinds(tailer.read(log_file).notices) == ["vanished"]


def test_non_regular_file_is_unreadable_once(tmp_path: Path) -> None:
    path = tmp_path / EXAMPLE
    os.mkfifo(path)  # a FIFO must neither be read nor block the agent
    tailer = LogTailer()
    tailer.follow(path, key=42)
    assert kinds(tailer.read(path).notices) == ["unreadable"]
    assert tailer.read(path).notices == []
    path.unlink()
    path.write_bytes(b"regular now\n")
    result = tailer.read(path)
    assert texts(result.lines) == ["regular now"]


def test_symlink_swapped_in_is_not_followed(log_file: Path, tmp_path: Path) -> None:
    secret = tmp_path / "someone-elses.log"
    secret.write_bytes(b"secret\n")
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    tailer.read(log_file)
    log_file.unlink()
    log_file.symlink_to(secret)
    result = tailer.read(log_file)
    assert result.lines == []
    assert kinds(result.notices) == ["unreadable"]


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Drop root for a moment, since root reads files whatever their mode."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(12345)
    try:
        yield
    finally:
        os.seteuid(0)


def test_permission_denied_is_unreadable_once(log_file: Path) -> None:
    append(log_file, b"line\n")
    log_file.chmod(0)
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    with unprivileged():
        result = tailer.read(log_file)
        assert kinds(result.notices) == ["unreadable"] and result.lines == []
        assert tailer.read(log_file).notices == []
    log_file.chmod(0o644)
    assert texts(tailer.read(log_file).lines) == ["line"]


def test_overlong_line_is_cut_and_following_line_intact(log_file: Path) -> None:
    tailer = LogTailer(max_line_bytes=10, max_read_bytes=64)
    tailer.follow(log_file, key=42)
    append(log_file, b"0123456789ABCDEFGHIJ\nnext\n")
    result = tailer.read(log_file)
    assert result.lines == [
        LogLine(str(log_file), "0123456789", 21, True, 0),
        LogLine(str(log_file), "next", 26, False, 21),
    ]


def test_overlong_line_without_newline_is_not_held(log_file: Path) -> None:
    tailer = LogTailer(max_line_bytes=10, max_read_bytes=64)
    tailer.follow(log_file, key=42)
    append(log_file, b"0123456789ABCDEF")
    result = tailer.read(log_file)
    assert result.lines == [LogLine(str(log_file), "0123456789", 16, True, 0)]
    # The cut head is not returned again, and the offset moved past what was read.
    assert tailer.position(log_file).offset == 16
    assert tailer.read(log_file).lines == []
    append(log_file, b"still the same long line")
    assert tailer.read(log_file).lines == []
    assert tailer.position(log_file).offset == 40
    append(log_file, b" end\nafter\n")
    assert tailer.read(log_file).lines == [LogLine(str(log_file), "after", 51, False, 45)]


def test_overlong_line_longer_than_one_read_is_skipped_across_reads(log_file: Path) -> None:
    tailer = LogTailer(max_line_bytes=10, max_read_bytes=32)
    tailer.follow(log_file, key=42)
    append(log_file, b"L" * 100 + b"\nok\n")
    results = [tailer.read(log_file) for _ in range(5)]
    lines = [line for result in results for line in result.lines]
    assert lines == [
        LogLine(str(log_file), "L" * 10, 32, True, 0),
        LogLine(str(log_file), "ok", 104, False, 101),
    ]


def test_line_of_exactly_max_bytes_is_whole(log_file: Path) -> None:
    tailer = LogTailer(max_line_bytes=10, max_read_bytes=11)
    tailer.follow(log_file, key=42)
    append(log_file, b"0123456789\nabc\n")
    first = tailer.read(log_file)
    assert first.lines == [LogLine(str(log_file), "0123456789", 11, False, 0)]
    assert texts(tailer.read(log_file).lines) == ["abc"]


def test_max_read_bytes_bounds_one_read(log_file: Path) -> None:
    tailer = LogTailer(max_line_bytes=8, max_read_bytes=16)
    tailer.follow(log_file, key=42)
    append(log_file, b"".join(b"line %02d\n" % i for i in range(6)))  # 8 bytes each, 48 in all
    first = tailer.read(log_file)
    assert texts(first.lines) == ["line 00", "line 01"]
    assert tailer.position(log_file).offset == 16
    second = tailer.read(log_file)
    assert texts(second.lines) == ["line 02", "line 03"]
    third = tailer.read(log_file)
    assert texts(third.lines) == ["line 04", "line 05"]
    assert tailer.read(log_file).lines == []


def test_read_boundary_inside_a_line_loses_nothing(log_file: Path) -> None:
    tailer = LogTailer(max_line_bytes=8, max_read_bytes=10)
    tailer.follow(log_file, key=42)
    append(log_file, b"abcdef\nghijkl\nmn\n")
    lines = [line for _ in range(4) for line in tailer.read(log_file).lines]
    assert [(line.text, line.end_offset) for line in lines] == [("abcdef", 7), ("ghijkl", 14), ("mn", 17)]


def test_max_read_bytes_must_exceed_max_line_bytes() -> None:
    with pytest.raises(ValueError, match="max_read_bytes"):
        LogTailer(max_line_bytes=100, max_read_bytes=100)


def test_crlf_is_stripped(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"windows\r\nunix\n")
    result = tailer.read(log_file)
    assert texts(result.lines) == ["windows", "unix"]
    assert [line.end_offset for line in result.lines] == [9, 14]


def test_invalid_utf8_is_replaced_per_line(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"bad \xff\xfe byte\n\xc3\xa9t\xc3\xa9\n")
    assert texts(tailer.read(log_file).lines) == ["bad \ufffd\ufffd byte", "été"]


def test_read_all_groups_by_key_and_omits_quiet_keys(tmp_path: Path) -> None:
    a1, a2, b = tmp_path / "a1.log", tmp_path / "a2.log", tmp_path / "b.log"
    for path in (a1, a2, b):
        path.write_bytes(b"")
    tailer = LogTailer()
    tailer.follow(a1, key=1)
    tailer.follow(a2, key=1)
    tailer.follow(b, key=2)
    tailer.follow(b, key=3)  # already followed: no-op
    append(a1, b"a1\n")
    append(a2, b"a2\n")
    results = tailer.read_all()
    assert list(results) == [1]
    assert texts(results[1].lines) == ["a1", "a2"]
    b.unlink()
    results = tailer.read_all()
    assert list(results) == [2]
    assert results[2].lines == [] and kinds(results[2].notices) == ["vanished"]
    assert tailer.read_all() == {}


def test_unfollow_and_unfollow_key(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.log" for name in ("a1", "a2", "b")]
    tailer = LogTailer()
    for path, key in zip(paths, (1, 1, 2)):
        path.write_bytes(b"")
        tailer.follow(path, key=key)
    assert tailer.followed() == [str(path) for path in paths]
    tailer.unfollow_key(1)
    assert tailer.followed() == [str(paths[2])]
    tailer.unfollow(paths[2])
    tailer.unfollow(paths[2])
    assert tailer.followed() == []
    with pytest.raises(KeyError):
        tailer.read(paths[2])


def test_position_before_first_read(log_file: Path) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    assert tailer.position(log_file) == FilePosition(str(log_file), 0, 0, 0)
    # Persisting that and resuming from it reads the file from the start, without notices.
    append(log_file, b"first\n")
    again = LogTailer()
    again.follow(log_file, key=42, position=tailer.position(log_file))
    result = again.read(log_file)
    assert texts(result.lines) == ["first"] and result.notices == []


def test_quiet_file_is_not_opened(log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    append(log_file, b"done\npartial")
    tailer.read(log_file)
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str, *args: object, **kwargs: object) -> int:
        opened.append(path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    for _ in range(3):
        assert tailer.read(log_file).lines == []
    assert opened == []
    append(log_file, b"\n")
    assert texts(tailer.read(log_file).lines) == ["partial"]
    assert opened == [str(log_file)]


def test_no_descriptor_is_left_open(log_file: Path) -> None:
    fd_dir = Path("/proc/self/fd")
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    before = len(list(fd_dir.iterdir()))
    for i in range(20):
        append(log_file, b"line %d\n" % i)
        tailer.read(log_file)
    assert len(list(fd_dir.iterdir())) == before


# --- ChangeWatcher -----------------------------------------------------------------------


@pytest.fixture
def watcher() -> Iterator[ChangeWatcher]:
    watcher = ChangeWatcher()
    yield watcher
    watcher.close()


def test_watcher_wakes_on_write(tmp_path: Path, watcher: ChangeWatcher) -> None:
    log_file = tmp_path / EXAMPLE
    log_file.write_bytes(b"")
    watcher.watch(tmp_path)
    watcher.watch(tmp_path)  # idempotent
    writer = threading.Timer(0.2, append, (log_file, b"progress\n"))
    started = time.monotonic()
    writer.start()
    try:
        assert watcher.wait(timeout=2.0) is True
    finally:
        writer.join()
    assert time.monotonic() - started < 2.0


def test_watcher_times_out_when_nothing_changes(tmp_path: Path, watcher: ChangeWatcher) -> None:
    log_file = tmp_path / EXAMPLE
    log_file.write_bytes(b"quiet\n")
    watcher.watch(tmp_path)
    # Reading, as the tailer does, is not a change.
    tailer = LogTailer()
    tailer.follow(log_file, key=42)
    assert texts(tailer.read(log_file).lines) == ["quiet"]
    started = time.monotonic()
    assert watcher.wait(timeout=0.5) is False
    assert time.monotonic() - started >= 0.45


def test_wait_clears_the_flag(tmp_path: Path, watcher: ChangeWatcher) -> None:
    watcher.watch(tmp_path)
    (tmp_path / "new.log").write_bytes(b"x\n")
    assert watcher.wait(timeout=2.0) is True
    time.sleep(0.2)  # let the creation's trailing events arrive
    watcher.wait(timeout=0)
    assert watcher.wait(timeout=0.3) is False


def test_unwatch_stops_wakeups(tmp_path: Path, watcher: ChangeWatcher) -> None:
    watcher.watch(tmp_path)
    watcher.unwatch(tmp_path)
    watcher.unwatch(tmp_path)
    (tmp_path / "new.log").write_bytes(b"x\n")
    assert watcher.wait(timeout=0.5) is False


def test_watching_a_missing_dir_is_ignored(tmp_path: Path, watcher: ChangeWatcher) -> None:
    watcher.watch(tmp_path / "missing")
    watcher.watch(tmp_path)
    (tmp_path / "new.log").write_bytes(b"x\n")
    assert watcher.wait(timeout=2.0) is True


class TestLineTime:
    """A line's own timestamp, where it has one, dates the event."""

    NOW = datetime(2026, 11, 27, 1, 0, 0).timestamp()

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-11-27 00:35:03.012 | INFO | saved", datetime(2026, 11, 27, 0, 35, 3, 12000).timestamp()),
            ("[2026-11-27 00:35:03] iteration 100", datetime(2026, 11, 27, 0, 35, 3).timestamp()),
            ("[2026-11-27 00:35:03,500] INFO x", datetime(2026, 11, 27, 0, 35, 3, 500000).timestamp()),
            ("2026-11-27T00:35:03Z step", datetime(2026, 11, 27, 0, 35, 3, tzinfo=timezone.utc).timestamp()),
            ("2026-11-27T00:35:03+02:00 step",
             datetime(2026, 11, 27, 0, 35, 3, tzinfo=timezone(timedelta(hours=2))).timestamp()),
        ],
    )
    def test_timestamps_at_the_start_are_used(self, text: str, expected: float) -> None:
        assert line_time(text, self.NOW) == expected

    @pytest.mark.parametrize(
        "text",
        ["Saved checkpoint to /ckpt", "step 2026-11-27 00:35:03 later in the line", "2026-13-45 25:61:00 bad",
         "2020-01-01 00:00:00 an old replayed log"],  # fmt: skip
    )
    def test_otherwise_the_read_time(self, text: str) -> None:
        assert line_time(text, self.NOW) == self.NOW


def test_change_watcher_tells_which_files_were_written(tmp_path: Path) -> None:
    watcher = ChangeWatcher()
    try:
        watcher.watch(tmp_path)
        quiet = tmp_path / "quiet.log"
        quiet.write_text("")
        watcher.wait(2.0)
        watcher.take_changed()
        busy = tmp_path / "busy.log"
        busy.write_text("step 1\n")
        assert watcher.wait(2.0)
        deadline = time.monotonic() + 2.0
        changed: set[str] = set()
        while str(busy) not in changed and time.monotonic() < deadline:
            changed |= watcher.take_changed()
            time.sleep(0.05)
        # write_text is a create and a modify: on a loaded machine the second event may
        # come after the first take; it is about busy.log all the same.
        time.sleep(0.3)
        changed |= watcher.take_changed()
        assert str(busy) in changed and str(quiet) not in changed
        assert watcher.take_changed() == set()
    finally:
        watcher.close()


# --- the owner is checked at every open ------------------------------------------------


def test_a_file_of_another_user_renamed_over_a_followed_log_is_not_read(log_file: Path, tmp_path: Path) -> None:
    owner = os.getuid()
    append(log_file, b"mine\n")
    tailer = LogTailer()
    tailer.follow(log_file, key=42, owner_uid=owner)
    assert texts(tailer.read(log_file).lines) == ["mine"]
    # Found as the job user's file, then swapped for a file someone else owns (as a
    # shared, group-writable log directory allows): its lines must not count for the job.
    forged = tmp_path / "forged"
    forged.write_bytes(b"Rank0: (1) segmentation fault: forged\n")
    os.chown(forged, owner + 1000, -1)
    forged.replace(log_file)
    result = tailer.read(log_file)
    assert result.lines == []
    assert kinds(result.notices) == ["unreadable"]
    assert f"owned by uid {owner + 1000}" in result.notices[0].detail
    # The job's user puts a file of their own back: it is read from its start.
    log_file.unlink()
    log_file.write_bytes(b"mine again\n")
    assert texts(tailer.read(log_file).lines) == ["mine again"]


def test_the_owner_is_checked_again_when_the_size_changes_under_the_same_inode(log_file: Path) -> None:
    owner = os.getuid()
    append(log_file, b"one\n")
    tailer = LogTailer()
    tailer.follow(log_file, key=42, owner_uid=owner)
    tailer.read(log_file)
    # Only root can give a file away; a file given away is no longer the job user's word.
    os.chown(log_file, owner + 1000, -1)
    append(log_file, b"two\n")
    result = tailer.read(log_file)
    assert result.lines == [] and kinds(result.notices) == ["unreadable"]


# --- quiet files are looked at less often -------------------------------------------------


def test_a_quiet_file_is_looked_at_every_quiet_interval_until_it_changes(log_file: Path) -> None:
    tailer = LogTailer(quiet_after=10.0, quiet_interval=2.0)
    tailer.follow(log_file, key=42)
    append(log_file, b"one\n")
    assert texts(tailer.read_all(now=0.0)[42].lines) == ["one"]
    assert tailer.read_all(now=5.0) == {}  # unchanged, but not quiet for 10 s yet: still looked at
    assert tailer.read_all(now=10.5) == {}  # quiet now: the next look is at 12.5
    append(log_file, b"two\n")
    assert tailer.read_all(now=11.0) == {}, "not due yet"
    assert texts(tailer.read_all([str(log_file)], now=11.5)[42].lines) == ["two"], "a path named is read at once"
    append(log_file, b"three\n")
    assert texts(tailer.read_all(now=11.6)[42].lines) == ["three"], "a file that changed is due at every call"


def test_a_quiet_file_that_wakes_is_seen_within_the_quiet_interval(
    log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tailer = LogTailer(quiet_after=10.0, quiet_interval=2.0)
    tailer.follow(log_file, key=42)
    tailer.read_all(now=0.0)
    looks: list[str] = []
    real_stat = os.stat

    def counted(path: str, *args: object, **kwargs: object) -> os.stat_result:
        looks.append(path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("ajr_agent.adapters.logs.tail.os.stat", counted)
    passes = [t / 4 for t in range(4, 3600 * 4)]  # an hour of silence, a pass every 0.25 s
    for t in passes:
        assert tailer.read_all(now=t) == {}
    assert len(looks) < len(passes) / 7, "a quiet file costs a look every 2 s, not one a pass"
    append(log_file, b"awake\n")
    woke = next(t for t in (3600 + i / 4 for i in range(20)) if tailer.read_all(now=t))
    assert woke - 3600 <= 2.0


def count_looks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the paths the tailer stats from now on: one stat is one look at a file."""
    looks: list[str] = []
    real_stat = os.stat

    def counted(path: str, *args: object, **kwargs: object) -> os.stat_result:
        looks.append(path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("ajr_agent.adapters.logs.tail.os.stat", counted)
    return looks


def quiet_files(tmp_path: Path, tailer: LogTailer, count: int) -> list[Path]:
    """``count`` empty followed files, first read at times spread over 2 s, so that they fall quiet
    (and come due) spread out too, as files found one after the other do."""
    paths = [tmp_path / f"quiet-{i}.log" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(b"")
        tailer.follow(path, key=i)
        tailer.read_all([str(path)], now=2.0 * i / count)
    return paths


def test_a_pass_looks_at_the_active_files_and_only_at_the_quiet_files_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tailer = LogTailer(quiet_after=10.0, quiet_interval=2.0)
    quiet = quiet_files(tmp_path, tailer, 400)
    busy = tmp_path / "busy.log"
    busy.write_bytes(b"")
    tailer.follow(busy, key="busy")
    for t in range(4, 4 * 20):  # passes every 0.25 s up to 20 s: every quiet file has fallen quiet
        append(busy, b"warming up\n")
        tailer.read_all(now=t / 4)
    looks = count_looks(monkeypatch)
    for t in range(4 * 20, 4 * 40):
        append(busy, b"step\n")
        assert texts(tailer.read_all(now=t / 4)["busy"].lines) == ["step"]
    assert looks.count(str(busy)) == 80, "a file being written is looked at every pass"
    quiet_looks = len(looks) - 80
    # 400 quiet files over 20 s, one look each every 2 s: 4,000 looks, not 80 passes x 400.
    assert 3600 <= quiet_looks <= 4400
    assert {str(p) for p in quiet} <= set(looks)


def test_a_pass_when_no_quiet_file_is_due_looks_at_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tailer = LogTailer(quiet_after=0.0, quiet_interval=2.0)
    paths = [tmp_path / f"{i}.log" for i in range(1000)]
    for path in paths:
        path.write_bytes(b"x\n")
        tailer.follow(path, key=1)
    tailer.read_all(now=0.0)  # read: changed
    tailer.read_all(now=0.25)  # unchanged: quiet, due at 2.25
    looks = count_looks(monkeypatch)
    assert tailer.read_all(now=0.5) == {} and tailer.read_all(now=2.0) == {}
    assert looks == []
    tailer.read_all(now=2.25)
    assert len(looks) == 1000


def test_a_quiet_file_woken_by_a_write_is_read_at_the_first_pass_it_is_due(
    log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tailer = LogTailer(quiet_after=10.0, quiet_interval=2.0)
    tailer.follow(log_file, key=42)
    for t in range(0, 4 * 11):
        tailer.read_all(now=t / 4)  # quiet from 10.0 on: due at 12.0
    append(log_file, b"woken\n")
    looks = count_looks(monkeypatch)
    assert tailer.read_all(now=11.0) == {} and tailer.read_all(now=11.75) == {}
    assert looks == [], "not due before 12.0"
    assert texts(tailer.read_all(now=12.0)[42].lines) == ["woken"]
    # Changed, so active again: looked at at every pass, and read as soon as it is written.
    append(log_file, b"again\n")
    assert texts(tailer.read_all(now=12.25)[42].lines) == ["again"]
    assert tailer.read_all(now=12.5) == {}
    assert looks == [str(log_file)] * 3


def test_a_file_silent_for_an_hour_among_thousands_is_seen_within_the_quiet_interval(tmp_path: Path) -> None:
    tailer = LogTailer(quiet_after=30.0, quiet_interval=2.0)
    paths = quiet_files(tmp_path, tailer, 200)
    for t in range(0, 4 * 3600):  # an hour of passes, every 0.25 s
        assert tailer.read_all(now=t / 4) == {}
    woken = paths[123]
    append(woken, b"Rank0: (1) segmentation fault\n")
    found = next(t / 4 for t in range(4 * 3600, 4 * 3700) if tailer.read_all(now=t / 4))
    assert found - 3600 <= 2.0


def test_a_named_look_at_a_quiet_file_that_finds_it_written_makes_it_active(log_file: Path) -> None:
    tailer = LogTailer(quiet_after=10.0, quiet_interval=2.0)
    tailer.follow(log_file, key=42)
    tailer.read_all(now=0.0)
    tailer.read_all(now=10.0)  # quiet, due at 12.0
    append(log_file, b"one\n")
    assert texts(tailer.read_all([str(log_file)], now=10.5)[42].lines) == ["one"]  # inotify named it
    append(log_file, b"two\n")
    assert texts(tailer.read_all(now=10.75)[42].lines) == ["two"], "active: not left waiting for 12.0"
    # Quiet again from 20.75 on, due 2 s later; the old due time (12.0) does not count twice.
    for t in range(44, 4 * 23):
        tailer.read_all(now=t / 4)
    append(log_file, b"three\n")
    assert tailer.read_all(now=23.0) == {}
    assert texts(tailer.read_all(now=24.75)[42].lines) == ["three"]


def test_a_pass_that_fails_half_way_leaves_no_due_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tailer = LogTailer(quiet_after=0.0, quiet_interval=2.0)
    paths = [tmp_path / f"{i}.log" for i in range(10)]
    for path in paths:
        path.write_bytes(b"")
        tailer.follow(path, key=1)
    tailer.read_all(now=0.0)
    tailer.read_all(now=0.25)  # all quiet, due at 2.25
    for path in paths:
        append(path, b"line\n")
    real_stat = os.stat

    def failing(path: str, *args: object, **kwargs: object) -> os.stat_result:
        if path == str(paths[3]):
            raise RuntimeError("a surprise")
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("ajr_agent.adapters.logs.tail.os.stat", failing)
    with pytest.raises(RuntimeError):
        tailer.read_all(now=2.25)
    monkeypatch.setattr("ajr_agent.adapters.logs.tail.os.stat", real_stat)
    # The files the failed pass did not reach are looked at by the next pass, not 2 s later.
    assert len(tailer.read_all(now=2.5)[1].lines) >= 6


def test_rewind_and_unfollow_of_quiet_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tailer = LogTailer(quiet_after=0.0, quiet_interval=2.0)
    kept, dropped = tmp_path / "kept.log", tmp_path / "dropped.log"
    for path in (kept, dropped):
        path.write_bytes(b"old\n")
        tailer.follow(path, key=1)
    tailer.read_all(now=0.0)
    tailer.read_all(now=0.25)  # both quiet, due at 2.25
    tailer.rewind(kept, None)
    tailer.unfollow(dropped)
    looks = count_looks(monkeypatch)
    assert texts(tailer.read_all(now=0.5)[1].lines) == ["old"], "a rewound file is read at the next pass"
    tailer.read_all(now=2.25)
    tailer.read_all(now=4.5)
    assert str(dropped) not in looks


def test_passes_read_files_in_the_order_they_were_followed(tmp_path: Path) -> None:
    tailer = LogTailer(quiet_after=1.0, quiet_interval=2.0)
    paths = [tmp_path / f"{name}.log" for name in ("c", "a", "b")]
    for path in paths:
        path.write_bytes(b"")
        tailer.follow(path, key=1)
    tailer.read_all(now=0.0)
    append(paths[0], b"c1\n")
    tailer.read_all(now=0.5)  # c active; a and b quiet from 1.0 on
    tailer.read_all(now=1.0)
    tailer.read_all(now=2.0)  # c quiet too
    for path, text in zip(reversed(paths), (b"b\n", b"a\n", b"c\n")):
        append(path, text)
    assert texts(tailer.read_all(now=4.0)[1].lines) == ["c", "a", "b"]
