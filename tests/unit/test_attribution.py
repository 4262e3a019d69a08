"""Attribution over plain data and real files: root cause, node evidence, exclusion, drains, hangs, stragglers."""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from ajr_agent.adapters.node_logs import read_node_logs
from ajr_agent.detect import signals
from ajr_agent.detect.attribution import Evidence, excludable, node_evidence, node_line_time, verdict
from ajr_agent.detect.origins import Layout
from ajr_agent.detect.rules import RuleSet, default_rules_dir
from ajr_agent.domain import drains
from ajr_agent.domain.model import Basis, ManagedJob, Phase, Verdict
from ajr_agent.domain.settings import Settings
from ajr_agent.domain.spec import ResumeMode

RULES = RuleSet.load([default_rules_dir()])


def evidence(line: str, source: str = "/runs/train_7_date_x.log", node: str = "") -> list[Evidence]:
    return [Evidence(m, line, source, node) for m in RULES.match(line) if m.rule.kind.value == "anomaly"]


ECC = "[rank3]: NCCL watchdog thread terminated with exception: CUDA error: uncorrectable ECC error encountered"
TIMEOUT = ("[rank0]:[E ProcessGroupNCCL.cpp:563] [Rank 0] Watchdog caught collective operation timeout: "
           "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600004 "
           "milliseconds before timing out.")  # fmt: skip
SEGV = "Rank0: (1) segmentation fault: artificial segfault"


def test_root_cause_wins_over_the_cascade() -> None:
    found = verdict(evidence(TIMEOUT) + evidence(ECC), [], Layout(("gpu-1", "gpu-2")))
    assert found.fault == "node" and found.cause.startswith("gpu_hardware")
    assert any("uncorrectable ECC" in line for line in found.evidence)


def test_application_fault() -> None:
    found = verdict(evidence(SEGV), [], Layout(("gpu-1",)))
    assert (found.fault, found.nodes) == ("application", ())
    assert found.cause == "segfault (segfault)"


def test_node_fault_of_a_one_node_job_is_that_node() -> None:
    assert verdict(evidence(ECC), [], Layout(("gpu-1",))).nodes == ("gpu-1",)


def test_node_fault_names_the_node_in_the_line_and_not_its_prefix_twin() -> None:
    line = "gpu-1: " + ECC
    assert verdict(evidence(line), [], Layout(("gpu-1", "gpu-10"))).nodes == ("gpu-1",)
    assert verdict(evidence(ECC), [], Layout(("gpu-1", "gpu-10"))).nodes == ()


def test_node_logs_blaming_a_node_win() -> None:
    xid = "2026-11-27T01:00:00+00:00 gpu-2 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."
    found = verdict(evidence(TIMEOUT), evidence(xid, "node gpu-2: kern.log", "gpu-2"), Layout(("gpu-1", "gpu-2")))
    assert found.fault == "node" and found.nodes == ("gpu-2",)
    assert found.evidence[0].startswith("node gpu-2: kern.log: ")
    # The node's own log, not the user's: AJR may drain on it.
    assert found.basis is Basis.NODE_LOG
    assert verdict(evidence("gpu-1: " + ECC), [], Layout(("gpu-1",))).basis is Basis.JOB_LOG


def test_nothing_to_go_on() -> None:
    assert verdict([], [], Layout(("gpu-1",))).fault == "unknown"
    assert verdict([], [], Layout(("gpu-1",)), ended_state="NODE_FAIL") == Verdict("node", ("gpu-1",),
                                                                                   "Slurm: NODE_FAIL", (),
                                                                                   Basis.SLURM)  # fmt: skip


def test_excludable_spares_the_last_nodes_of_a_partition() -> None:
    assert excludable(["gpu-2"], [], ["gpu-1", "gpu-2"]) == (("gpu-2",), "")
    assert excludable(["gpu-2"], ["gpu-1"], ["gpu-1", "gpu-2"])[0] == ()
    assert excludable(["gpu-2"], ["gpu-2"], ["gpu-1", "gpu-2", "gpu-3"]) == ((), "")


def test_node_line_times() -> None:
    around = datetime(2026, 11, 27, 1, 0, 0).timestamp()
    assert node_line_time("Nov 27 00:59:30 gpu-1 kernel: x", around) == around - 30
    assert node_line_time("2026-11-27 00:59:30 x", around) == around - 30
    assert node_line_time("[12345.678] NVRM: Xid", around) is None
    january = datetime(2027, 1, 1, 0, 5).timestamp()
    assert node_line_time("Dec 31 23:59:00 gpu-1 kernel: x", january) == datetime(2026, 12, 31, 23, 59).timestamp()


def test_read_node_logs_keeps_lines_in_the_window(tmp_path: Path) -> None:
    around = time.time()
    stamp = datetime.fromtimestamp(around).strftime("%Y-%m-%dT%H:%M:%S")
    old = datetime.fromtimestamp(around - 7200).strftime("%Y-%m-%dT%H:%M:%S")
    node_dir = tmp_path / "gpu-2"
    node_dir.mkdir()
    kern_lines = [
        f"{old} gpu-2 kernel: NVRM: Xid (PCI:0000:3b:00): 48, pid=1, DBE (0x1,0x2)",
        f"{stamp} gpu-2 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
        "[12.5] NVRM: Xid 79 from dmesg without a date",
    ]
    (node_dir / "kern.log").write_text("\n".join(kern_lines) + "\n")
    os.symlink("/etc/passwd", node_dir / "link")
    os.mkfifo(node_dir / "fifo")  # never opened: it would block a reader with no writer
    lines, cut = read_node_logs(str(tmp_path / "{node}"), ["gpu-1", "gpu-2"], time.monotonic() + 5)
    assert not cut and {(line.node, line.file) for line in lines} == {("gpu-2", "kern.log")}
    found = node_evidence(lines, RULES, around, 300)
    assert found and {(e.line, e.node) for e in found} == {(kern_lines[1], "gpu-2")}
    _, cut = read_node_logs(str(tmp_path / "{node}"), ["gpu-2"], time.monotonic() - 1)
    assert cut


SETTINGS = Settings(annotate_jobs=False)
JOB = ManagedJob(job_id=7, name="train", user="alice", user_id=1000, mode=ResumeMode.REQUEUE, requested_limit=None,
                 limit=5, attempt=0, attempt_started=1000.0)  # fmt: skip


def test_hang_after_heartbeat_timeout_only() -> None:
    settings = Settings(heartbeat_timeout=120, hang_startup_grace=300)
    assert signals.hung(JOB, last_output=1300.0, now=1419.0, settings=settings) is None
    event = signals.hung(JOB, last_output=1300.0, now=1421.0, settings=settings)
    assert event is not None and event.category == "hang" and "no log line for 121 s" in event.line


def test_no_hang_within_the_start_up_grace_or_when_not_watching() -> None:
    settings = Settings(heartbeat_timeout=10, hang_startup_grace=300)
    assert signals.hung(JOB, last_output=1000.0, now=1200.0, settings=settings) is None
    assert signals.hung(replace(JOB, phase=Phase.HELD), 1000.0, 2000.0, settings) is None
    assert signals.hung(replace(JOB, attempt_ended=1500.0), 1000.0, 2000.0, settings) is None


def test_job_heartbeat_overrides_the_site() -> None:
    settings = Settings(heartbeat_timeout=1000, hang_startup_grace=0)
    assert signals.hung(replace(JOB, heartbeat_timeout=30), 1000.0, 1031.0, settings) is not None


def test_straggler_needs_a_sustained_drop_below_the_baseline() -> None:
    settings = Settings(straggler_fraction=0.7, straggler_reports=3)
    steady = [400.0, 402.0, 398.0, 401.0]
    assert signals.straggling(steady + [250.0, 260.0], settings) is None  # only two low reports
    found = signals.straggling(steady + [250.0, 260.0, 270.0], settings)
    assert found == (400.5, (250.0, 260.0, 270.0))
    assert signals.straggling(steady + [250.0, 390.0, 270.0], settings) is None  # not sustained
    assert signals.straggling([400.0, 250.0, 250.0, 250.0], settings) is None  # too little history


def test_straggler_shortcut_agrees_with_the_median_rule() -> None:
    # straggling() skips sorting when a bound on the median already rules a drop out;
    # the answers must be those of the rule as documented, on series of every length.
    rng = random.Random(5)
    settings = Settings(straggler_fraction=0.7, straggler_reports=3)
    for _ in range(3000):
        values = [rng.choice((100.0, 60.0, 65.0, 400.0, 250.0, 0.0)) * rng.uniform(0.9, 1.1)
                  for _ in range(rng.randrange(6, 14))]  # fmt: skip
        baseline, recent = statistics.median(values[:-3]), tuple(values[-3:])
        drop = baseline > 0 and all(v < 0.7 * baseline for v in recent)
        assert signals.straggling(values, settings) == ((baseline, recent) if drop else None), values


@pytest.mark.parametrize(
    ("drains_so_far", "out", "expected"),
    [(0, set(), ["gpu-2"]), (2, set(), []), (0, {"gpu-1", "gpu-3"}, [])],
)
def test_plan_drains(drains_so_far: int, out: set[str], expected: list[str]) -> None:
    settings = Settings(drain_faulty_nodes=True, max_drains_per_hour=2, drain_keep_nodes=1)
    partitions = {"gpu": ["gpu-1", "gpu-2", "gpu-3"]}
    drain, spared = drains.plan_drains(["gpu-2"], drains_so_far, partitions, out, settings)
    assert drain == expected and (bool(spared) == (not expected))
