"""Slow work runs off the decision loop: one job's verdict stuck on a node log that never
answers (a hung NFS mount) holds up no other job's recovery."""

from __future__ import annotations

from ajr_agent.adapters.slurm.calls import Operation

from ajr_agent.adapters.slurm.memory import MemorySlurm
from tests.unit.support import called, running

import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ajr_agent.adapters.store import Store
from ajr_agent.domain.model import Phase
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules

SEGFAULT = "Rank0: (1) segmentation fault: artificial segfault\n"


def log_of(tmp_path: Path, job_id: int) -> Path:
    return tmp_path / f"train_{job_id}_date_26-01-01_time_00-00-00.log"


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def hung_mount(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Reading node-1's logs blocks, as a read from a hung mount does, until the event is set."""
    answer = threading.Event()
    from ajr_agent.adapters import node_logs

    real = node_logs.tail_lines

    def stuck(path: str) -> list[str]:
        if "/node-1/" in path:
            answer.wait(60)
        return real(path)

    monkeypatch.setattr(node_logs, "tail_lines", stuck)
    yield answer
    answer.set()


def start(tmp_path: Path, queue: MemorySlurm, **changes: object) -> tuple[Agent, threading.Thread]:
    nodes = tmp_path / "nodes"
    for node in ("node-1", "node-2"):
        (nodes / node).mkdir(parents=True)
        (nodes / node / "kern.log").write_text("Jan  1 00:00:00 kernel: nothing to see\n")
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), clear_begin_time=True, poll_interval=0.1,
                        tail_interval=0.05, **{"node_log_dir": str(nodes / "{node}"), **changes})  # fmt: skip
    for job_id, node in ((7, "node-1"), (8, "node-2")):
        queue.jobs[job_id] = running(tmp_path, job_id=job_id, nodes=node, start_time=time.time())
        log_of(tmp_path, job_id).write_text("step 1\n")
    made: list[Agent] = []

    def run() -> None:  # SQLite wants the store used in the thread that opened it
        store = Store(settings.state_db)
        store.set_meta(watching_since=1.0)
        made.append(Agent(settings, store, queue, load_rules(settings)))
        made[0].run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_for(lambda: bool(made) and len(made[0].feed.files) == 2, 10), "the agent never followed both logs"
    return made[0], thread


def fail(tmp_path: Path, job_id: int) -> None:
    with log_of(tmp_path, job_id).open("a") as handle:
        handle.write(SEGFAULT)


def test_a_verdict_stuck_on_a_node_log_holds_up_no_other_job(tmp_path: Path, hung_mount: threading.Event) -> None:
    queue = MemorySlurm()
    agent, thread = start(tmp_path, queue)
    try:
        fail(tmp_path, 7)
        assert wait_for(lambda: "requeue_hold 7" in called(queue), 10)
        fail(tmp_path, 8)
        # Generous for a noisy machine; bench/stuck_verdict.py measures the figure.
        assert wait_for(lambda: "release 8" in called(queue), 5), called(queue)
        # Job 7 waits for its verdict: a faulty node must be kept out of its next attempt.
        assert "release 7" not in called(queue) and agent.jobs[7].phase is Phase.HELD
        hung_mount.set()
        assert wait_for(lambda: "release 7" in called(queue), 5), called(queue)
    finally:
        agent.stop()
        hung_mount.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_verdict_that_never_comes_releases_the_job_at_its_deadline(tmp_path: Path,
                                                                      hung_mount: threading.Event) -> None:  # fmt: skip
    queue = MemorySlurm()
    agent, thread = start(tmp_path, queue, attribution_timeout=0.5, slurm_command_timeout=0.5)
    try:
        fail(tmp_path, 7)
        assert wait_for(lambda: "release 7" in called(queue), 15), called(queue)
    finally:
        agent.stop()
        hung_mount.set()
        thread.join(10)
    notes = [e.text for e in Store(tmp_path / "ajr.db").events(7)]
    assert any("no verdict" in text for text in notes), notes


def test_a_slow_scontrol_for_one_job_holds_up_no_other_job(tmp_path: Path) -> None:
    queue, answer = MemorySlurm(), threading.Event()
    queue.stall(Operation.REQUEUE_HOLD, answer, target=7)  # slurmctld takes its time over job 7
    agent, thread = start(tmp_path, queue, node_log_dir="")
    try:
        fail(tmp_path, 7)
        assert wait_for(lambda: agent.jobs[7].phase is Phase.HOLDING, 10)
        fail(tmp_path, 8)
        assert wait_for(lambda: "release 8" in called(queue), 5), called(queue)
        assert queue.jobs[7].state == "RUNNING", "job 7's requeuehold is still waiting for slurmctld"
        answer.set()
        assert wait_for(lambda: "release 7" in called(queue), 5), called(queue)
    finally:
        agent.stop()
        answer.set()
        thread.join(10)
