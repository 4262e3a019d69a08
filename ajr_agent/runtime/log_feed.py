"""The logs' side of the loop: find each running job's log files, follow them, and turn
their new lines into events for the decisions.

Lines are read in passes. A pass hands each job's lines to the rule engine as one batch,
within the pass's budget (rules_pass_budget); lines past it are left for the next pass.
Offsets are saved after the decisions, so a crash re-reads lines (whose failure is then
known as already handled) and never loses one.

A checkpoint save that begins (a rule of stage "started") is held until a save completes;
when its attempt fails first, it is told as a failed save. Each throughput rule's readings
are judged as a series of their own, in the rule's direction; an attempt's stored readings
(its chart) are those of the first rule that reported in it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol

from ajr_agent.adapters.logs import ChangeWatcher, FilePosition, LogFinder, LogLine, LogTailer, TailNotice, TailResult
from ajr_agent.adapters.store import FollowedFile, Reading, Store, StoreError
from ajr_agent.detect import signals
from ajr_agent.detect.attribution import Evidence
from ajr_agent.detect.rules import CheckpointStage, Rule, RuleKind, RuleSet
from ajr_agent.detect.timestamps import line_time
from ajr_agent.domain.events import AnomalyFound, CheckpointSaved, CheckpointStarted, Event, StragglerFound
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import Better, ManagedJob, Note, NoteKind
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.observers import Observer
from ajr_agent.runtime.tracked import TrackedJob

log = logging.getLogger("ajr.agent")

# Passes that may fail on the same lines of a job (an unexpected error while handling
# them) before they are skipped, with a note, rather than read again.
READ_TRIES = 3


class Decisions(Protocol):
    """What the feed hands its events and notes to (the agent)."""

    def handle_all(self, job_id: int, events: list[Event], now: float) -> None:
        """Decide on the events, in order; raises when the decisions cannot be saved."""

    def record(self, job: ManagedJob, note: Note, now: float) -> None:
        """Add a line to the job's story."""

    def guarded(self, job_id: int, handler: Callable[..., object], *args: object) -> Exception | None:
        """Run the handler; the error it failed with (logged), or None."""


class LogFeed:
    """Follows the managed jobs' log files and feeds their lines to the decisions."""

    def __init__(self, settings: Settings, store: Store, rules: RuleSet, tracked: dict[int, TrackedJob],
                 decisions: Decisions, watcher: ChangeWatcher | None, observer: Observer) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.rules = rules
        self.tracked = tracked
        self.decisions = decisions
        self.watcher = watcher
        self.observer = observer
        self.tailer = LogTailer(max_line_bytes=settings.max_line_bytes, quiet_after=settings.tail_quiet_after,
                                quiet_interval=settings.tail_quiet_interval)  # fmt: skip
        # Lists a directory again only when its mtime moves: jobs sharing a directory of
        # thousands of files would otherwise list all of it every log_scan_interval.
        self.finder = LogFinder()
        self.files: dict[str, FollowedFile] = {}
        # inotify reports paths under the directory's real path, which a job's symlinked
        # working directory (/home -> /data/home) hides.
        self.real_paths: dict[str, str] = {}
        self.deferred: set[str] = set()  # files with lines the last pass left for the next
        self.saves = signals.PendingSaves()

    def restore(self) -> None:
        """Follow again the files a previous run followed, from where it had read them."""
        for followed in self.store.files():
            tracked = self.tracked.get(followed.job_id)
            if tracked is not None:
                self.follow(followed)
                # Silence before a restart of the agent is unknown: it counts from now.
                tracked.last_output = time.time()

    def changed_paths(self) -> set[str]:
        """The followed files the kernel says were written, and those the last pass left lines of."""
        changed = self.watcher.take_changed() if self.watcher is not None else set()
        return {self.real_paths.get(path, path) for path in changed} | self.deferred

    # ---- finding files ------------------------------------------------------------------

    def scan(self, tracked: TrackedJob, snapshot: JobSnapshot | None, now: float) -> None:
        """Look for new log files of a running job: each poll until one is found, then less often."""
        job = tracked.job
        if snapshot is None or not snapshot.running:
            return
        if self.has_log(tracked) and now - tracked.last_scan < self.settings.log_scan_interval:
            return
        tracked.last_scan = now
        for path in self.finder.find(job.name, job.job_id, self.log_dirs(job), owner_uid=job.user_id):
            if str(path) in self.files:
                continue
            if len(tracked.files) >= self.settings.max_log_files_per_job:
                # A job may name any number of files after itself: each one followed costs a
                # stat per pass and a row, so past the cap new ones are left alone, said once.
                if not tracked.files_capped:
                    tracked.files_capped = True
                    self.decisions.record(job, Note(NoteKind.WARNING, f"not following {path} nor any further log "
                                                    f"file: the job already has {self.settings.max_log_files_per_job}"
                                                    " followed (max_log_files_per_job)"), now)  # fmt: skip
                break
            try:
                stat = path.lstat()
            except OSError:
                continue  # gone again since the scan; the next scan decides
            followed = FollowedFile(job.job_id, job.attempt, FilePosition(str(path), stat.st_ino, stat.st_dev, 0))
            self.follow(followed)
            if tracked.last_output is None:
                tracked.last_output = now
            self.store.save_files([followed])
            self.decisions.record(job, Note(NoteKind.LOG, f"following {path} for attempt {job.attempt}"), now)

    def has_log(self, tracked: TrackedJob) -> bool:
        """A log file of the job's current attempt is followed."""
        return any(self.files[p].attempt == tracked.job.attempt for p in tracked.files)

    def log_dirs(self, job: ManagedJob) -> list[Path]:
        """Where a job's logs may lie: its working directory, its stdout directory, the site's log dirs."""
        dirs = [Path(d) for d in (job.work_dir, job.stdout_dir) if d]
        return dirs + list(self.settings.log_dirs)

    def follow(self, followed: FollowedFile) -> None:
        """Follow one log file of a tracked job from its saved position."""
        tracked = self.tracked[followed.job_id]
        path = followed.position.path
        self.tailer.follow(path, key=followed.job_id, position=followed.position, owner_uid=tracked.job.user_id)
        self.files[path] = followed
        tracked.files.add(path)
        self.real_paths[os.path.realpath(path)] = path
        if self.watcher is not None:
            self.watcher.watch(Path(path).parent)

    def drop(self, tracked: TrackedJob) -> None:
        """Stop following a job's log files."""
        for path in tracked.files:
            self.deferred.discard(path)
            self.tailer.unfollow(path)
            del self.files[path]
            self.real_paths.pop(os.path.realpath(path), None)
        tracked.files.clear()
        self.saves.forget(tracked.job.job_id)
        self.store.forget_files(tracked.job.job_id)

    # ---- reading lines ------------------------------------------------------------------

    def read(self, now: float, paths: set[str] | None = None) -> None:
        """Read what the followed files (all, or those of `paths`) have added and turn matching
        lines into events."""
        positions: list[FollowedFile] = []
        if paths is None:
            self.deferred.clear()
        else:
            self.deferred -= paths
        for job_id, result in self.tailer.read_all(paths, time.monotonic()).items():
            self.observer.lines_read(result.lines)
            tracked = self.tracked.get(job_id)
            if tracked is None:
                continue
            error = self.decisions.guarded(job_id, self._lines, tracked, result.lines, result.notices, now, positions)
            if error is None:
                tracked.failed_reads = 0
            elif isinstance(error, StoreError):
                # Not the lines' fault: they are read again until their decisions can be saved.
                self.decisions.guarded(job_id, self._read_again, tracked, result)
            else:
                self._read_again_or_skip(tracked, result, now, positions)
        if positions:
            self.decisions.guarded(0, self.store.save_files, positions)
        self._failed_saves(now)

    def read_before_end(self, tracked: TrackedJob, snapshot: JobSnapshot, now: float) -> None:
        """Read what a job that has just ended wrote, before its end is decided on: what it wrote
        comes first, whichever the agent heard of first (its last checkpoint save, its failure)."""
        if snapshot.ended and tracked.job.attempt_ended is None and tracked.files:
            self.read(now, set(tracked.files))

    def _failed_saves(self, now: float) -> None:
        """Tell the saves whose attempt failed (and ended) before any save completed.

        Waiting for the end leaves a save a last chance to complete: rank 0 often finishes
        writing while another rank crashes, and its line may come with a later read.
        """
        for save in self.saves.open():
            tracked = self.tracked.get(save.job_id)
            job = tracked.job if tracked is not None else None
            if job is not None and job.handled_attempt == save.attempt and (
                    job.attempt_ended is not None or job.attempt != save.attempt):  # fmt: skip
                failed = self.saves.failed(save.job_id, save.attempt)
                self.decisions.guarded(save.job_id, self.decisions.handle_all, save.job_id, [failed], now)
            elif job is None or job.attempt != save.attempt:
                self.saves.forget(save.job_id)  # ended otherwise (completed, preempted): not a failure

    def _lines(self, tracked: TrackedJob, lines: list[LogLine], notices: list[TailNotice], now: float,
               positions: list[FollowedFile]) -> None:  # fmt: skip
        job = tracked.job
        events: list[Event] = []
        for notice in notices:
            self.decisions.record(job, Note(NoteKind.LOG, f"{notice.path}: {notice.kind}: {notice.detail}"), now)
        touched = {line.path for line in lines}
        if lines:
            tracked.last_output = now
        readings: list[Reading] = []
        matched, done = self.rules.match_within([line.text for line in lines], self.settings.rules_pass_budget)
        if done < len(lines):
            self._defer(lines[done:])
        for index, match in matched:
            line = lines[index]
            attempt = self.files[line.path].attempt
            rule = match.rule
            at = line_time(line.text, now)
            if rule.kind is RuleKind.ANOMALY:
                tracked.keep_evidence(attempt, Evidence(match, line.text, line.path))
                events.append(AnomalyFound(job.job_id, attempt, at, rule.name, rule.category or "anomaly",
                                           rule.fault, line.path, line.text))  # fmt: skip
            elif rule.kind is RuleKind.CHECKPOINT and rule.stage is CheckpointStage.STARTED:
                self.saves.started(CheckpointStarted(job.job_id, attempt, at, rule.name, line.path, line.text))
            elif rule.kind is RuleKind.CHECKPOINT:
                self.saves.completed(job.job_id, attempt)
                events.append(CheckpointSaved(job.job_id, attempt, at, rule.name, line.path, line.text))
            elif match.value is not None:
                reading = Reading(job.job_id, attempt, at, match.value)
                if self._charted(tracked, rule, attempt, now):
                    readings.append(reading)
                events += self._throughput(tracked, rule, reading)
        if readings:
            self.store.add_throughput(readings)
        self.decisions.handle_all(job.job_id, events, now)
        positions += [FollowedFile(job.job_id, self.files[p].attempt, self.tailer.position(p))
                      for p in touched | {n.path for n in notices} if p in self.files]  # fmt: skip

    def _defer(self, lines: list[LogLine]) -> None:
        """Leave lines this pass had no time for to the next one: each of their files is read
        again from the first of them."""
        first: dict[str, LogLine] = {}
        for line in lines:
            first.setdefault(line.path, line)
        for path, line in first.items():
            self.tailer.rewind(path, replace(self.tailer.position(path), offset=line.start_offset))
        self.deferred.update(first)

    def _read_again_or_skip(self, tracked: TrackedJob, result: TailResult, now: float,
                            positions: list[FollowedFile]) -> None:  # fmt: skip
        """After the lines of a read could not be handled: go back to where the job's files were
        last saved, so that the next pass reads them again; after READ_TRIES failed passes,
        skip them with a note instead, so that one poisonous line cannot stall the job's logs."""
        tracked.failed_reads += 1
        if tracked.failed_reads < READ_TRIES:
            self.decisions.guarded(tracked.job.job_id, self._read_again, tracked, result)
            return
        tracked.failed_reads = 0
        paths = self._paths_of(result)
        positions += [FollowedFile(tracked.job.job_id, self.files[p].attempt, self.tailer.position(p)) for p in paths]
        text = (f"{len(result.lines)} log lines of {', '.join(sorted(paths))} skipped: handling them failed "
                f"{READ_TRIES} times (the agent's log has the error)")  # fmt: skip
        self.decisions.guarded(tracked.job.job_id, self.decisions.record, tracked.job, Note(NoteKind.LOG, text), now)

    def _paths_of(self, result: TailResult) -> set[str]:
        """The followed files a read's lines and notices came from."""
        paths = {line.path for line in result.lines} | {notice.path for notice in result.notices}
        return paths & set(self.files)

    def _read_again(self, tracked: TrackedJob, result: TailResult) -> None:
        """Go back to where the files of a read were last saved: the next full pass reads them again."""
        saved = {f.position.path: f.position for f in self.store.files(tracked.job.job_id)}
        for path in self._paths_of(result):
            self.tailer.rewind(path, saved.get(path))

    def _charted(self, tracked: TrackedJob, rule: Rule, attempt: int, now: float) -> bool:
        """Whether a reading of `rule` is stored: an attempt's chart draws one quantity, the first
        rule's to report in it (told once, with its unit and direction)."""
        chosen = tracked.charted.setdefault(attempt, rule.name)
        if chosen == rule.name and (attempt, rule.name) not in tracked.series:
            unit = f" in {rule.unit}" if rule.unit else ""
            text = f"throughput of attempt {attempt}: {rule.name}{unit} ({rule.better or Better.HIGHER} is better)"
            self.decisions.record(tracked.job, Note(NoteKind.THROUGHPUT, text), now)
        return chosen == rule.name

    def _throughput(self, tracked: TrackedJob, rule: Rule, reading: Reading) -> list[Event]:
        """Follow a throughput report; a sustained drop below the baseline of its rule's series is a straggler."""
        job = tracked.job
        better = rule.better or Better.HIGHER
        series = tracked.keep_reading(reading.attempt, rule.name, better, reading.value)
        if reading.attempt != job.attempt or job.straggler_reported:
            return []
        found = series.straggling(self.settings)
        if found is None:
            return []
        return [StragglerFound(job.job_id, reading.attempt, reading.at, *found, rule.name, rule.unit, better)]

    def hangs(self, snapshots: dict[int, JobSnapshot], now: float) -> list[Event]:
        """A `hang` anomaly for each running job whose logs have gone quiet for its heartbeat timeout."""
        found: list[Event] = []
        for tracked in self.tracked.values():
            snapshot = snapshots.get(tracked.job.job_id)
            if snapshot is None or not snapshot.running or not self.has_log(tracked):
                continue
            event = signals.hung(tracked.job, tracked.last_output or now, now, self.settings)
            if event is not None:
                found.append(event)
        return found
