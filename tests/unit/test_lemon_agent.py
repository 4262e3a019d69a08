"""Lemon nodes through the agent over the in-memory Slurm: blamed by failures of several jobs, kept out of
other users' jobs, drained or rebooted on trusted evidence only, trusted again, forgiven."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.domain.model import Phase
from ajr_agent.domain.settings import LemonAction
from ajr_agent.runtime.agent import Agent
from tests.unit.support import called, running

T0 = 1_800_000_000.0
NODES = ["n1", "n2", "n3", "n4"]
# The shipped rules put both on a node; the job's line names it (as a rank's host prefix does).
XID = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."
ECC = "[rank3]: NCCL watchdog thread terminated with exception: CUDA error: uncorrectable ECC error encountered"


def configure(agent: Agent, tmp_path: Path, **changes: object) -> None:
    """Node logs under tmp_path/nodes/{node}, a lemon at 3 witnesses, trust after 100 s, node checks each second."""
    for node in NODES:
        (tmp_path / "nodes" / node).mkdir(parents=True, exist_ok=True)
        (tmp_path / "nodes" / node / "kern.log").touch()
    settings = agent.settings.with_overrides(node_log_dir=str(tmp_path / "nodes" / "{node}"), lemon_jobs=3,
                                             lemon_blames=0, trust_after=100.0, node_check_interval=1.0,
                                             annotate_jobs=False, **changes)  # fmt: skip
    agent.apply(settings, agent.rules)


def kernel(tmp_path: Path, node: str, at: float) -> None:
    """The node's own log says its GPU fell off the bus at `at`."""
    stamp = datetime.fromtimestamp(at, timezone.utc).isoformat()
    with (tmp_path / "nodes" / node / "kern.log").open("a") as handle:
        handle.write(f"{stamp} {node} kernel: {XID}\n")


def fail(agent: Agent, queue: MemorySlurm, tmp_path: Path, job_id: int, user: str, at: float, node: str = "n3",
         node_log: bool = True) -> None:  # fmt: skip
    """Job `job_id` of `user` runs on `node` and fails naming it in its log; its node's log shows an Xid
    too when `node_log`. The agent holds it, judges it, releases it."""
    queue.jobs[job_id] = running(tmp_path, job_id=job_id, user=user, nodes=node, partition="gpu", start_time=at - 50)
    log = tmp_path / f"train_{job_id}_date_26-01-01_time_00-00-00.log"
    log.write_text("step 1\n")
    agent.poll(at)
    if node_log:
        kernel(tmp_path, node, at + 1)
    with log.open("a") as handle:
        handle.write(f"{node}: {ECC}\n")
    agent.read_logs(at + 1)
    agent.poll(at + 2)


def pending(queue: MemorySlurm, tmp_path: Path, job_id: int, user: str) -> None:
    queue.jobs[job_id] = running(tmp_path, job_id=job_id, user=user, state="PENDING", nodes="", start_time=None,
                                 partition="gpu")  # fmt: skip


def make_lemon(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    """n3 fails jobs of alice, bob and carol, its own log showing an Xid each time."""
    queue.partitions = {"gpu": list(NODES)}
    for n, user in enumerate(("alice", "bob", "carol")):
        fail(agent, queue, tmp_path, 10 + n, user, T0 + 10 * n)


def test_a_node_that_failed_three_users_jobs_is_kept_out_of_a_fourth_user_s_pending_job(
        agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:  # fmt: skip
    configure(agent, tmp_path)
    pending(queue, tmp_path, 40, "dave")
    queue.excluded[40] = ["n4"]  # dave's own exclusion
    make_lemon(agent, queue, tmp_path)
    assert agent.nodes.records["n3"].lemon_since is not None
    agent.poll(T0 + 40)
    assert queue.excluded[40] == ["n3", "n4"] and agent.jobs[40].excluded_nodes == "n3"
    assert any("n3 is now a lemon" in e.text for e in agent.store.events(12))
    assert any("kept lemon node n3 out" in e.text for e in agent.store.events(40))


def test_a_running_job_keeps_a_lemon_out_at_its_release(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    configure(agent, tmp_path)
    queue.partitions = {"gpu": list(NODES)}
    queue.jobs[50] = running(tmp_path, job_id=50, user="erin", nodes="n1", partition="gpu", start_time=T0)
    make_lemon(agent, queue, tmp_path)
    agent.poll(T0 + 40)
    assert agent.jobs[50].keep_out == "n3" and 50 not in queue.excluded
    log = tmp_path / "train_50_date_26-01-01_time_00-00-00.log"
    log.write_text("Rank0: (1) segmentation fault: artificial segfault\n")
    agent.poll(T0 + 41)
    agent.read_logs(T0 + 42)
    agent.poll(T0 + 43)
    assert queue.excluded[50] == ["n3"] and agent.jobs[50].phase is Phase.RESTARTING


def test_one_user_naming_a_node_in_his_own_logs_gets_it_kept_out_of_his_jobs_only(
        agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:  # fmt: skip
    configure(agent, tmp_path, drain_faulty_nodes=True, lemon_action=LemonAction.DRAIN)
    queue.partitions = {"gpu": list(NODES)}
    pending(queue, tmp_path, 40, "dave")
    for n in range(4):
        fail(agent, queue, tmp_path, 20 + n, "mallory", T0 + 10 * n, node_log=False)
    agent.poll(T0 + 50)
    assert agent.nodes.records["n3"].lemon_since is None
    assert queue.drained == {} and 40 not in queue.excluded
    # His own job is kept off the node his log named.
    assert queue.excluded[20] == ["n3"]
    assert any("rests on the job's own log only" in e.text for e in agent.store.events(20))


def test_a_lemon_on_trusted_evidence_is_drained_with_a_reason(agent: Agent, queue: MemorySlurm,
                                                             tmp_path: Path) -> None:  # fmt: skip
    configure(agent, tmp_path, lemon_action=LemonAction.DRAIN)
    make_lemon(agent, queue, tmp_path)
    assert list(queue.drained) == ["n3"] and queue.drained["n3"].startswith("ajr: lemon: job 12 ")
    assert agent.nodes.records["n3"].acted_at is not None


def test_a_lemon_is_rebooted_where_the_site_asks(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    configure(agent, tmp_path, lemon_action=LemonAction.REBOOT)
    make_lemon(agent, queue, tmp_path)
    reboots = [c for c in called(queue) if c.startswith("reboot")]
    assert len(reboots) == 1 and reboots[0].startswith("reboot n3 reason=ajr: lemon: job 12 ")
    queue.finish_reboot("n3")
    assert "n3" not in queue.nodes_out_of_service()


def test_a_lemon_is_neither_drained_nor_kept_out_where_the_partition_would_run_short(
        agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:  # fmt: skip
    configure(agent, tmp_path, lemon_action=LemonAction.DRAIN, drain_keep_nodes=2)
    queue.down = {"n1", "n2"}  # out of service already: n3 and n4 are what is left
    pending(queue, tmp_path, 40, "dave")
    make_lemon(agent, queue, tmp_path)
    agent.poll(T0 + 40)
    assert queue.drained == {} and 40 not in queue.excluded
    assert any("one of the last nodes in service" in e.text for e in agent.store.events(12))


def test_a_lemon_back_in_service_without_new_blame_is_trusted_again(agent: Agent, queue: MemorySlurm,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    configure(agent, tmp_path)
    pending(queue, tmp_path, 40, "dave")
    queue.excluded[40] = ["n4"]
    make_lemon(agent, queue, tmp_path)
    agent.poll(T0 + 40)
    assert queue.excluded[40] == ["n3", "n4"]
    agent.poll(T0 + 80)  # in service, but not yet for trust_after since its last blame
    assert agent.nodes.records["n3"].lemon_since is not None
    agent.poll(T0 + 200)
    record = agent.nodes.records["n3"]
    assert record.lemon_since is None and record.trusted_by == "ajr"
    agent.poll(T0 + 201)
    # AJR's exclusion is taken back; dave's own stays.
    assert queue.excluded[40] == ["n4"] and agent.jobs[40].excluded_nodes == ""
    assert ("n3", 40) in [(e.node, e.job_id) for e in agent.store.nodes.exclusions() if e.taken_back_at]


def test_a_drained_lemon_waits_for_trust_until_it_is_back_in_service(agent: Agent, queue: MemorySlurm,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    configure(agent, tmp_path, lemon_action=LemonAction.DRAIN)
    make_lemon(agent, queue, tmp_path)
    agent.poll(T0 + 500)
    assert agent.nodes.records["n3"].lemon_since is not None  # drained all along
    del queue.drained["n3"]  # an admin repaired and resumed it
    agent.poll(T0 + 510)
    agent.poll(T0 + 590)
    assert agent.nodes.records["n3"].lemon_since is not None
    agent.poll(T0 + 620)
    assert agent.nodes.records["n3"].lemon_since is None


def test_an_operator_s_forgiveness_is_applied_at_the_next_poll(agent: Agent, queue: MemorySlurm,
                                                              tmp_path: Path) -> None:  # fmt: skip
    configure(agent, tmp_path)
    pending(queue, tmp_path, 40, "dave")
    make_lemon(agent, queue, tmp_path)
    agent.poll(T0 + 40)
    assert queue.excluded[40] == ["n3"]
    agent.store.nodes.forgive("n3", "operator:root", T0 + 41)
    agent.poll(T0 + 42)
    agent.poll(T0 + 43)
    assert agent.nodes.records["n3"].trusted_by == "operator:root" and queue.excluded[40] == []
    assert agent.store.nodes.forgiveness() == []
    # Its old blames no longer count: one more failure does not make it a lemon again.
    fail(agent, queue, tmp_path, 60, "frank", T0 + 50)
    assert agent.nodes.records["n3"].lemon_since is None


def test_budgets_by_cause_through_the_agent(agent: Agent, queue: MemorySlurm, tmp_path: Path) -> None:
    configure(agent, tmp_path)
    queue.partitions = {"gpu": list(NODES)}
    fail(agent, queue, tmp_path, 10, "alice", T0)
    job = agent.jobs[10]
    assert (job.requeues_used, job.app_requeues, job.node_requeues) == (1, 0, 1)
    assert agent.store.meta()["node_requeue_cap"] == 10
    stored = agent.store.job(10)
    assert stored is not None and replace(stored, last_seen=job.last_seen) == job
