"""A node lost under a job: Slurm requeues the job itself or ends it NODE_FAIL; the agent counts the
failure once, blames the node Slurm lost, keeps it out and clears the requeue wait."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from ajr_agent.adapters.slurm.memory import REQUEUE_WAIT, MemorySlurm
from ajr_agent.adapters.store import Store
from ajr_agent.domain.model import Awaiting, Phase, StopCause
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool
from tests.unit.support import LOG_NAME, append, called, running

NODES = ["n1", "n2", "n3", "n4", "n5"]
NODE_FAILURE = "srun: error: Node failure on n3\n"
CANCELLED = ("0: slurmstepd-n1: error: *** STEP 7.0 ON n1 CANCELLED AT 2026-12-03T07:12:08 DUE TO NODE FAILURE, "
             "SEE SLURMCTLD LOG FOR DETAILS ***\n")  # fmt: skip


def four_nodes(agent: Agent, queue: MemorySlurm, tmp_path: Path, **changes: object) -> Path:
    """Job 7 on n[1-4] of NODES, one task each, its log followed; the log's path."""
    queue.partitions["defq"] = NODES
    queue.jobs[7] = running(tmp_path, nodes="n[1-4]", tasks=4, partition="defq", **changes)
    log = tmp_path / LOG_NAME
    log.write_text("0: step 1\n")
    agent.poll(200.0)
    agent.read_logs(200.5)
    return log


def recovered_away_from_n3(agent: Agent, queue: MemorySlurm) -> None:
    job = agent.jobs[7]
    assert (job.phase, job.requeues_used, job.verdict, job.excluded_nodes) == (Phase.RESTARTING, 1, "node", "n3")
    assert called(queue).count("release 7") == 1 and "requeue_hold 7" not in called(queue)[1:]
    assert called(queue)[-3:] == ["exclude_nodes 7 nodes=n3", "release 7", "update 7 StartTime=now+2"]
    # The wait Slurm set at its requeue is cleared: the next attempt may start in two seconds.
    assert queue.jobs[7].start_time is not None and queue.jobs[7].start_time < queue.clock() + REQUEUE_WAIT / 2
    assert queue.excluded[7] == ["n3"]
    [verdict] = [v for _, attempt, _, v in agent.store.verdicts([7]) if attempt == 0]
    assert (verdict.fault, verdict.nodes, verdict.basis) == ("node", ("n3",), "slurm")
    assert any("Not responding" in line for line in verdict.evidence)
    # The node ledger has the blame too, on Slurm's word, whichever of the poll and the log told first.
    assert [(b.node, b.job_id, b.attempt, b.basis) for b in agent.store.nodes.blames(["n3"])] == [("n3", 7, 0, "slurm")]


def test_slurms_own_requeue_seen_by_the_poll_is_one_failure_of_the_node_it_lost(agent: Agent, queue: MemorySlurm,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    log = four_nodes(agent, queue, tmp_path)
    queue.lose("n3")
    agent.poll(230.0)
    recovered_away_from_n3(agent, queue)
    # srun's and slurmstepd's lines come after: the same failure, already handled.
    append(log, NODE_FAILURE + CANCELLED)
    agent.read_logs(231.0)
    agent.poll(232.0)
    assert agent.jobs[7].requeues_used == 1 and called(queue).count("release 7") == 1
    queue.schedule(at=queue.clock() + 3)
    queue.start(7, "n[1-2],n4-5", at=queue.clock() + 3)
    agent.poll(240.0)
    assert (agent.jobs[7].attempt, agent.jobs[7].phase) == (1, Phase.WATCHING)


def test_slurms_own_requeue_seen_first_in_the_log_is_one_failure_too(agent: Agent, queue: MemorySlurm,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    log = four_nodes(agent, queue, tmp_path)
    queue.lose("n3")
    append(log, NODE_FAILURE + CANCELLED)
    agent.read_logs(230.0)  # the requeuehold is refused: "Job is pending execution"
    assert called(queue)[0] == "requeue_hold 7"
    assert called(queue)[1].startswith("update 7 AdminComment=ajr: requeued by Slurm after slurm_node_failure")
    assert agent.jobs[7].phase is Phase.HELD
    shown = [note.text for note in agent.store.events(7)]
    assert any(text.startswith("Slurm had requeued the job itself") for text in shown)
    agent.poll(231.0)
    recovered_away_from_n3(agent, queue)


# What the job's shell prints when a task of its step is SIGKILLed: on a node that is being lost,
# this can come before Slurm has noticed anything (its slurmd still counts as answering).
TASK_KILLED = "0: /var/spool/slurmd/job00007/slurm_script: line 5: 13004 Killed                  sleep 300\n"


def test_a_node_lost_after_ajrs_own_requeue_is_blamed_at_the_release(agent: Agent, queue: MemorySlurm,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    log = four_nodes(agent, queue, tmp_path)
    queue.slow_to_stop.add(7)  # n3 does not answer: the requeued job completes only once Slurm gives n3 up
    append(log, TASK_KILLED)
    agent.read_logs(230.0)
    assert called(queue)[0] == "requeue_hold 7" and agent.jobs[7].verdict == "unknown"
    queue.lose("n3")
    queue.finish_requeue(7)
    agent.poll(260.0)
    # Slurm's states of the attempt's nodes are read again before the release: n3 was lost meanwhile.
    recovered_away_from_n3(agent, queue)
    assert sum(note.kind == "failure" for note in agent.store.events(7)) == 1


def test_an_application_failure_is_released_with_its_verdict_when_no_node_was_lost(agent: Agent, queue: MemorySlurm,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    log = four_nodes(agent, queue, tmp_path)
    queue.slow_to_stop.add(7)
    append(log, "Rank0: (1) segmentation fault: artificial segfault\n")
    agent.read_logs(230.0)
    queue.finish_requeue(7)
    agent.poll(260.0)
    job = agent.jobs[7]
    assert (job.phase, job.verdict, job.excluded_nodes) == (Phase.RESTARTING, "application", "")
    assert called(queue)[-2:] == ["release 7", "update 7 StartTime=now+2"]
    [(_, _, _, verdict)] = agent.store.verdicts([7])
    assert verdict.fault == "application" and any("segmentation fault" in line for line in verdict.evidence)


def test_a_job_slurm_may_not_requeue_whose_node_is_lost_after_the_refusal_gets_the_node_verdict(
    agent: Agent, queue: MemorySlurm, tmp_path: Path
) -> None:
    log = four_nodes(agent, queue, tmp_path, requeueable=False)
    append(log, TASK_KILLED)
    agent.read_logs(230.0)
    assert (agent.jobs[7].stop_cause, agent.jobs[7].verdict) == (StopCause.SLURM_REFUSED, "unknown")
    queue.lose("n3")  # the job ends NODE_FAIL
    agent.poll(260.0)
    job = agent.jobs[7]
    assert (job.phase, job.stop_cause, job.requeues_used, job.verdict) == (Phase.STOPPED, StopCause.SLURM_REFUSED, 0,
                                                                           "node")  # fmt: skip
    [(_, _, _, verdict)] = agent.store.verdicts([7])
    assert (verdict.nodes, verdict.basis) == (("n3",), "slurm")
    assert [(b.node, b.basis) for b in agent.store.nodes.blames(["n3"])] == [("n3", "slurm")]


def test_a_requeue_with_no_node_lost_is_no_failure_and_left_to_slurm(agent: Agent, queue: MemorySlurm,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    four_nodes(agent, queue, tmp_path)
    queue.requeue(7)  # an operator's or the user's `scontrol requeue`
    queue.calls.clear()
    agent.poll(230.0)
    job = agent.jobs[7]
    assert (job.phase, job.requeues_used, job.awaiting) == (Phase.WATCHING, 0, None)
    assert called(queue) == []
    assert any("lost none of its nodes" in note.text for note in agent.store.events(7))
    agent.poll(231.0)
    assert called(queue) == [] and agent.jobs[7].phase is Phase.WATCHING


def test_a_job_slurm_may_not_requeue_ends_node_fail_and_the_lost_node_is_blamed(agent: Agent, queue: MemorySlurm,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    four_nodes(agent, queue, tmp_path, requeueable=False)
    queue.lose("n3")
    agent.poll(230.0)
    job = agent.jobs[7]
    assert (job.phase, job.stop_cause, job.requeues_used, job.verdict) == (Phase.STOPPED, StopCause.SLURM_REFUSED, 0,
                                                                           "node")  # fmt: skip
    [(_, _, _, verdict)] = agent.store.verdicts([7])
    assert verdict.nodes == ("n3",) and verdict.basis == "slurm"


def test_slurms_requeue_past_the_limit_is_counted_and_left_to_slurm(agent: Agent, queue: MemorySlurm,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    four_nodes(agent, queue, tmp_path, comment='{"APS": {"max_requeue_times": 0}}')
    queue.lose("n3")
    agent.poll(230.0)
    job = agent.jobs[7]
    assert (job.phase, job.stop_cause) == (Phase.STOPPED, StopCause.LIMIT)
    assert called(queue) == []


class _Never(InlinePool):
    """A pool whose work never comes back: the verdict is still out when the agent stops."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        return Future()


def asking_about_n3(tmp_path: Path, queue: MemorySlurm) -> Agent:
    """An agent whose verdicts never come, over job 7 on n[1-4] that Slurm requeued when it lost n3."""
    queue.partitions["defq"] = NODES
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), clear_begin_time=True)
    store = Store(settings.state_db)
    store.set_meta(watching_since=1.0)
    stalled = Agent(settings, store, queue, load_rules(settings), pool=_Never())
    queue.jobs[7] = running(tmp_path, nodes="n[1-4]", tasks=4, partition="defq")
    stalled.poll(200.0)
    queue.lose("n3")
    stalled.poll(230.0)
    assert stalled.jobs[7].awaiting is Awaiting.LOST_NODE
    return stalled


def test_an_agent_restarted_while_it_asked_slurm_about_the_nodes_asks_again(tmp_path: Path,
                                                                            queue: MemorySlurm) -> None:  # fmt: skip
    stalled = asking_about_n3(tmp_path, queue)
    stalled.store.close()
    settings = stalled.settings
    again = Agent(settings, Store(settings.state_db), queue, load_rules(settings), pool=InlinePool())
    again.poll(240.0)
    recovered_away_from_n3(again, queue)


def test_a_job_slurm_starts_again_before_the_verdict_comes_is_watched_afresh(tmp_path: Path,
                                                                            queue: MemorySlurm) -> None:  # fmt: skip
    stalled = asking_about_n3(tmp_path, queue)
    queue.update(7, StartTime="now")
    queue.schedule()
    queue.start(7, "n[1-2],n4-5")
    stalled.poll(240.0)
    job = stalled.jobs[7]
    assert (job.attempt, job.phase, job.awaiting) == (1, Phase.WATCHING, None)
    (tmp_path / LOG_NAME).write_text("Rank0: (1) segmentation fault: artificial segfault\n")
    stalled.poll(241.0)
    stalled.read_logs(242.0)
    assert stalled.jobs[7].phase is Phase.HOLDING  # its own failure: AJR's requeuehold, as for any attempt
