"""Plain helpers the unit tests share: a running job as Slurm shows it, what Slurm was asked,
and a state database filled with the README's worked example. Fixtures are in conftest.py."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ajr_agent.adapters.logs import FilePosition
from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.adapters.store import ActionStatus, FollowedFile, Reading, Store
from ajr_agent.detect.rules import Rule, RuleKind, RuleSet
from ajr_agent.domain.jobs import JobSnapshot
from ajr_agent.domain.model import Action, ActionKind, ManagedJob, Note, Outcome, Phase, UnmanagedJob, Verdict
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool

LOG_NAME = "train_7_date_26-01-01_time_00-00-00.log"

# A rule written the way a site might write one, with two unbounded `.*`: on SLOW_LINE it
# needs its whole match timeout (the shipped rules are bounded and need none).
SLOW_RULE = Rule(name="site_checkpoint_timing", kind=RuleKind.CHECKPOINT,
                 pattern=r"SAVE_CHECKPOINT: iteration:.*, ckpt saving takes .* seconds")  # fmt: skip
SLOW_LINE = "SAVE_CHECKPOINT: iteration:" + ", ckpt saving takes " * 3000


def with_slow_rule(rules: RuleSet) -> RuleSet:
    """`rules` and SLOW_RULE after them."""
    return RuleSet.from_rules([*rules.rules, SLOW_RULE])


def running(tmp_path: Path, **changes: object) -> JobSnapshot:
    """Job 7 of the current user, running on node-1, working in `tmp_path`, managed with a limit of 3."""
    base = JobSnapshot(
        job_id=7, state="RUNNING", user_id=os.getuid(), user="me", restart_count=0, start_time=100.0, end_time=None,
        batch=True, requeueable=True, nodes="node-1", reason="None", work_dir=str(tmp_path), stdout="",
        name="train", comment='{"APS": {"max_requeue_times": 3}}',
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def followed_job(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> Path:
    """Job 7 running (as `running`), its log of one line found by a poll at 200.0: the log's path."""
    queue.jobs[7] = running(tmp_path)
    log = tmp_path / LOG_NAME
    log.write_text("step 1\n")
    agent.poll(200.0)
    return log


def append(log: Path, text: str) -> None:
    """The job writes `text` (whole lines) to its log."""
    with log.open("a") as handle:
        handle.write(text)


def site_agent(tmp_path: Path, queue: MemorySlurm, rules: str, **settings: object) -> Agent:
    """An agent over `queue` as conftest's `agent` fixture makes it, with `rules` as the text of a
    site rule file (tmp_path/rules.d/50-site.toml) and `settings` changed."""
    site = tmp_path / "rules.d"
    site.mkdir()
    (site / "50-site.toml").write_text(rules)
    chosen = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(site,), annotate_jobs=False,
                      **settings)  # type: ignore[arg-type]
    store = Store(chosen.state_db)
    store.set_meta(watching_since=1.0)
    return Agent(chosen, store, queue, load_rules(chosen), pool=InlinePool())


def called(slurm: MemorySlurm) -> list[str]:
    """What Slurm was asked, as the commands read: "requeue_hold 7", "update 7 StartTime=now+2"."""
    return [str(call) for call in slurm.calls]


MIN = 60.0
TOKEN = "s3cret-operator-token"


def fill(store: Store, now: float) -> None:
    """Job 1778 of the README's worked example (restarted twice, the last attempt cancelled), a
    running singleton job of another user, a job that left Slurm, and a refused spec."""
    t0 = now - 300 * MIN
    log = "/runs/llama_1778_date_26-01-01_time_00-00-00.log"
    job = ManagedJob(
        job_id=1778, name="llama", user="alice", user_id=1000, mode=ResumeMode.REQUEUE, requested_limit=10, limit=10,
        partition="gpu", work_dir="/runs", first_seen=t0, last_seen=now,
    )  # fmt: skip
    store.add_note(1778, -1, t0, Note("managed", "managed in requeue mode, requeue limit 10"))
    attempts = [(0, 0, 100, Outcome.FAILED, (30, 60, 90)), (1, 102, 200, Outcome.FAILED, (130, 160, 190)),
                (2, 202, 240, Outcome.CANCELLED, ())]  # fmt: skip
    for n, start, end, outcome, saves in attempts:
        started, ended = t0 + start * MIN, t0 + end * MIN
        store.add_note(1778, n, started, Note("attempt", f"attempt {n} started on gpu-{n + 1}"))
        for save in saves:
            store.add_note(1778, n, t0 + save * MIN, Note("checkpoint", "checkpoint saved (saved_checkpoint_to)"), log,
                           f"Saved checkpoint to /ckpt/iter_{int(save) * 10}")  # fmt: skip
        store.add_throughput([Reading(1778, n, started + (step + 1) * 20 * MIN / 4, 400.0 + 10 * step - 5 * n)
                              for step in range(4)])  # fmt: skip
        if outcome is Outcome.FAILED:
            line = f"Rank0: (1) segmentation fault: artificial segfault in attempt {n}"
            store.add_note(1778, n, ended, Note("failure", f"attempt {n} failed: segfault (segfault); requeueing held "
                                                f"({n + 1}/10)"), log, line)  # fmt: skip
            store.save_verdict(1778, n, ended + 1, Verdict("application", (), "segfault (segfault)", (f"{log}: {line}",)))
            store.add_note(1778, n, ended + 1, Note("verdict", "fault lies with the application: segfault (segfault)"))
            for kind in (ActionKind.REQUEUE_HOLD, ActionKind.RELEASE):
                action = store.journal(Action(kind, 1778, n, "segfault (segfault)"), dry_run=False, now=ended + 2)
                store.update_action(action, ActionStatus.DONE, ended + 3)
        else:
            store.add_note(1778, n, ended, Note("ended", "job cancelled; not requeued"))
        job = ManagedJob(**{
            **vars(job), "attempt": n, "attempt_started": started, "attempt_ended": ended, "attempt_outcome": outcome,
            "attempt_end_reason": "segfault (segfault)" if outcome is Outcome.FAILED else "CANCELLED",
            "attempt_first_checkpoint": t0 + saves[0] * MIN if saves else None,
            "attempt_last_checkpoint": t0 + saves[-1] * MIN if saves else None,
            "requeues_used": min(n + 1, 2), "last_anomaly": "segfault (segfault)", "nodes": f"gpu-{n + 1}",
            "last_checkpoint": t0 + 190 * MIN, "verdict": "application",
        })  # fmt: skip
        store.save_job(job)
    store.save_job(ManagedJob(**{**vars(job), "phase": Phase.FINISHED, "slurm_state": "CANCELLED",
                                 "last_action": "released"}))  # fmt: skip
    store.save_files([FollowedFile(1778, 2, FilePosition(log, 11, 22, 4096))])

    running = ManagedJob(
        job_id=1800, name="gpt", user="bob", user_id=1001, mode=ResumeMode.SINGLETON, requested_limit=None, limit=50,
        chain="gpt@1800", slurm_state="RUNNING", attempt_started=now - 30 * MIN, attempt_first_checkpoint=now - 10 * MIN,
        attempt_last_checkpoint=now - 10 * MIN, first_seen=now - 31 * MIN, last_seen=now,
    )  # fmt: skip
    store.save_job(running)
    store.save_job(ManagedJob(job_id=1700, name="old", user="alice", user_id=1000, mode=ResumeMode.REQUEUE,
                              requested_limit=None, limit=50, phase=Phase.GONE, slurm_state="COMPLETED"))  # fmt: skip
    store.save_unmanaged(UnmanagedJob(1801, "bad", "carol", '{"APS": {"max_requeue_times": "3"}}',
                                      "max_requeue_times: Input should be a valid integer", now))  # fmt: skip
    store.set_meta(backend="commands", dry_run=False, last_poll_at=now - 0.5, last_poll_seconds=0.01, jobs_in_queue=3,
                   managed_jobs=2, followed_files=1, agent_version="test")  # fmt: skip
