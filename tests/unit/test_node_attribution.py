"""The right node of a multi-node job: lines placed on nodes by their prefixes, peers, and Slurm's lost nodes.

The job of these tests ran 8 tasks on n1..n4 (2 per node, Slurm's block layout): task or
rank 5 ran on n3. The lines are as srun, PyTorch, NCCL, UCX and Slurm print them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_agent.detect.attribution import Evidence, verdict
from ajr_agent.detect.origins import Layout, Prefix, named_peers, read_prefix
from ajr_agent.detect.rules import RuleSet, default_rules_dir
from ajr_agent.domain.model import Basis, Fault
from ajr_agent.domain.node_states import NodeState

RULES = RuleSet.load([default_rules_dir()])
NODES = ("n1", "n2", "n3", "n4")
EIGHT = Layout(NODES, tasks=8)

XID = "NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, name=python3, GPU has fallen off the bus."
ECC = ("[PG ID 0 PG GUID 0(default_pg) Rank 5] Process group watchdog thread terminated with exception: "
       "CUDA error: uncorrectable ECC error encountered")  # fmt: skip


def timeout(rank: int) -> str:
    return (f"[rank{rank}]:[E1203 07:12:08.408271257 ProcessGroupNCCL.cpp:607] [Rank {rank}] Watchdog caught "
            "collective operation timeout: WorkNCCL(SeqNum=1580, OpType=ALLREDUCE, NumelIn=466119168, "
            "NumelOut=466119168, Timeout(ms)=600000) ran for 600060 milliseconds before timing out.")  # fmt: skip


CASCADE = [f"{task}: {timeout(task)}" for task in (0, 1, 2, 3, 6, 7)]


def lines(*texts: str, rules: RuleSet = RULES) -> list[Evidence]:
    """The anomaly lines of a job log, as the agent keeps them for the verdict."""
    return [Evidence(m, t, "/runs/train_7.log") for t in texts for m in rules.match(t) if m.rule.kind.value == "anomaly"]


@pytest.mark.parametrize("line", [
    f"5: {XID}",  # srun --label
    f"    5: {XID}",  # srun pads the label to the widest task id
    f"[rank5]: {XID}",  # torch.distributed's own prefix
    f"[5]:{XID}",  # torchrun's log prefix template with ${rank}
    f"[default1]:[rank5]: {XID}",  # torchrun's default (local rank), then the global one
    f"5: [rank5]:[E1203 07:12:08.1 ProcessGroupNCCL.cpp:1515] {ECC}",
    f"n3:1234:1240 [1] NCCL WARN {XID}",  # NCCL: host:pid:tid [device]
    f"host n3: {XID}",
    f"n3: {XID}",  # pdsh, clush
    f"n3.cluster.example.org: {XID}",  # a long name: its first label is the node
    "mlx5: n3: got completion with error:",
])  # fmt: skip
def test_a_node_fault_from_one_rank_blames_its_node_alone_not_the_cascade(line: str) -> None:
    found = verdict(lines(*CASCADE[:3], line, *CASCADE[3:]), [], EIGHT)
    assert (found.fault, found.nodes, found.basis) == (Fault.NODE, ("n3",), Basis.JOB_LOG)
    assert any(line[:40] in evidence for evidence in found.evidence)


def test_the_healthy_ranks_timeouts_alone_blame_no_node() -> None:
    found = verdict(lines(*CASCADE), [], EIGHT)
    assert found.nodes == () and found.fault is not Fault.NODE


@pytest.mark.parametrize(("layout", "line"), [
    (Layout(NODES, tasks=4), f"[rank5]: {XID}"),  # one task per node: torchrun numbers the ranks
    (Layout(NODES, tasks=4), f"[rank3]: {XID}"),  # ... even a rank that is below the task count
    (Layout(NODES, tasks=10), f"5: {XID}"),  # 10 tasks on 4 nodes: Slurm's split is not known
    (Layout(NODES), f"5: {XID}"),  # no task count
    (EIGHT, f"9: {XID}"),  # no such task
    (EIGHT, f"[default5]: {XID}"),  # a local rank
    (EIGHT, XID),  # no prefix
    (EIGHT, f"gpu-7: {XID}"),  # a host that is not the job's
])  # fmt: skip
def test_a_node_fault_no_prefix_places_blames_no_node(layout: Layout, line: str) -> None:
    found = verdict(lines(*CASCADE, line), [], layout)
    assert (found.fault, found.nodes) == (Fault.NODE, ())


def test_a_rank_seen_beside_its_host_is_placed_without_the_task_count() -> None:
    peer_lost = "5: n3:4321:4400 [1] misc/socket.cc:538 NCCL WARN Net : Connection closed by remote peer n2<47861>"
    found = verdict(lines(peer_lost, f"5: {XID}"), [], Layout(NODES))
    assert found.nodes == ("n3",)


def test_two_nodes_printing_node_faults_are_both_blamed() -> None:
    found = verdict(lines(f"5: {XID}", f"0: {XID}"), [], EIGHT)
    assert found.nodes == ("n1", "n3")


def test_the_other_ranks_losing_one_peer_blame_that_peer() -> None:
    texts = [f"n{n}:3468:3905 [0] misc/socket.cc:538 NCCL WARN Net : Connection closed by remote peer "
             f"n3.cluster<4786{n}>" for n in (1, 2, 4)]  # fmt: skip
    texts.append("[rank0]: torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/"
                 "ProcessGroupNCCL.cpp:3763, remote process exited or there was a network error, NCCL version 2.21.5")
    found = verdict(lines(*texts), [], EIGHT)
    assert (found.fault, found.nodes) == (Fault.NODE, ("n3",))
    assert "the peer named is n3" in found.cause


def test_a_peer_named_by_its_address_is_the_node_with_that_address_alone() -> None:
    line = ("n1:19989:20082 [1] transport/net_ib.cc:1295 NCCL WARN NET/IB : Got completion from peer 10.0.0.3<53249> "
            "with error 12, opcode 0, len 0, vendor err 129 (Recv)")  # fmt: skip
    addresses = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3", "n4": "10.0.0.4"}
    assert verdict(lines(line), [], Layout(NODES, 8, addresses)).nodes == ("n3",)
    # Every node of the local test cluster is 127.0.0.1: an address then names no one node.
    same = Layout(NODES, 8, dict.fromkeys(NODES, "10.0.0.3"))
    assert verdict(lines(line), [], same).nodes == ()


def test_peers_that_disagree_single_out_no_one() -> None:
    texts = [f"n1:1:2 [0] misc/socket.cc:538 NCCL WARN Net : Connection closed by remote peer n{n}<47861>"
             for n in (2, 3)]  # fmt: skip
    found = verdict(lines(*texts), [], EIGHT)
    assert found.nodes == ()


def test_c10d_names_the_remote_end_not_the_local_one(tmp_path: Path) -> None:
    (tmp_path / "50-c10d.toml").write_text(
        '[[rule]]\nname = "c10d_socket"\nkind = "anomaly"\npattern = "\\\\[c10d\\\\] sendBytes failed"\n'
        'category = "c10d"\nfault = "unknown"\npriority = 25\n')  # fmt: skip
    rules = RuleSet.load([default_rules_dir(), tmp_path])
    texts = [f"[rank{r}]:[W1203 07:12:08.9 TCPStore.cpp:106] [c10d] sendBytes failed on SocketImpl(fd=64, "
             f"addr=[n{r // 2 + 1}]:35986, remote=[n3]:29500): Broken pipe" for r in (0, 2, 6)]  # fmt: skip
    assert verdict(lines(*texts, rules=rules), [], EIGHT).nodes == ("n3",)


def test_slurms_node_failure_blames_the_lost_node_not_the_one_reporting_it() -> None:
    # The issue's wrong verdict: n1's slurmstepd writes "ON n1" when Slurm lost n3.
    cancelled = ("0: slurmstepd-n1: error: *** STEP 12.0 ON n1 CANCELLED AT 2026-12-03T07:12:08 DUE TO NODE "
                 "FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***")  # fmt: skip
    both = verdict(lines("srun: error: Node failure on n3", cancelled, "srun: error: n4: task 3: Terminated"), [], EIGHT)
    assert (both.fault, both.nodes) == (Fault.NODE, ("n3",))
    alone = verdict(lines(cancelled), [], EIGHT)
    assert (alone.fault, alone.nodes) == (Fault.NODE, ())


def test_a_node_slurm_lost_is_blamed_on_slurms_word() -> None:
    lost = NodeState("n3", "down", responding=False, reason="Not responding", reason_at=1_800_000_000.0)
    healthy = [NodeState(n, "allocated") for n in ("n1", "n2", "n4")]
    found = verdict(lines(*CASCADE), [], EIGHT, slurm=[*healthy, lost])
    assert (found.fault, found.nodes, found.basis) == (Fault.NODE, ("n3",), Basis.SLURM)
    assert found.cause == "node lost (Slurm: Not responding)"
    assert found.evidence[0].startswith("slurm: n3 down, not responding: Not responding (since ")
    # Not responding yet, before Slurm marks it DOWN: lost all the same.
    late = NodeState("n3", "allocated", responding=False)
    assert verdict([], [], EIGHT, slurm=[late]).nodes == ("n3",)
    # Another job's node is none of this job's business; a drained node of the job is not lost.
    assert verdict([], [], EIGHT, slurm=[NodeState("n9", "down", responding=False)]).fault is Fault.UNKNOWN
    assert verdict([], [], EIGHT, slurm=[NodeState("n2", "drained", reason="ajr: job 6")]).fault is Fault.UNKNOWN


def test_prefixes_stack_and_unknown_words_are_no_host() -> None:
    assert read_prefix("  5: [rank13]: n3:1:2 [0] NCCL WARN x") == Prefix(5, 13, "n3")
    assert read_prefix("[n4:1234:0:1234] ib_mlx5_log.c:139  Transport retry count exceeded") == Prefix(host="n4")
    assert read_prefix("[E ProcessGroupNCCL.cpp:737] [Rank 1] Watchdog caught collective operation timeout") == \
        Prefix(rank=1)  # fmt: skip
    assert EIGHT.origin("RuntimeError: CUDA error: uncorrectable ECC error encountered") is None


def test_named_peers() -> None:
    assert named_peers("srun: error: Node failure on n3") == ["n3"]
    assert named_peers("sendBytes failed on SocketImpl(fd=77, addr=[::ffff:127.0.0.1]:39732, "
                       "remote=[::ffff:10.0.0.3]:29600): Broken pipe") == ["::ffff:10.0.0.3"]  # fmt: skip
    assert named_peers("The client socket has failed to connect to [n3]:29500 (errno: 111 - Connection refused).") \
        == ["n3"]  # fmt: skip
    assert named_peers("NCCL WARN Net : Call to recv from 10.200.84.247<58355> failed : Broken pipe") == \
        ["10.200.84.247"]  # fmt: skip
    assert Layout(NODES, 8, {"n3": "10.0.0.3"}).node("::ffff:10.0.0.3") == "n3"
