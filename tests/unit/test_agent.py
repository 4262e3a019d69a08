"""The agent's wiring, in-process, with real files and store and a scripted Slurm queue.

The behaviour against the real Slurm is proven in tests/integration; these cases pin
what is awkward to provoke there: a failing poll, vanishing jobs and files.
"""

from __future__ import annotations

from ajr_agent.adapters.slurm.calls import Operation
from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import LOG_NAME, SLOW_LINE, append, called, followed_job, running, with_slow_rule

import os
from pathlib import Path

import pytest

from ajr_agent.runtime import log_feed
from ajr_agent.detect.rules import grep
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.model import Phase
from ajr_agent.detect.rules import RuleMatch
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.adapters.store import Store

def following(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> Path:
    """Job 7 running, its log followed and read to its end; the log's path."""
    queue.jobs[7] = running(tmp_path)
    log = tmp_path / LOG_NAME
    log.write_text("step 1\n")
    agent.poll(200.0)
    agent.read_logs(200.5)
    return log


def test_segfault_line_requeues_held_then_releases_once_pending(agent: Agent, queue: MemorySlurm,
                                                                tmp_path: Path) -> None:  # fmt: skip
    log = followed_job(agent, queue, tmp_path)
    assert [f.position.path for f in agent.store.files(7)] == [str(log)]
    append(log, "Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(201.0)
    annotate = "update 7 AdminComment=ajr: requeued after segfault (segfault) on node-1 (1/3)"
    assert called(queue) == ["requeue_hold 7", annotate]
    assert agent.jobs[7].phase is Phase.HELD
    agent.poll(202.0)
    assert called(queue) == ["requeue_hold 7", annotate, "release 7", "update 7 StartTime=now+2"]
    assert agent.jobs[7].phase is Phase.RESTARTING


def test_the_lines_a_job_wrote_before_it_ended_are_read_before_its_end(agent: Agent, queue: MemorySlurm,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    append(followed_job(agent, queue, tmp_path), "Saved checkpoint to /ckpt/final\n")
    queue.end(7, "COMPLETED", at=queue.clock())
    agent.poll(201.0)  # the end seen before the kernel's word on the file (or the EpilogSlurmctld's first)
    job = agent.jobs[7]
    assert (job.phase, job.attempt_last_checkpoint) == (Phase.FINISHED, 201.0)
    story = [note.text for note in agent.store.events(7)]
    assert story.index("checkpoint saved (saved_checkpoint_to)") < story.index("job completed successfully")


def test_a_failed_poll_is_not_taken_for_vanished_jobs(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    queue.jobs[7] = running(tmp_path)
    agent.poll(200.0)
    queue.fail(Operation.LIST_JOBS)
    agent.poll(201.0)
    assert agent.jobs[7].phase is Phase.WATCHING
    assert "Unable to contact" in str(agent.store.meta()["last_poll_error"])
    del queue.jobs[7]
    agent.poll(202.0)
    assert 7 not in agent.jobs and agent.store.job(7).phase is Phase.GONE  # type: ignore[union-attr]
    assert agent.store.files(7) == []


def test_a_surprise_in_the_queue_read_is_a_failed_poll_too(agent: Agent, queue: MemorySlurm, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    queue.jobs[7] = running(tmp_path)
    agent.poll(200.0)

    def undecodable() -> list[JobSnapshot]:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(queue, "list_jobs", undecodable)
    agent.poll(201.0)
    assert agent.jobs[7].phase is Phase.WATCHING
    assert "invalid start byte" in str(agent.store.meta()["last_poll_error"])


def test_a_vanished_log_file_is_noted_and_the_agent_goes_on(agent: Agent, queue: MemorySlurm,
                                                            tmp_path: Path) -> None:  # fmt: skip
    log = following(agent, queue, tmp_path)
    log.unlink()
    agent.read_logs(202.0)
    assert any("vanished" in e.text for e in agent.store.events(7))


def test_an_unexpected_error_for_one_job_spares_the_others(agent: Agent, queue: MemorySlurm, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    queue.jobs[7] = running(tmp_path)
    queue.jobs[8] = running(tmp_path, job_id=8, name="other")
    original = agent._observe

    def explode_for_7(snapshot: JobSnapshot, now: float) -> None:
        if snapshot.job_id == 7:
            raise RuntimeError("boom")
        original(snapshot, now)

    monkeypatch.setattr(agent, "_observe", explode_for_7)
    agent.poll(200.0)
    assert 8 in agent.jobs and agent.jobs[8].attempt == 0


def test_logs_of_another_user_or_symlinks_are_not_followed(agent: Agent, queue: MemorySlurm,
                                                          tmp_path: Path) -> None:  # fmt: skip
    queue.jobs[7] = running(tmp_path)
    foreign = tmp_path / LOG_NAME
    foreign.write_text("Rank0: (1) segmentation fault\n")
    os.chown(foreign, 12345, 12345)
    (tmp_path / "train_7_date_26-01-01_time_00-00-01.log").symlink_to(foreign)
    agent.poll(200.0)
    agent.read_logs(201.0)
    assert agent.store.files(7) == [] and called(queue) == []


def test_a_foreign_file_renamed_over_a_followed_log_is_not_read(agent: Agent, queue: MemorySlurm,
                                                                tmp_path: Path) -> None:  # fmt: skip
    log = following(agent, queue, tmp_path)
    forged = tmp_path / "forged"
    forged.write_text("Rank0: (1) segmentation fault: forged by someone else\n")
    os.chown(forged, os.getuid() + 1000, -1)
    forged.replace(log)
    agent.read_logs(202.0)
    assert called(queue) == [] and agent.jobs[7].phase is Phase.WATCHING
    assert any(f"owned by uid {os.getuid() + 1000}" in e.text for e in agent.store.events(7))


def test_agent_restarted_between_requeuehold_and_release_releases_once(agent: Agent, queue: MemorySlurm,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    queue.jobs[7] = running(tmp_path)
    log = tmp_path / LOG_NAME
    log.write_text("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.poll(200.0)
    agent.read_logs(201.0)
    assert agent.jobs[7].phase is Phase.HELD
    agent.store.close()

    settings = agent.settings
    again = Agent(settings, Store(settings.state_db), queue, load_rules(settings), pool=InlinePool())
    assert again.jobs[7].phase is Phase.HELD
    again.poll(300.0)
    again.read_logs(301.0)  # resumes after the segfault line: no second failure
    again.poll(302.0)
    assert called(queue).count("requeue_hold 7") == 1 and called(queue).count("release 7") == 1
    assert again.jobs[7].phase is Phase.RESTARTING


def test_singleton_successor_takes_over_the_chain(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    spec = '{"APS": {"auto_resume_mode": "singleton_dependency", "max_requeue_times": 4}}'
    queue.jobs[7] = running(tmp_path, comment=spec)
    queue.jobs[8] = running(tmp_path, job_id=8, comment=spec, state="PENDING", start_time=None, reason="JobHeldUser")
    queue.jobs[9] = running(tmp_path, job_id=9, comment=spec, state="PENDING", start_time=None, reason="JobHeldUser",
                            user_id=4242)  # fmt: skip
    agent.poll(200.0)
    (tmp_path / LOG_NAME).write_text("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.poll(201.0)
    agent.read_logs(202.0)
    assert "cancel 7" in called(queue) and "release 8" in called(queue) and "release 9" not in called(queue)
    assert called(queue).index("cancel 7") < called(queue).index("release 8")
    assert agent.jobs[7].phase is Phase.HANDED_OVER
    assert agent.jobs[8].chain == agent.jobs[7].chain == "train@7" and agent.jobs[8].requeues_used == 1
    assert agent.jobs[9].chain == "train@9"


def test_a_job_end_record_makes_the_agent_poll_until_slurm_shows_the_end(tmp_path: Path, queue: MemorySlurm) -> None:
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), spool_dir=tmp_path / "spool",
                        end_settle_seconds=5)  # fmt: skip
    agent = Agent(settings, Store(settings.state_db), queue, load_rules(settings), pool=InlinePool())
    queue.jobs[7] = running(tmp_path)
    agent.poll(100.0)
    (settings.spool_dir / "7.0.end").write_text("job_id=7\nrestart_count=0\nexit_code=1:0\nnodes=node-1\n")
    queue.jobs[7] = running(tmp_path, state="COMPLETING")
    agent.read_epilog_records(101.0)
    assert agent.ends.awaiting == {7: 106.0}
    assert any(e.kind == "epilog" and "exit 1:0" in e.text for e in agent.store.events(7))
    agent.poll(101.1)
    assert 7 in agent.ends.awaiting  # still COMPLETING: keep polling
    queue.jobs[7] = running(tmp_path, state="FAILED", end_time=101.0)
    agent.poll(101.3)
    assert agent.ends.awaiting == {}
    assert called(queue)[0] == "requeue_hold 7"


def test_a_backlog_goes_through_grep_and_the_block_scan(agent: Agent, queue: MemorySlurm, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # Over 1 MiB in one read: grep prefilters it, the TFLOP rule scans it whole.
    started: list[int] = []
    real_start = grep.GrepPrefilter.start

    def counting_start(command: list[str | bytes], text: str) -> grep.GrepPrefilter | None:
        started.append(len(text))
        return real_start(command, text)

    monkeypatch.setattr(grep.GrepPrefilter, "start", staticmethod(counting_start))
    log = following(agent, queue, tmp_path)
    shapes = [
        " iteration {i:8d}/ 1000000 | elapsed time per iteration (ms): 812.3 | throughput per GPU (TFLOP/s/GPU): "
        "{tflops:.1f} | lm loss: 2.345678E+00 | loss scale: 1.0 | grad norm: 0.812 | number of nan iterations:   0 |",
        "gpu-node-{i:03d}:4000{i}:4010{i} [3] NCCL INFO Channel 07/0 : 3[3] -> 4[4] via NET/IB/3/GDRDMA and mlx5_0:1",
        "sample {i}: the quick brown fox jumps over the lazy dog, an error-free sentence of {i} words",
    ]
    lines = [shapes[i % 3].format(i=i, tflops=400 + i % 7) for i in range(10_000)]
    with log.open("a") as handle:
        handle.write("\n".join(lines) + "\nRank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(201.0)
    assert started and started[0] > grep.GREP_MIN_BATCH_CHARS
    readings = [value for _, _, value in agent.store.throughput(7)]
    assert readings == [400.0 + i % 7 for i in range(0, 10_000, 3)]
    assert called(queue)[0] == "requeue_hold 7"


def test_lines_that_could_not_be_handled_are_read_again(agent: Agent, queue: MemorySlurm, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    log = following(agent, queue, tmp_path)
    real = agent.rules.match_within
    failures = iter([RuntimeError("a bug in the rules"), None])

    def once_broken(lines: list[str], budget: float) -> tuple[list[tuple[int, RuleMatch]], int]:
        failure = next(failures)
        if failure is not None:
            raise failure
        return real(lines, budget)

    monkeypatch.setattr(agent.rules, "match_within", once_broken)
    with log.open("a") as handle:
        handle.write("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(201.0)
    assert called(queue) == []  # the pass failed
    agent.read_logs(202.0)
    assert called(queue)[0] == "requeue_hold 7"  # the same lines, read again


def test_lines_that_keep_failing_are_skipped_with_a_note(agent: Agent, queue: MemorySlurm, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    log = following(agent, queue, tmp_path)
    real = agent.rules.match_within

    def broken_on_poison(lines: list[str], budget: float) -> tuple[list[tuple[int, RuleMatch]], int]:
        if any("poison" in line for line in lines):
            raise RuntimeError("a bug in the rules")
        return real(lines, budget)

    monkeypatch.setattr(agent.rules, "match_within", broken_on_poison)
    with log.open("a") as handle:
        handle.write("poison\nRank0: (1) segmentation fault: artificial segfault\n")
    for second in range(log_feed.READ_TRIES):
        agent.read_logs(201.0 + second)
    assert called(queue) == []
    notes = [e.text for e in agent.store.events(7) if "skipped" in e.text]
    assert notes == [f"2 log lines of {log} skipped: handling them failed 3 times (the agent's log has the error)"]
    agent.read_logs(210.0)  # nothing is read again
    with log.open("a") as handle:
        handle.write("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(211.0)
    assert called(queue)[0] == "requeue_hold 7"  # later lines are handled


def test_one_jobs_slow_lines_wait_for_later_passes_while_another_job_is_recovered(
    agent: Agent, queue: MemorySlurm, tmp_path: Path
) -> None:
    slow_dir, victim_dir = tmp_path / "slow", tmp_path / "victim"
    slow_dir.mkdir()
    victim_dir.mkdir()
    queue.jobs[7] = running(slow_dir)
    queue.jobs[8] = running(victim_dir, job_id=8, name="other")
    slow_log = slow_dir / LOG_NAME
    victim_log = victim_dir / "other_8_date_26-01-01_time_00-00-00.log"
    slow_log.write_text("")
    victim_log.write_text("")
    agent.apply(agent.settings, with_slow_rule(agent.rules))
    agent.poll(200.0)
    # Each of these lines costs the site's slow rule its whole 50 ms timeout.
    slow_log.write_text(f"{SLOW_LINE}\n" * 40 + "Saved checkpoint to /ckpt/1\n")
    victim_log.write_text("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(201.0)
    assert "requeue_hold 8" in called(queue), "the other job's failure is handled in the same pass"
    assert agent.feed.tailer.position(str(slow_log)).offset < slow_log.stat().st_size
    assert agent.feed.deferred == {str(slow_log)}
    # The deferred position is what a restart would resume from.
    assert {f.position.path: f.position.offset for f in agent.store.files(7)}[str(slow_log)] == \
        agent.feed.tailer.position(str(slow_log)).offset
    for second in range(200):
        if not agent.feed.deferred:
            break
        agent.read_logs(202.0 + second, set(agent.feed.deferred))
    assert agent.feed.deferred == set()
    assert agent.jobs[7].attempt_first_checkpoint is not None, "every line is matched in the end"


class Crash(BaseException):
    """The agent killed at one instant: nothing after it runs, and nothing catches it."""


@pytest.mark.parametrize("instant", [Phase.HELD, Phase.RESTARTING], ids=["after-requeuehold", "after-release"])
def test_a_crash_after_slurm_acted_and_before_the_phase_was_saved_is_finished_at_start(
    agent: Agent, queue: MemorySlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instant: Phase
) -> None:
    log = following(agent, queue, tmp_path)
    real_save = agent.store.save_job

    def crash_when_saving(job: object) -> None:
        if getattr(job, "phase", None) is instant:
            raise Crash()
        real_save(job)  # type: ignore[arg-type]

    monkeypatch.setattr(agent.store, "save_job", crash_when_saving)
    with log.open("a") as handle:
        handle.write("Rank0: (1) segmentation fault: artificial segfault\n")
    with pytest.raises(Crash):
        agent.read_logs(201.0)
        agent.poll(202.0)
    agent.store.close()

    settings = agent.settings
    again = Agent(settings, Store(settings.state_db), queue, load_rules(settings), pool=InlinePool())
    for second in range(3):
        again.poll(300.0 + second)
        again.read_logs(300.5 + second)
    assert called(queue).count("requeue_hold 7") == 1, "one failure, one requeue"
    assert called(queue).count("release 7") == 1, "the held job is released once, never left held"
    assert again.jobs[7].phase is Phase.RESTARTING
    assert [e.status for e in again.store.actions(7) if e.action.kind.value != "annotate"] == ["done", "done"]


def test_a_job_naming_ever_more_files_after_itself_is_followed_up_to_its_cap(
    tmp_path: Path, queue: MemorySlurm
) -> None:
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), max_log_files_per_job=3)
    agent = Agent(settings, Store(settings.state_db), queue, load_rules(settings), pool=InlinePool())
    queue.jobs[7] = running(tmp_path)
    for second in range(10):
        (tmp_path / f"train_7_date_26-01-01_time_00-00-{second:02d}.log").write_text("step\n")
    agent.poll(200.0)
    agent.poll(200.0 + settings.log_scan_interval + 1)
    assert len(agent.store.files(7)) == 3 and len(agent.feed.files) == 3
    warnings = [e.text for e in agent.store.events(7) if e.kind == "warning"]
    assert len(warnings) == 1 and "max_log_files_per_job" in warnings[0]
