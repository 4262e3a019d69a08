"""The shipped rules against real log lines, and root-cause picking on real failures.

tests/fixtures/corpus/*.toml hold lines copied from public sources (GitHub
issues, documentation, the source code that prints them), each with where it
came from and what the shipped rules must make of it: the category of the root
cause, a checkpoint save, or nothing at all.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from ajr_agent.detect.rules import Rule, RuleKind, RuleMatch, RuleSet, default_rules_dir, root_cause

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
ENTRY_KEYS = {"text", "source", "expect", "rule", "also", "note", "throughput"}


@dataclass(frozen=True)
class Entry:
    """One corpus line and what the rules must make of it."""

    group: str
    text: str
    source: str
    expect: str
    rule: str | None
    also: tuple[str, ...]
    throughput: float | None

    def __str__(self) -> str:
        return f"{self.group}: {self.text[:70]}"


def load_corpus() -> list[Entry]:
    entries = []
    for path in sorted(CORPUS.glob("*.toml")):
        for table in tomllib.loads(path.read_text(encoding="utf-8"))["line"]:
            assert set(table) <= ENTRY_KEYS, f"{path.name}: unknown keys {set(table) - ENTRY_KEYS}"
            entries.append(
                Entry(
                    group=path.stem,
                    text=table["text"],
                    source=table["source"],
                    expect=table["expect"],
                    rule=table.get("rule"),
                    also=tuple(table.get("also", ())),
                    throughput=table.get("throughput"),
                )
            )
    return entries


ENTRIES = load_corpus()


@pytest.fixture(scope="module")
def defaults() -> RuleSet:
    return RuleSet.load([default_rules_dir()])


def of_kind(matches: list[RuleMatch], kind: RuleKind) -> list[RuleMatch]:
    return [m for m in matches if m.rule.kind is kind]


def test_corpus_is_large_and_sourced() -> None:
    assert 80 <= len(ENTRIES) <= 200
    assert all(entry.source.strip() for entry in ENTRIES)
    assert len({entry.text for entry in ENTRIES}) == len(ENTRIES), "a line is listed twice"
    groups = {entry.group for entry in ENTRIES}
    assert {"benign", "checkpoint"} <= groups


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_corpus_line(defaults: RuleSet, entry: Entry) -> None:
    matches = defaults.match(entry.text)
    anomalies = of_kind(matches, RuleKind.ANOMALY)
    checkpoints = of_kind(matches, RuleKind.CHECKPOINT)
    readings = [m.value for m in of_kind(matches, RuleKind.THROUGHPUT)]
    assert readings == ([] if entry.throughput is None else [pytest.approx(entry.throughput)])

    if entry.expect == "none":
        assert [m.rule.name for m in anomalies + checkpoints] == []
    elif entry.expect == "checkpoint":
        assert anomalies == []
        assert checkpoints, "no checkpoint rule matched"
        if entry.rule:
            assert entry.rule in {m.rule.name for m in checkpoints}
    else:
        assert checkpoints == []
        cause = root_cause(anomalies)
        assert cause is not None, "no anomaly rule matched"
        assert cause.rule.category == entry.expect
        if entry.rule:
            assert cause.rule.name == entry.rule
        # Every other match must be one the entry declares, never a stray category.
        allowed = {entry.expect, *entry.also}
        assert {m.rule.category for m in anomalies} <= allowed


def test_every_category_and_framework_is_covered() -> None:
    expected = {entry.expect for entry in ENTRIES}
    assert {
        "gpu_hardware", "cuda_error", "gpu_oom", "host_oom", "nccl", "fabric", "filesystem",
        "segfault", "signal", "python_exception", "task_exit", "slurm_time_limit",
        "slurm_node_failure", "nan_loss", "checkpoint", "none",
    } <= expected  # fmt: skip
    checkpoint_rules = {entry.rule for entry in ENTRIES if entry.expect == "checkpoint"}
    assert {
        "megatron_checkpoint_saved", "lightning_checkpoint_saved", "hf_checkpoint_saved",
        "deepspeed_checkpoint_saved", "nemo_async_checkpoint_saved",
    } <= checkpoint_rules  # fmt: skip


# Generic markers kept from the first defaults for sites' own scripts: no public
# framework prints them, so the corpus has no line for them (test_rules.py does).
SITE_MARKERS = {"save_checkpoint_megatron", "saved_checkpoint_to"}


def test_every_default_rule_matches_a_real_line(defaults: RuleSet) -> None:
    matched = {m.rule.name for entry in ENTRIES for m in defaults.match(entry.text)}
    assert {r.name for r in defaults.rules} - matched == SITE_MARKERS


def test_match_lines_agrees_with_match_on_the_corpus(defaults: RuleSet) -> None:
    lines = [entry.text for entry in ENTRIES]
    expected = [(i, m) for i, line in enumerate(lines) for m in defaults.match(line)]
    assert defaults.match_lines(lines) == expected


# --- Root cause across the lines of one failure -----------------------------------

# One rank's GPU failed: its own line names the CUDA error, the healthy ranks time
# out in the collective, their watchdogs take the processes down, torchrun gives
# up and srun reports the task. Real lines from the corpus (from several public
# logs), put in the order such a failure prints them.
ONE_FAILURE = [
    "[rank0]:[E321 02:07:08.408271257 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective "
    "operation timeout: WorkNCCL(SeqNum=1580, OpType=ALLREDUCE, NumelIn=466119168, NumelOut=466119168, "
    "Timeout(ms)=600000) ran for 600060 milliseconds before timing out.",
    "[rank5]:[E207 19:37:09.983555114 ProcessGroupNCCL.cpp:695] [Rank 5] To avoid data inconsistency, "
    "we are taking the entire process down.",
    "RuntimeError: CUDA error: an illegal memory access was encountered",
    "[rank1]:[E626 06:24:44.903881913 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective "
    "operation timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, NumelIn=9801523, NumelOut=9801523, "
    "Timeout(ms)=600000) ran for 600020 milliseconds before timing out.",
    "terminate called after throwing an instance of 'c10::DistBackendError'",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "srun: error: SH-IDC1-10-140-24-95: task 0: Exited with exit code 1",
]


def attempt_matches(rules: RuleSet, lines: list[str]) -> list[RuleMatch]:
    return [match for _, match in rules.match_lines(lines)]


def test_ecc_inside_a_watchdog_line_is_a_gpu_hardware_fault(defaults: RuleSet) -> None:
    line = next(e.text for e in ENTRIES if "uncorrectable ECC error" in e.text and "watchdog" in e.text)
    matches = defaults.match(line)
    assert {m.rule.name for m in matches} >= {"gpu_ecc_error", "cuda_error", "nccl_watchdog_abort"}
    cause = root_cause(matches)
    assert cause is not None
    assert (cause.rule.name, cause.rule.category, cause.rule.fault.value) == (
        "gpu_ecc_error", "gpu_hardware", "node",
    )  # fmt: skip


def test_one_ranks_cuda_error_explains_the_others_timeouts(defaults: RuleSet) -> None:
    cause = root_cause(attempt_matches(defaults, ONE_FAILURE))
    assert cause is not None
    assert cause.rule.name == "cuda_illegal_memory_access"


def test_timeouts_alone_are_the_verdict_when_nothing_else_matched(defaults: RuleSet) -> None:
    timeouts = [ONE_FAILURE[0], ONE_FAILURE[1], ONE_FAILURE[3], ONE_FAILURE[5]]
    cause = root_cause(attempt_matches(defaults, timeouts))
    assert cause is not None
    assert cause.rule.name == "nccl_watchdog_timeout"


def test_a_gpu_that_fell_off_the_bus_beats_what_it_caused(defaults: RuleSet) -> None:
    lines = [
        "[E ProcessGroupNCCL.cpp:915] [Rank 0] NCCL watchdog thread terminated with exception: CUDA error: unknown error",
        "NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus",
        "kernel: NVRM: Xid (PCI:0000:dc:00): 45, pid=1818990, name=python3, Ch 00000001 caused by previous Xid 149",
    ]
    cause = root_cause(attempt_matches(defaults, lines))
    assert cause is not None
    assert (cause.rule.name, cause.rule.fault.value) == ("gpu_xid_hardware", "node")


def test_a_segfault_explains_the_remote_errors_of_the_other_ranks(defaults: RuleSet) -> None:
    lines = [
        "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely.",
        "Fatal Python error: Segmentation fault",
        "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1347, "
        "remote process exited or there was a network error, NCCL version 2.18.5",
    ]
    cause = root_cause(attempt_matches(defaults, lines))
    assert cause is not None
    assert cause.rule.name == "segfault"


# --- root_cause on its own ------------------------------------------------------


def anomaly(name: str, priority: int = 50, cascade: bool = False) -> RuleMatch:
    rule = Rule(name=name, kind="anomaly", category="x", pattern=name, priority=priority, cascade=cascade)
    return RuleMatch(rule)


def test_root_cause_of_nothing_is_none() -> None:
    assert root_cause([]) is None
    assert root_cause([RuleMatch(Rule(name="ckpt", kind="checkpoint", pattern="saved"))]) is None


def test_root_cause_prefers_non_cascade_then_priority_then_the_earliest() -> None:
    low, high, cascade_high = anomaly("low", 10), anomaly("high", 90), anomaly("casc", 1000, cascade=True)
    assert root_cause([cascade_high, low, high]) is high
    assert root_cause([cascade_high, low]) is low
    assert root_cause([cascade_high, anomaly("casc2", 5, cascade=True)]) is cascade_high
    first, second = anomaly("first", 70), anomaly("second", 70)
    assert root_cause([first, second]) is first
    assert root_cause(iter([second, first])) is second
