"""`ajr replay`: what AJR would have done on logs of jobs that are over, read offline.

An admin points it at a site's own history before letting AJR act: each file is read as
the agent reads a backlog (4 MiB at a time, lines cut at `max_line_bytes`, bytes that are
not UTF-8 replaced) and its lines go through the agent's own rules and detection
(`replay_file`). Memory stays bounded whatever the size of a file or of its lines; a file
that cannot be read, a binary one or a broken archive gets its own error and the others
go on. gzip-compressed logs (`.gz`, as logrotate leaves them) are read as they are.

In a directory, the log files are those named as AJR's convention wants
(`{job_name}_{job_id}_date_%y-%m-%d_time_%H-%M-%S.log`) and any `*.log`, `*.out`, `*.err`,
`*.txt` (with `.gz` after it or not); a file named on the command line is read whatever its
name. Symbolic links are not followed, as the agent follows none.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ajr_agent.adapters.logs import parse_log_name
from ajr_agent.detect.rules import RuleSet
from ajr_agent.domain.settings import Settings
from ajr_agent.ops.replay_file import FailureSeen, FileWatch, HangSeen, SavesSeen, SeriesSeen

READ_BYTES = 4 * 2**20
"""Bytes read at a time: the agent's own read of a backlog, and a batch for the rules."""

_LOG_SUFFIXES = (".log", ".out", ".err", ".txt")
_GZIP_MAGIC = b"\x1f\x8b"
# A text log holds few control characters besides tab, newline, carriage return, escape (colours)
# and backspace (progress bars), and little that is not UTF-8; a file whose first block is mostly
# made of those is no log (a core dump, a checkpoint, an archive).
_NOT_CONTROLS = bytes(range(32, 256)) + b"\t\n\r\x1b\x08"
_BINARY_SHARE = 0.3
_HEAD_BYTES = 65536


@dataclass(frozen=True)
class FileReplay:
    """What AJR would have made of one file; `error` says why it was not read, or not to its end."""

    path: str
    job_name: str | None
    job_id: int | None
    started: float | None  # when the job step began, by the file's name
    size: int
    lines: int
    error: str
    failure: FailureSeen | None
    anomaly_lines: int
    saves: SavesSeen | None
    series: tuple[SeriesSeen, ...]
    hang: HangSeen | None
    rule_lines: dict[str, int]
    timeouts: int
    # AJR would have recovered the job: at a failure line, at a hang before one, or at a
    # straggler when the settings say to recover those (straggler_recovery).
    acted: bool


@dataclass
class ReplayTotals:
    """The figures of all the files replayed so far."""

    files: int = 0
    unreadable: int = 0
    bytes: int = 0
    lines: int = 0
    seconds: float = 0.0
    acted: int = 0
    failures: int = 0
    hangs: int = 0
    stragglers: int = 0
    saves_completed: int = 0
    saves_failed: int = 0
    rule_lines: Counter[str] = field(default_factory=Counter)

    @property
    def mb_per_second(self) -> float:
        """MB/s over the bytes read (on disk: compressed ones as they lie) and the time it took."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def add(self, replayed: FileReplay) -> None:
        """Count one file in."""
        self.files += 1
        self.unreadable += bool(replayed.error)
        self.bytes += replayed.size
        self.lines += replayed.lines
        self.acted += replayed.acted
        self.failures += replayed.failure is not None
        self.hangs += replayed.hang is not None
        self.stragglers += any(s.straggler for s in replayed.series)
        if replayed.saves is not None:
            self.saves_completed += replayed.saves.completed
            self.saves_failed += replayed.saves.failed is not None
        self.rule_lines.update(replayed.rule_lines)


class ReplayError(OSError):
    """A file cannot be replayed; the message says why, for the admin reading the report."""


def replay(paths: Iterable[Path], rules: RuleSet, settings: Settings) -> Iterator[FileReplay]:
    """Replay every log file of `paths` (files, and directories walked), one result each, in path order."""
    for path in paths:
        for found in _files(path):
            yield found if isinstance(found, FileReplay) else replay_file(found, rules, settings)


# Each worker process's rule set, loaded once by _start_worker.
_worker_rules: RuleSet | None = None


def _start_worker(dirs: list[Path]) -> None:
    global _worker_rules
    _worker_rules = RuleSet.load(dirs)


def _replay_in_worker(path: Path, settings: Settings) -> FileReplay:
    assert _worker_rules is not None
    return replay_file(path, _worker_rules, settings)


def replay_in_processes(paths: Iterable[Path], dirs: list[Path], settings: Settings, jobs: int) -> Iterator[FileReplay]:
    """`replay` with the rules of `dirs`, its files spread over `jobs` processes (a core each);
    the results come in the same order. A few files per process are read ahead, no more."""
    ahead: deque[Future[FileReplay] | FileReplay] = deque()
    with ProcessPoolExecutor(jobs, initializer=_start_worker, initargs=(dirs,)) as pool:
        for path in paths:
            for found in _files(path):
                ahead.append(found if isinstance(found, FileReplay) else pool.submit(_replay_in_worker, found,
                                                                                     settings))  # fmt: skip
                while len(ahead) > 4 * jobs:
                    yield _result(ahead.popleft())
        while ahead:
            yield _result(ahead.popleft())


def _result(item: Future[FileReplay] | FileReplay) -> FileReplay:
    return item.result() if isinstance(item, Future) else item


def replay_file(path: Path, rules: RuleSet, settings: Settings) -> FileReplay:
    """Replay one file, whatever its name; a file that cannot be read gets an error, not an exception."""
    name = parse_log_name(path.name.removesuffix(".gz"))
    watch = FileWatch(rules, settings, name.started if name is not None else None)
    size, error = 0, ""
    try:
        with _open(path) as (stream, size):
            for lines in _batches(stream, settings.max_line_bytes):
                watch.feed(lines)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        error = f"broken gzip archive: {exc}{_after(watch)}"
    except OSError as exc:
        error = f"{exc.strerror or exc}{_after(watch)}"
    failure, series = watch.failure(), watch.series()
    straggled = settings.straggler_recovery and any(s.straggler for s in series)
    return FileReplay(
        path=str(path), job_name=name.job_name if name else None, job_id=name.job_id if name else None,
        started=name.started if name else None, size=size, lines=watch.lines, error=error,
        failure=failure, anomaly_lines=watch.anomaly_lines, saves=watch.saves() if watch.lines else None,
        series=series, hang=watch.hang, rule_lines=dict(watch.rule_lines), timeouts=watch.timeouts(),
        acted=failure is not None or watch.hang is not None or straggled,
    )  # fmt: skip


def _after(watch: FileWatch) -> str:
    return f" (after {watch.lines:,} lines)" if watch.lines else ""


def _unreadable(path: Path, error: str) -> FileReplay:
    return FileReplay(str(path), None, None, None, 0, 0, error, None, 0, None, (), None, {}, 0, False)


def _files(path: Path) -> Iterator[Path | FileReplay]:
    """The files to replay under `path` (itself, when it is a file), in name order; what cannot
    be listed comes as an unreadable result."""
    try:
        info = path.stat() if path.is_dir() else path.lstat()
    except OSError as exc:
        yield _unreadable(path, exc.strerror or str(exc))
        return
    if not stat.S_ISDIR(info.st_mode):
        yield path
        return
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        yield _unreadable(path, f"cannot list the directory: {exc.strerror}")
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _files(Path(entry.path))
        elif _is_log_name(entry.name):
            yield Path(entry.path)


def _is_log_name(name: str) -> bool:
    plain = name.removesuffix(".gz")
    return parse_log_name(plain) is not None or plain.endswith(_LOG_SUFFIXES)


@contextmanager
def _open(path: Path) -> Iterator[tuple[BinaryIO, int]]:
    """Open a file to replay: a regular file, not through a symbolic link, gunzipped when it is
    compressed; (stream, size on disk). Refuses, with why, what is not a text log."""
    # O_NOFOLLOW and O_NONBLOCK as the agent's tailer: no symlink is followed, a FIFO never hangs us.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReplayError("a symbolic link: not followed (the agent follows none)") from None
        raise ReplayError(f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as raw, ExitStack() as closing:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReplayError(f"not a regular file (mode {stat.filemode(info.st_mode)})")
        head = raw.read(_HEAD_BYTES)
        raw.seek(0)
        stream: BinaryIO = raw
        if head.startswith(_GZIP_MAGIC):
            stream = closing.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[arg-type]
            head = stream.peek(_HEAD_BYTES)[:_HEAD_BYTES]  # type: ignore[attr-defined]
        if _binary(head):
            raise ReplayError(f"binary (its first {len(head):,} bytes are not text): not a log")
        yield stream, info.st_size


def _binary(head: bytes) -> bool:
    """Whether a file's first bytes are mostly neither UTF-8 text nor NUL.

    NUL runs are left out: a file system leaves them where a crash cut a log's last writes,
    and that log's failure is what replay is for.
    """
    text = head.replace(b"\0", b"")
    if not text:
        return False
    invalid = len(text) - len(text.decode("utf-8", errors="ignore").encode())
    return invalid + len(text.translate(None, _NOT_CONTROLS)) > _BINARY_SHARE * len(text)


def _batches(stream: BinaryIO, max_line_bytes: int) -> Iterator[list[str]]:
    """The stream's lines in batches of about READ_BYTES, as the agent's tailer cuts them: at most
    `max_line_bytes` of a line (the rest dropped), invalid UTF-8 replaced, one "\\r" before the
    newline removed; a last line without its newline counts (the job is over)."""
    carry = b""
    skipping = False  # inside an overlong line whose head is already out
    while data := stream.read(READ_BYTES):
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                continue
            data, skipping = data[newline + 1 :], False
        head, newline, rest = (carry + data).rpartition(b"\n")
        lines = _decode(head, max_line_bytes) if newline else []
        carry = rest if newline else head + rest
        if len(carry) > max_line_bytes:
            lines.append(_cut(carry, max_line_bytes))
            carry, skipping = b"", True
        if lines:
            yield lines
    if carry:
        yield [_decode(carry, max_line_bytes)[0]]


def _decode(block: bytes, max_line_bytes: int) -> list[str]:
    text = block.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    # A character is at most 4 bytes: only a line of more than a quarter of the limit may be over it.
    longest = max(map(len, lines))
    if longest * 4 > max_line_bytes:
        lines = [_cut(line.encode(), max_line_bytes) if len(line) * 4 > max_line_bytes else line for line in lines]
    return lines


def _cut(raw: bytes, max_line_bytes: int) -> str:
    """An overlong line as the tailer returns it: its first max_line_bytes, decoded."""
    return raw[:max_line_bytes].decode("utf-8", errors="replace") if len(raw) > max_line_bytes else \
        raw.decode("utf-8", errors="replace")  # fmt: skip


def timed(results: Iterable[FileReplay], totals: ReplayTotals) -> Iterator[FileReplay]:
    """The results as they come, each counted into `totals` with the time spent on it."""
    start = time.monotonic()
    for result in results:
        totals.add(result)
        totals.seconds = time.monotonic() - start
        yield result
