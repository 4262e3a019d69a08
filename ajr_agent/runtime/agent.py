"""The agent: one loop that reads Slurm and the logs, asks the policy, and acts.

Data flows one way: the poll and the log lines become events; the policy turns each
event into a new job state and actions; the store records both in one transaction;
the executor runs the actions and its outcomes come back as events.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

import click

from ajr_agent import __version__
from ajr_agent.domain import policy
from ajr_agent.detect import signals
from ajr_agent.surfaces import web
from ajr_agent.detect.attribution import Attributor, Evidence
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.config_file import load_settings
from ajr_agent.domain.errors import AjrError
from ajr_agent.runtime.observers import Observer, Observers
from ajr_agent.runtime.executor import Executor
from ajr_agent.adapters.epilog_spool import EpilogRecord, read_spool
from ajr_agent.adapters.logs import (
    ChangeWatcher,
    FilePosition,
    LogLine,
    LogTailer,
    TailNotice,
    TailResult,
    find_job_logs,
)
from ajr_agent.detect.timestamps import line_time
from ajr_agent.surfaces.metrics import Metrics
from ajr_agent.domain.model import (
    Action,
    ActionDone,
    ActionFailed,
    ActionKind,
    AnomalyFound,
    Attributed,
    CheckpointSaved,
    Event,
    ManagedJob,
    Note,
    Phase,
    StopCause,
    StragglerFound,
    UnmanagedJob,
)
from ajr_agent.detect.rules import RuleKind, RuleSet, default_rules_dir
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.adapters.slurm import SlurmError, SlurmGateway, open_gateway
from ajr_agent.surfaces.notify import Notifier
from ajr_agent.domain.spec import SPEC_KEY, parse_comment
from ajr_agent.adapters.store import (
    FollowedFile,
    Limits,
    Reading,
    Store,
    StoreCorruptError,
    StoreError,
    StoreFullError,
)
from ajr_agent.domain.text import printable

log = logging.getLogger("ajr.agent")

# Shortest pause between two passes over the followed files when writes keep waking the loop.
READ_GAP = 0.05

# Seconds between two log lines about a state database that keeps failing: one line per
# failed write would bury everything else in the agent's log.
STORE_TROUBLE_LOG_EVERY = 60.0

# Exit codes of ajr-agent. A setting, rule file or database schema it cannot use stays
# wrong until an admin acts: systemd does not restart it (RestartPreventExitStatus).
# A database it can no longer use in place (corrupt, a disk full at start) is worth a
# restart: the next start moves a corrupt file aside, and a disk may get room.
EXIT_NEEDS_ADMIN = 2
EXIT_RESTART = 75  # EX_TEMPFAIL

# Passes that may fail on the same lines of a job (an unexpected error while handling
# them) before they are skipped, with a note, rather than read again.
READ_TRIES = 3


def load_rules(settings: Settings) -> RuleSet:
    """The shipped rules, then every site rules directory in order (later files win by name)."""
    return RuleSet.load([default_rules_dir(), *settings.rules_dirs])


class Agent:
    """Watches managed jobs and recovers the ones that fail."""

    def __init__(self, settings: Settings, store: Store, gateway: SlurmGateway, rules: RuleSet,
                 watcher: ChangeWatcher | None = None, observer: Observer | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.rules = rules
        self.watcher = watcher
        self.observer = observer or Observer()
        self.executor = Executor(gateway, store, settings, self.observer)
        self.tailer = LogTailer(max_line_bytes=settings.max_line_bytes, quiet_after=settings.tail_quiet_after,
                                quiet_interval=settings.tail_quiet_interval)  # fmt: skip
        self.forgotten: dict[int, str] = store.forgotten()
        self.jobs: dict[int, ManagedJob] = {
            job_id: job for job_id, job in store.load_jobs().items() if job.phase is not Phase.FORGOTTEN
        }
        self.unmanaged: dict[int, str] = {job.job_id: job.comment for job in store.unmanaged()}
        self.files: dict[str, FollowedFile] = {}
        self.files_by_job: dict[int, set[str]] = {}
        self.real_paths: dict[str, str] = {}
        self.snapshots: dict[int, JobSnapshot] = {}
        self.last_scan: dict[int, float] = {}
        self.awaiting_end: dict[int, float] = {}
        self.unadopted_ends: dict[int, EpilogRecord] = {}
        self.attributor = Attributor(settings, rules, gateway)
        # Per attempt, in memory: the anomaly lines a verdict rests on, the throughput series
        # a straggler is judged by (both bounded), and when the job last wrote a line.
        self.evidence: dict[tuple[int, int], list[Evidence]] = {}
        self.series: dict[tuple[int, int], list[float]] = {}
        self.last_output: dict[int, float] = {}
        self.failed_reads: dict[int, int] = {}  # per job: passes in a row whose lines could not be handled
        self.deferred: set[str] = set()  # files with lines the last pass left for the next (rules_pass_budget)
        self.files_capped: set[int] = set()  # jobs told that they reached max_log_files_per_job
        # Action outcomes whose decision the store could not save: they cannot be seen again in
        # Slurm or the logs, so they are kept here and decided again at the next poll.
        self.unsaved_outcomes: dict[int, list[Event]] = {}
        self.store_trouble: StoreError | None = None  # the last write that failed, until one succeeds
        self.store_trouble_logged = 0.0
        self.store_failures = 0  # failed writes since the trouble was last logged
        self.exit_code = 0
        self.next_prune = 0.0
        try:
            settings.spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("epilog spool %s cannot be created (%s): job ends are seen at the next poll only",
                        settings.spool_dir, exc)  # fmt: skip
        if watcher is not None:
            watcher.watch(settings.spool_dir)
        self.stop_requested = threading.Event()
        self.reconciled = False
        self.watching_since = float(store.meta().get("watching_since") or 0) or time.time()
        store.set_meta(watching_since=self.watching_since)
        for followed in store.files():
            if followed.job_id in self.jobs:
                self._follow(followed)
                # Silence before a restart of the agent is unknown: it counts from now.
                self.last_output[followed.job_id] = time.time()

    # ---- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Run until stop() is called (SIGTERM), finishing the step under way."""
        next_poll = next_full_read = 0.0
        # Each step is guarded as a whole too: whatever a surprise in one costs, the loop goes
        # on for every job (the steps guard each job's part on their own).
        while not self.stop_requested.is_set():
            now = time.time()
            self._guarded(0, self.read_epilog_records, now)
            if now >= next_poll or self.awaiting_end:
                self._guarded(0, self.poll, now)
                # Retries wait seconds of back-off: looking for due ones at each poll is enough.
                self._guarded(0, self.run_due_actions, time.time())
                next_poll = now + self.settings.poll_interval
            read_at = time.monotonic()
            if read_at >= next_full_read:
                # Every followed file is stat-ed each tail_interval: the ground truth on
                # shared storage, whose writes from other hosts raise no inotify event.
                self._guarded(0, self.read_logs, time.time())
                next_full_read = read_at + self.settings.tail_interval
            else:
                # In between, only the files the kernel says were written, and those whose
                # lines the last pass had no time for.
                changed = self.watcher.take_changed() if self.watcher is not None else set()
                wanted = {self.real_paths.get(path, path) for path in changed} | self.deferred
                if wanted:
                    self._guarded(0, self.read_logs, time.time(), wanted)
            wait = max(0.0, min(next_full_read - time.monotonic(), next_poll - time.time()))
            if self.deferred:
                wait = min(wait, READ_GAP)
            if self.watcher is not None and self.watcher.wait(wait):
                # Busy logs wake the loop at every write: reading at most every READ_GAP
                # seconds keeps the agent's CPU bounded and costs detection no more than that.
                self.stop_requested.wait(max(0.0, READ_GAP - (time.monotonic() - read_at)))
            elif self.watcher is None:
                self.stop_requested.wait(wait)

    def stop(self) -> None:
        """Ask the loop to end after the current step."""
        self.stop_requested.set()

    def poll(self, now: float) -> None:
        """Read every job once; turn what changed into events; look for new log files."""
        started = time.monotonic()
        try:
            snapshots = self.gateway.list_jobs()
        except Exception as exc:  # a SlurmError, or a surprise in what Slurm printed
            # Never take a failed poll for "every job vanished".
            if isinstance(exc, SlurmError):
                log.error("cannot read the Slurm queue (will retry): %s", exc)
                self.observer.slurm_error(exc)
            else:
                log.exception("cannot read the Slurm queue: unexpected error (will retry)")
            self._guarded(0, self.store.set_meta, last_poll_error=str(exc), last_poll_error_at=now)
            return
        self.snapshots = {s.job_id: s for s in snapshots if SPEC_KEY in s.comment}
        if not self.reconciled:
            self.reconcile(now)
        for job_id, outcomes in list(self.unsaved_outcomes.items()):
            del self.unsaved_outcomes[job_id]
            self._guarded(job_id, self._handle_all, job_id, outcomes, now)
        self._guarded(0, self._drop_forgotten, now)
        for snapshot in self.snapshots.values():
            self._guarded(snapshot.job_id, self._observe, snapshot, now)
        self._settle_ends(now)
        self._check_hangs(now)
        for job_id in [j for j, job in self.jobs.items() if j not in self.snapshots]:
            self._guarded(job_id, self._vanish, job_id, now)
        for job in list(self.jobs.values()):
            self._guarded(job.job_id, self._scan_logs, job, now)
        saved = self._guarded(0, self.store.set_meta,
                              last_poll_at=now, last_poll_seconds=round(time.monotonic() - started, 4),
                              jobs_in_queue=len(snapshots), managed_jobs=len(self.jobs),
                              followed_files=len(self.files)) is None  # fmt: skip
        if saved and self.store_trouble is not None:
            self._store_recovered()
        self.observer.polled(time.monotonic() - started, len(self.files))
        self.observer.check_held(self.jobs.values(), now)
        if now >= self.next_prune:
            self._guarded(0, self.prune, now)

    def prune(self, now: float) -> None:
        """Remove the jobs that left Slurm longer than state_retention_days ago, a few per poll."""
        pruned = self.store.prune(now, self.settings.state_retention_days * 86400)
        if pruned.total:
            log.info("state database: removed %d jobs past their retention (%d rows in all)", pruned.jobs,
                     pruned.total)  # fmt: skip
        # A backlog of old jobs goes a batch per poll, so that no poll waits for all of it.
        self.next_prune = now if pruned.more else now + self.settings.state_prune_interval

    def reconcile(self, now: float) -> None:
        """Finish the actions a previous run journaled but did not see through."""
        self.reconciled = True
        for entry in self.store.open_actions():
            action = entry.action
            log.info("job %s: reconciling open %s from %s", action.job_id, action.kind.value, entry.status)
            events = self.executor.resume(entry, self.snapshots.get(action.acts_on), now)
            self._guarded(action.job_id, self._handle_all, action.job_id, events, now)

    def run_due_actions(self, now: float) -> None:
        """Try again the actions whose back-off has passed."""
        for entry in self.store.open_actions():
            if entry.next_try_at is None or entry.next_try_at > now:
                continue
            events = self.executor.resume(entry, self.snapshots.get(entry.action.acts_on), now)
            self._guarded(entry.action.job_id, self._handle_all, entry.action.job_id, events, now)

    # ---- Slurm's side -------------------------------------------------------------------

    def _observe(self, snapshot: JobSnapshot, now: float) -> None:
        if snapshot.job_id in self.forgotten:
            return
        job = self.jobs.get(snapshot.job_id)
        if job is None:
            job = self._adopt(snapshot, now)
            if job is None:
                return
        refreshed, events = policy.observe(job, snapshot, now, self.settings)
        self.jobs[job.job_id] = refreshed
        # last_seen alone changes at every poll: writing every job each second would cost
        # the poll ~1 ms per managed job; it is stored with the next real change.
        if not events and replace(refreshed, last_seen=job.last_seen) != job:
            self.store.save_job(refreshed)
        self._handle_all(job.job_id, events, now)

    def _adopt(self, snapshot: JobSnapshot, now: float) -> ManagedJob | None:
        if self.unmanaged.get(snapshot.job_id) == snapshot.comment:
            return None
        verdict = parse_comment(snapshot.comment)
        if verdict.spec is None:
            if verdict.problem:
                log.warning("job %s (%s, user %s) not managed: %s", snapshot.job_id, snapshot.name, snapshot.user,
                            verdict.problem)  # fmt: skip
                self.store.save_unmanaged(
                    UnmanagedJob(snapshot.job_id, snapshot.name, snapshot.user, snapshot.comment, verdict.problem, now)
                )
            self.unmanaged[snapshot.job_id] = snapshot.comment
            return None
        decision = policy.adopt(snapshot, verdict.spec, self.settings, now, self.watching_since)
        job = decision.job
        predecessor = next((j for j in self.jobs.values() if j.successor == job.job_id), None)
        if predecessor is not None:
            job = policy.inherit(job, predecessor)
        for note in decision.notes:
            self._record(job, note, now)
        record = self.unadopted_ends.pop(job.job_id, None)
        if record is not None:
            self._note_epilog(job, record)
        return job

    def read_epilog_records(self, now: float) -> None:
        """Take in what the EpilogSlurmctld hook reported: those jobs are polled at once."""
        for record in read_spool(self.settings.spool_dir):
            log.info("job %s: Slurm reports its end (exit %s on %s, restart count %d)", record.job_id,
                     record.exit_code or "?", record.nodes or "?", record.restart_count)  # fmt: skip
            self.awaiting_end[record.job_id] = now + self.settings.end_settle_seconds
            job = self.jobs.get(record.job_id)
            if job is not None:
                self._note_epilog(job, record)
            else:
                # A job that ran between two polls: noted when the poll this record triggers adopts it.
                self.unadopted_ends[record.job_id] = record

    def _settle_ends(self, now: float) -> None:
        # During the hook Slurm still shows the job COMPLETING; poll quickly until it does not.
        for job_id, deadline in list(self.awaiting_end.items()):
            snapshot = self.snapshots.get(job_id)
            if snapshot is None or snapshot.state != "COMPLETING" or now >= deadline:
                del self.awaiting_end[job_id]
                self.unadopted_ends.pop(job_id, None)

    def _note_epilog(self, job: ManagedJob, record: EpilogRecord) -> None:
        text = f"Slurm reported the end of restart {record.restart_count}: exit {record.exit_code or '?'}"
        self._record(job, Note("epilog", text), record.written_at)

    def _drop_forgotten(self, now: float) -> None:
        """Leave alone the jobs an operator told AJR to forget (`ajr forget`)."""
        self.forgotten = self.store.forgotten()
        for job_id in [j for j in self.jobs if j in self.forgotten]:
            job = replace(self.jobs[job_id], phase=Phase.FORGOTTEN, stop_cause=StopCause.FORGOTTEN,
                          stop_reason=f"forgotten by {self.forgotten[job_id]}")  # fmt: skip
            self._record(job, Note("forgotten", f"an operator ({self.forgotten[job_id]}) told AJR to leave it alone"), now)
            self._drop(job_id)

    def _drop(self, job_id: int) -> None:
        """Stop following a job and its log files."""
        self.jobs.pop(job_id, None)
        for path in self.files_by_job.pop(job_id, set()):
            self.deferred.discard(path)
            self.tailer.unfollow(path)
            del self.files[path]
            self.real_paths.pop(os.path.realpath(path), None)
        self.store.forget_files(job_id)
        # Bounded per attempt, but only forgetting the job bounds them over months.
        for per_attempt in (self.evidence, self.series):
            for key in [k for k in per_attempt if k[0] == job_id]:
                del per_attempt[key]
        self.last_output.pop(job_id, None)
        self.last_scan.pop(job_id, None)
        self.files_capped.discard(job_id)

    def _vanish(self, job_id: int, now: float) -> None:
        job = self.jobs.pop(job_id)
        self._handle_all(job_id, policy.vanished(job, now), now, job=job)
        self._drop(job_id)

    # ---- the logs' side -------------------------------------------------------------------

    def _scan_logs(self, job: ManagedJob, now: float) -> None:
        """Look for new log files of a running job: each poll until one is found, then less often."""
        snapshot = self.snapshots.get(job.job_id)
        if snapshot is None or not snapshot.running:
            return
        has_file = self._has_log(job)
        if has_file and now - self.last_scan.get(job.job_id, 0.0) < self.settings.log_scan_interval:
            return
        self.last_scan[job.job_id] = now
        for path in find_job_logs(job.name, job.job_id, self.log_dirs(job), owner_uid=job.user_id):
            if str(path) not in self.files:
                if len(self.files_by_job.get(job.job_id, ())) >= self.settings.max_log_files_per_job:
                    # A job may name any number of files after itself: each one followed costs a
                    # stat per pass and a row, so past the cap new ones are left alone, said once.
                    if job.job_id not in self.files_capped:
                        self.files_capped.add(job.job_id)
                        self._record(job, Note("warning", f"not following {path} nor any further log file: the "
                                                          f"job already has {self.settings.max_log_files_per_job} "
                                                          "followed (max_log_files_per_job)"), now)  # fmt: skip
                    break
                try:
                    stat = path.lstat()
                except OSError:
                    continue  # gone again since the scan; the next scan decides
                followed = FollowedFile(job.job_id, job.attempt, FilePosition(str(path), stat.st_ino, stat.st_dev, 0))
                self._follow(followed)
                self.last_output.setdefault(job.job_id, now)
                self.store.save_files([followed])
                self._record(job, Note("log", f"following {path} for attempt {job.attempt}"), now)

    def _has_log(self, job: ManagedJob) -> bool:
        """A log file of the job's current attempt is followed."""
        return any(self.files[p].attempt == job.attempt for p in self.files_by_job.get(job.job_id, ()))

    def log_dirs(self, job: ManagedJob) -> list[Path]:
        """Where a job's logs may lie: its working directory, its stdout directory, the site's log dirs."""
        dirs = [Path(d) for d in (job.work_dir, job.stdout_dir) if d]
        return dirs + list(self.settings.log_dirs)

    def _follow(self, followed: FollowedFile) -> None:
        job = self.jobs[followed.job_id]
        self.tailer.follow(followed.position.path, key=followed.job_id, position=followed.position,
                           owner_uid=job.user_id)
        self.files[followed.position.path] = followed
        self.files_by_job.setdefault(followed.job_id, set()).add(followed.position.path)
        # inotify reports paths under the directory's real path, which a job's symlinked
        # working directory (/home -> /data/home) hides.
        self.real_paths[os.path.realpath(followed.position.path)] = followed.position.path
        if self.watcher is not None:
            self.watcher.watch(Path(followed.position.path).parent)

    def read_logs(self, now: float, paths: set[str] | None = None) -> None:
        """Read what the followed files (all, or those of `paths`) have added and turn matching
        lines into events."""
        positions: list[FollowedFile] = []
        if paths is None:
            self.deferred.clear()
        else:
            self.deferred -= paths
        for job_id, result in self.tailer.read_all(paths, time.monotonic()).items():
            self.observer.lines_read(result.lines)
            job = self.jobs.get(job_id)
            if job is None:
                continue
            error = self._guarded(job_id, self._lines, job, result.lines, result.notices, now, positions)
            if error is None:
                self.failed_reads.pop(job_id, None)
            elif isinstance(error, StoreError):
                # Not the lines' fault: they are read again until their decisions can be saved.
                self._guarded(job_id, self._read_again, job, result)
            else:
                self._read_again_or_skip(job, result, now, positions)
        # Offsets are saved after the decisions, in one write for the whole pass: a crash in
        # between re-reads lines whose failure is then recognised as already handled, never lost.
        if positions:
            self._guarded(0, self.store.save_files, positions)

    def _lines(self, job: ManagedJob, lines: list[LogLine], notices: list[TailNotice], now: float,
               positions: list[FollowedFile]) -> None:  # fmt: skip
        events: list[Event] = []
        for notice in notices:
            self._record(job, Note("log", f"{notice.path}: {notice.kind}: {notice.detail}"), now)
        touched = {line.path for line in lines}
        if lines:
            self.last_output[job.job_id] = now
        readings: list[Reading] = []
        # One batch per read: the rule engine finds the candidate lines of a whole backlog at once,
        # within the pass's budget for this job; lines past it are read again at the next pass.
        matched, done = self.rules.match_within([line.text for line in lines], self.settings.rules_pass_budget)
        if done < len(lines):
            self._defer(lines[done:])
        for index, match in matched:
            line = lines[index]
            attempt = self.files[line.path].attempt
            rule = match.rule
            at = line_time(line.text, now)
            if rule.kind is RuleKind.ANOMALY:
                self._keep(self.evidence, (job.job_id, attempt), Evidence(match, line.text, line.path), 50)
                events.append(AnomalyFound(job.job_id, attempt, at, rule.name, rule.category or "anomaly",
                                           rule.fault.value, line.path, line.text))  # fmt: skip
            elif rule.kind is RuleKind.CHECKPOINT:
                events.append(CheckpointSaved(job.job_id, attempt, at, rule.name, line.path, line.text))
            elif match.value is not None:
                readings.append(Reading(job.job_id, attempt, at, match.value))
                events += self._throughput(job, readings[-1])
        if readings:
            self.store.add_throughput(readings)
        self._handle_all(job.job_id, events, now)
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

    def _read_again_or_skip(self, job: ManagedJob, result: TailResult, now: float,
                            positions: list[FollowedFile]) -> None:  # fmt: skip
        """After the lines of a read could not be handled: go back to where the job's files were
        last saved, so that the next pass reads them again; after READ_TRIES failed passes,
        skip them with a note instead, so that one poisonous line cannot stall the job's logs."""
        tries = self.failed_reads.get(job.job_id, 0) + 1
        if tries < READ_TRIES:
            self.failed_reads[job.job_id] = tries
            self._guarded(job.job_id, self._read_again, job, result)
            return
        self.failed_reads.pop(job.job_id, None)
        paths = self._paths_of(result)
        positions += [FollowedFile(job.job_id, self.files[p].attempt, self.tailer.position(p)) for p in paths]
        text = (f"{len(result.lines)} log lines of {', '.join(sorted(paths))} skipped: handling them failed "
                f"{READ_TRIES} times (the agent's log has the error)")  # fmt: skip
        self._guarded(job.job_id, self._record, self.jobs.get(job.job_id, job), Note("log", text), now)

    def _paths_of(self, result: TailResult) -> set[str]:
        """The followed files a read's lines and notices came from."""
        paths = {line.path for line in result.lines} | {notice.path for notice in result.notices}
        return paths & set(self.files)

    def _read_again(self, job: ManagedJob, result: TailResult) -> None:
        """Go back to where the files of a read were last saved: the next full pass (every
        tail_interval) reads them again."""
        saved = {f.position.path: f.position for f in self.store.files(job.job_id)}
        for path in self._paths_of(result):
            self.tailer.rewind(path, saved.get(path))

    @staticmethod
    def _keep(store: dict, key: tuple[int, int], value: object, limit: int) -> None:  # type: ignore[type-arg]
        items = store.setdefault(key, [])
        items.append(value)
        del items[:-limit]

    def _throughput(self, job: ManagedJob, reading: Reading) -> list[Event]:
        """Follow a throughput report; a sustained drop below the attempt's baseline is a straggler."""
        key = (job.job_id, reading.attempt)
        self._keep(self.series, key, reading.value, 500)
        if reading.attempt != job.attempt or job.straggler_reported:
            return []
        found = signals.straggling(self.series[key], self.settings)
        return [StragglerFound(job.job_id, reading.attempt, reading.at, found[0], found[1])] if found else []

    def _check_hangs(self, now: float) -> None:
        """A running job whose logs have gone quiet for its heartbeat timeout is hung."""
        for job in list(self.jobs.values()):
            snapshot = self.snapshots.get(job.job_id)
            has_log = self._has_log(job)
            if snapshot is None or not snapshot.running or not has_log:
                continue
            event = signals.hung(job, self.last_output.get(job.job_id, now), now, self.settings)
            if event is not None:
                self._guarded(job.job_id, self._handle_all, job.job_id, [event], now)

    # ---- decisions ---------------------------------------------------------------------------

    def _handle_all(self, job_id: int, events: list[Event], now: float, job: ManagedJob | None = None) -> None:
        """Feed events to the policy one by one, following the outcomes of the actions it takes."""
        queue = list(events)
        while queue:
            event = queue.pop(0)
            current = self.jobs.get(job_id, job)
            if current is None:
                if isinstance(event, (ActionDone, ActionFailed)):
                    self.executor.settle(event)  # the job is gone; its action is over all the same
                continue
            successor = policy.next_in_chain(current, self.snapshots.values()) if current.chain else None
            decision = policy.decide(current, event, self.settings, successor)
            self.observer.decided(current, event, decision)
            try:
                with self.store.transaction():
                    # An action's outcome and what it leads to land together: a crash in between
                    # leaves the action open, and start-up finishes it against Slurm's state.
                    if isinstance(event, (ActionDone, ActionFailed)):
                        self.executor.settle(event)
                    self.store.save_job(decision.job)
                    for note in decision.notes:
                        self._note(decision.job, note, _event_time(event, now), event)
                    journaled = [self.store.journal(a, self.settings.dry_run, time.time()) for a in decision.actions]
            except StoreError:
                # Nothing of this decision was saved and none of its actions run (no action runs
                # unjournaled). What the poll and the logs bring again is decided again then;
                # what only this loop knows (what Slurm answered, a verdict) waits here.
                kept = [e for e in [event, *queue] if isinstance(e, (ActionDone, ActionFailed, Attributed))]
                if kept:
                    self.unsaved_outcomes.setdefault(job_id, []).extend(kept)
                raise
            if job_id in self.jobs or job is None:
                self.jobs[job_id] = decision.job
            if decision.job.phase is Phase.HANDED_OVER and current.phase is not Phase.HANDED_OVER:
                self._pass_on_chain(decision.job)
            failed = decision.job.handled_attempt
            if failed is not None and failed != current.handled_attempt:
                # The verdict comes before any release, so a faulty node is out of the next attempt.
                queue[:0] = self._attribute(decision.job, failed, event, now)
            for action in journaled:
                queue.extend(self.executor.run(action, time.time()))

    def _attribute(self, job: ManagedJob, attempt: int, cause: Event, now: float) -> list[Event]:
        """The verdict on a failed attempt, with its evidence stored; drains follow a node verdict."""
        snapshot = self.snapshots.get(job.job_id)
        ended = snapshot.state if snapshot is not None and snapshot.ended else ""
        failed_at = getattr(cause, "at", now)
        event, notes = self.attributor.attribute(job, attempt, self.evidence.get((job.job_id, attempt), []), ended,
                                                 failed_at, now)  # fmt: skip
        self.store.save_verdict(job.job_id, attempt, now, event.verdict)
        for text in notes:
            self._record(job, Note("verdict", text), now)
        if event.verdict.fault == "node" and event.verdict.nodes:
            self._drain(job, attempt, event, now)
        return [event]

    def _drain(self, job: ManagedJob, attempt: int, attributed: Attributed, now: float) -> None:
        """Drain the blamed nodes, within the site's hourly budget and never a partition's last ones."""
        if not self.settings.drain_faulty_nodes:
            return
        try:
            partitions = self.gateway.partition_nodes()
            out = self.gateway.nodes_out_of_service()
        except SlurmError as exc:
            self.observer.slurm_error(exc)
            self._record(job, Note("warning", f"no node drained: cannot read the partitions: {exc}"), now)
            return
        drain, spared = policy.plan_drains(attributed.verdict.nodes, self.store.drains_since(now - 3600),
                                           partitions, out, self.settings)  # fmt: skip
        for text in spared:
            self._record(job, Note("warning", f"not drained: {text}"), now)
        evidence = attributed.verdict.evidence[0] if attributed.verdict.evidence else attributed.verdict.cause
        for node in drain:
            # The evidence is a line of the user's log: in a node's Reason, every admin's
            # `sinfo -R` shows it, so it goes in as one printable line.
            reason = printable(f"ajr: job {job.job_id} {attributed.verdict.cause}: {evidence}", 250)
            action = self.store.journal(Action(ActionKind.DRAIN, job.job_id, attempt, reason, nodes=node),
                                        self.settings.dry_run, now)  # fmt: skip
            self._handle_all(job.job_id, self.executor.run(action, time.time()), now)

    def _pass_on_chain(self, predecessor: ManagedJob) -> None:
        """The released job of a singleton chain takes over the chain's counts."""
        successor = self.jobs.get(predecessor.successor or -1)
        if successor is not None:
            self.jobs[successor.job_id] = policy.inherit(successor, predecessor)
            self.store.save_job(self.jobs[successor.job_id])

    def _record(self, job: ManagedJob, note: Note, now: float) -> None:
        with self.store.transaction():
            self.store.save_job(job)
            self._note(job, note, now, None)
        self.jobs[job.job_id] = job

    def _note(self, job: ManagedJob, note: Note, at: float, event: Event | None) -> None:
        path = getattr(event, "path", None)
        line = getattr(event, "line", None)
        self.store.add_note(job.job_id, getattr(event, "attempt", job.attempt), at, note, path, line)
        # A fresh agent on a busy cluster meets thousands of jobs that were over before it
        # came: recorded for `ajr show`, but not worth a line each in the service's log.
        level = logging.DEBUG if job.phase is Phase.FINISHED and note.kind == "managed" else logging.INFO
        log.log(level, "job %s (%s): %s", job.job_id, job.name, note.text)

    def _guarded(self, job_id: int, handler, *args, **kwargs) -> Exception | None:  # type: ignore[no-untyped-def]
        """Run ``handler``; the error it failed with (logged), or None. One job's surprise, or a
        state database that cannot be written for a while, must not stop the agent for every
        other job (job 0: no job in particular)."""
        try:
            handler(*args, **kwargs)
        except StoreError as exc:
            self._store_failed(exc)
            return exc
        except AjrError as exc:
            log.error("job %s: %s", job_id, exc)
            return exc
        except Exception as exc:
            log.exception("job %s: unexpected error; the agent goes on with the other jobs", job_id)
            return exc
        return None

    def _store_failed(self, exc: StoreError) -> None:
        """Say in the log that the state database fails, once a minute while it does."""
        self.observer.store_error(exc)
        self.store_failures += 1
        if isinstance(exc, StoreCorruptError):
            # Going on would fail every write from now on; a restart moves the file aside.
            log.critical("%s; stopping so that systemd restarts the agent", exc)
            self.exit_code = EXIT_RESTART
            self.stop()
        elif self.store_trouble is None or time.monotonic() - self.store_trouble_logged >= STORE_TROUBLE_LOG_EVERY:
            log.error("state database: %s. No job is requeued or released while decisions cannot be saved; "
                      "they are taken again as soon as it can be written (%d writes failed so far)", exc,
                      self.store_failures)  # fmt: skip
            self.store_trouble_logged = time.monotonic()
        self.store_trouble = exc

    def _store_recovered(self) -> None:
        log.warning("state database can be written again after %d failed writes; the decisions that waited are "
                    "taken now", self.store_failures)  # fmt: skip
        self.store_trouble, self.store_failures = None, 0


def _event_time(event: Event, now: float) -> float:
    return getattr(event, "at", now)


# Read once, at start: the store, the spool watch, the gateway, the log tailer, the cockpit's
# server and the notifier are built from them. A reload reports a change to one of these and
# keeps the running value. (packaging/etc/ajr.toml marks them "(restart)".)
RESTART_SETTINGS = (
    "state_db", "state_reserve_mb", "spool_dir", "slurm_backend", "slurm_command_timeout", "max_line_bytes",
    "tail_quiet_after", "tail_quiet_interval",
    "http_bind", "http_port", "operator_token",
    "notify_webhook_url", "notify_command", "notify_held_after", "notify_timeout", "notify_retry_delay",
    "notify_max_tries", "notify_queue_size",
)  # fmt: skip


def reload(agent: Agent, config_file: Path | None, force_dry_run: bool = False) -> list[str]:
    """Reload the configuration and the rules into a running agent (SIGHUP); returns what happened.

    Both are built before either is applied: when one fails (a bad value, a broken rule
    file) the agent goes on with the old ones. Settings in RESTART_SETTINGS keep their
    running value and are reported as needing a restart; the others take effect at once.
    """
    old_settings, old_rules = agent.settings, agent.rules
    try:
        settings = load_settings(config_file)
        if force_dry_run:
            settings = settings.with_overrides(dry_run=True)
        rules = load_rules(settings)
    except AjrError as exc:
        message = f"reload refused, the running settings and rules stay in force: {exc}"
        log.error("%s", message)
        return [message]
    messages = []
    kept = {name: getattr(old_settings, name) for name in RESTART_SETTINGS
            if getattr(settings, name) != getattr(old_settings, name)}  # fmt: skip
    for name, value in kept.items():
        messages.append(f"{name} = {_shown(getattr(settings, name))} needs a restart of the agent; "
                        f"it still uses {_shown(value)}")  # fmt: skip
        log.warning("%s", messages[-1])
    settings = settings.with_overrides(**kept)
    for name in Settings.model_fields:
        if getattr(settings, name) != getattr(old_settings, name):
            messages.append(f"{name}: {_shown(getattr(old_settings, name))} -> {_shown(getattr(settings, name))}")
            log.info("%s", messages[-1])
    # The agent hands its settings and rules to helpers (the executor, ...): each holder of
    # the old objects gets the new ones, so a helper added later is not left behind.
    for holder in [agent, *vars(agent).values()]:
        if getattr(holder, "settings", None) is old_settings:
            holder.settings = settings
        if getattr(holder, "rules", None) is old_rules:
            holder.rules = rules
    agent.store.limits = store_limits(settings)
    if settings.dry_run != old_settings.dry_run:
        agent.store.set_meta(dry_run=settings.dry_run)
        if settings.dry_run:
            log.info("DRY_RUN mode is active")
    changed = len(messages) > len(kept)
    messages.append(f"reloaded: {len(rules.rules)} rules" + ("" if changed else ", no setting changed"))
    log.info("%s", messages[-1])
    return messages


def _shown(value: object) -> str:
    """A setting's value as it is written in ajr.toml."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return str(getattr(value, "value", value))  # enums by their value


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
        store = Store.open_for_agent(settings.state_db, limits=store_limits(settings),
                                     reserve_bytes=settings.state_reserve_mb * 1024 * 1024)  # fmt: skip
        gateway = open_gateway(settings)
    except StoreFullError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_RESTART)
    except AjrError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(EXIT_NEEDS_ADMIN)
    if settings.dry_run:
        log.info("DRY_RUN mode is active")
    watcher = ChangeWatcher()
    metrics, notifier = Metrics(), Notifier.from_settings(settings)
    notifier.start()
    agent = Agent(settings, store, gateway, rules, watcher, Observers([metrics, notifier]))
    server = web.start_for_agent(settings, metrics)
    store.set_meta(backend=gateway.backend, dry_run=settings.dry_run, agent_started_at=time.time(),
                   agent_version=__version__)  # fmt: skip
    log.info("ajr-agent %s started: backend %s, %d rules, state %s", __version__, gateway.backend,
             len(rules.rules), settings.state_db)  # fmt: skip

    def on_term(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current step", signum)
        agent.stop()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload(agent, config_file, force_dry_run=bool(dry_run))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        agent.run()
    finally:
        if server is not None:
            server.close()
        notifier.stop(grace=settings.notify_timeout)
        watcher.close()
        store.close()
        log.info("ajr-agent stopped")
    sys.exit(agent.exit_code)


def store_limits(settings: Settings) -> Limits:
    """How much of each job's story the store keeps, as the settings say."""
    return Limits(settings.max_bulk_notes_per_job, settings.max_notes_per_job, settings.max_readings_per_attempt)


if __name__ == "__main__":
    main()
