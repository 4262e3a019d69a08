"""How long another job waits while one job's verdict is stuck.

Job 7's failure asks for a verdict that never comes back: its node's log sits on a
mount that hangs (`--stuck node-log`: every read of node n1's log blocks), or Slurm
does not answer the partition read the verdict needs (`--stuck slurm`: the in-memory
Slurm stalls `partition_nodes`, and job 7's failure line blames its node). Then job 8
fails. The bench measures, from the moment job 8's failure line is written, when the
agent asks Slurm to requeue job 8 held and when it releases it; and, once job 7's
verdict is let go, how soon job 7 is released. An in-process agent with its real
thread pools and inotify watch, real log files and state database in a temporary
directory, over `MemorySlurm`; no Slurm needed. Default settings (poll_interval 1 s, tail_interval
0.25 s): the release waits for the poll that shows the job held, as with a real Slurm.

Usage: python bench/stuck_verdict.py [--rounds 20] [--stuck node-log|slurm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import _common  # noqa: F401  (puts the repository on sys.path)

from ajr_agent.adapters import node_logs
from ajr_agent.adapters.logs import ChangeWatcher
from ajr_agent.adapters.slurm.calls import Operation
from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.adapters.store import Store
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules

SEGFAULT = "Rank0: (1) segmentation fault: artificial segfault\n"
XID_ON_N1 = "[rank0]: n1 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.\n"


def log_of(directory: Path, job_id: int) -> Path:
    return directory / f"train_{job_id}_date_26-01-01_time_00-00-00.log"


def job(directory: Path, job_id: int, node: str) -> JobSnapshot:
    return JobSnapshot(
        job_id=job_id, state="RUNNING", user_id=os.getuid(), user="bench", restart_count=0, start_time=time.time(),
        end_time=None, batch=True, requeueable=True, nodes=node, reason="None", work_dir=str(directory), stdout="",
        name="train", comment='{"APS": {}}', partition="gpu",
    )  # fmt: skip


def seen(slurm: MemorySlurm, operation: Operation, job_id: int, seconds: float = 30) -> float:
    """When the agent asked `operation` for `job_id` (time.monotonic()), waiting up to `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(c.operation is operation and c.target == job_id for c in list(slurm.calls)):
            return time.monotonic()
        time.sleep(0.001)
    raise SystemExit(f"the agent never asked to {operation.value} job {job_id}")


def one_round(directory: Path, stuck: str) -> tuple[float, float, float]:
    """(requeuehold of job 8, release of job 8, release of job 7 once let go), in seconds."""
    answer = threading.Event()
    slurm = MemorySlurm(jobs={7: job(directory, 7, "n1"), 8: job(directory, 8, "n2")},
                        partitions={"gpu": ["n1", "n2", "n3"]})  # fmt: skip
    nodes = directory / "nodes"
    for node in ("n1", "n2"):
        (nodes / node).mkdir(parents=True)
        (nodes / node / "kern.log").write_text("Jan  1 00:00:00 kernel: nothing to see\n")
    restore: Callable[[], None] = lambda: None  # noqa: E731
    if stuck == "slurm":
        slurm.stall(Operation.PARTITION_NODES, answer)
    else:
        real = node_logs.tail_lines

        def hung_mount(path: str) -> list[str]:
            if "/n1/" in path:
                answer.wait(120)
            return real(path)

        node_logs.tail_lines = hung_mount  # type: ignore[assignment]
        restore = lambda: setattr(node_logs, "tail_lines", real)  # noqa: E731
    settings = Settings(state_db=directory / "ajr.db", rules_dirs=(), http_port=0, node_log_dir=str(nodes / "{node}"))
    for job_id in (7, 8):
        log_of(directory, job_id).write_text("step 1\n")
    agents: list[Agent] = []
    watcher = ChangeWatcher()  # as the service has: a write wakes the loop

    def run() -> None:  # SQLite wants the store used in the thread that opened it
        store = Store(settings.state_db)
        store.set_meta(watching_since=1.0)
        agents.append(Agent(settings, store, slurm, load_rules(settings), watcher))
        agents[0].run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while not agents or len(agents[0].feed.files) < 2:
            time.sleep(0.01)
        with log_of(directory, 7).open("a") as handle:
            handle.write(XID_ON_N1 if stuck == "slurm" else SEGFAULT)
        seen(slurm, Operation.REQUEUE_HOLD, 7)
        time.sleep(0.5)  # job 7's verdict is well under way, and stuck
        written = time.monotonic()
        with log_of(directory, 8).open("a") as handle:
            handle.write(SEGFAULT)
        hold = seen(slurm, Operation.REQUEUE_HOLD, 8) - written
        release = seen(slurm, Operation.RELEASE, 8) - written
        if any(c.operation is Operation.RELEASE and c.target == 7 for c in slurm.calls):
            raise SystemExit("job 7 was released before its verdict: the bench measured nothing")
        let_go = time.monotonic()
        answer.set()
        released_7 = seen(slurm, Operation.RELEASE, 7) - let_go
    finally:
        answer.set()
        restore()
        if agents:
            agents[0].stop()
        thread.join(30)
        watcher.close()
    return hold, release, released_7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--stuck", choices=("node-log", "slurm"), default="node-log")
    args = parser.parse_args()
    figures: list[tuple[float, float, float]] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="ajr-bench-") as directory:
            figures.append(one_round(Path(directory), args.stuck))
    for index, name in enumerate(("job 8 requeued held", "job 8 released", "job 7 released once let go")):
        values = sorted(f[index] for f in figures)
        print(f"{name:28s} median {statistics.median(values):.3f} s   max {values[-1]:.3f} s   ({args.rounds} rounds, "
              f"job 7's verdict stuck on {args.stuck})")


if __name__ == "__main__":
    main()
