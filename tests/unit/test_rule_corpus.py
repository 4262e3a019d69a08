"""The shipped rules against real log lines, and root-cause picking on real failures.

tests/fixtures/corpus holds lines copied from public sources (GitHub issues, documentation,
logs committed to repositories), each with where it came from and what the shipped rules
must make of it. Every line of the tuning part is asserted; of the held-out part, whose
sources the rules were never adjusted to, the bars (see tests/fixtures/corpus/README.md and
rules/README.md for the figures).
"""

from __future__ import annotations

import pytest

from ajr_agent.detect.rules import Rule, RuleKind, RuleMatch, RuleSet, default_rules_dir, root_cause
from tests.unit.corpus import Entry, Figures, Kind, figures, load, see, source_keys

TUNING = load("tuning")
HELDOUT = load("heldout")


@pytest.fixture(scope="module")
def defaults() -> RuleSet:
    return RuleSet.load([default_rules_dir()])


# --- The corpus itself --------------------------------------------------------------------------


def test_corpus_is_large_sourced_and_split_by_source() -> None:
    everything = TUNING + HELDOUT
    assert len(everything) >= 600
    assert all(entry.source.strip() for entry in everything)
    assert len({entry.text for entry in everything}) == len(everything), "a line is listed twice"
    benign = [e for e in everything if e.kind is Kind.BENIGN]
    assert len(benign) >= len(everything) / 4
    assert not source_keys(TUNING) & source_keys(HELDOUT), "a source has lines on both sides"
    assert len(source_keys(everything)) >= 150
    for kind in Kind:
        assert sum(e.kind is kind for e in HELDOUT) >= 10, f"too few held-out lines of kind {kind}"


def test_labels_are_consistent() -> None:
    for entry in TUNING + HELDOUT:
        assert (entry.stage is not None) == (entry.kind is Kind.CHECKPOINT), entry
        assert entry.stage in {None, "started", "completed"}, entry
        assert (entry.better is not None) == (entry.throughput is not None), entry
        assert entry.better in {None, "higher", "lower"}, entry
        assert entry.miss is None or (entry.kind is Kind.FAILURE and entry.part == "tuning"), entry


# --- Every tuning line ---------------------------------------------------------------------------


@pytest.mark.parametrize("entry", TUNING, ids=str)
def test_tuning_line(defaults: RuleSet, entry: Entry) -> None:
    seen = see(defaults, entry.text)
    readings = [(m.value, m.rule.better.value if m.rule.better else None) for m in seen.readings]
    expected = [] if entry.throughput is None else [(pytest.approx(entry.throughput), entry.better)]
    assert readings[:1] == expected
    assert [value for value, _ in readings[1:]] == [pytest.approx(value) for value in entry.also_reads]

    if entry.kind in (Kind.BENIGN, Kind.THROUGHPUT) or entry.miss:
        # A failure the rules leave alone on purpose (its text is printed by healthy runs too)
        # is held to what a benign line is.
        assert [m.rule.name for m in seen.anomalies + seen.checkpoints] == []
    elif entry.kind is Kind.CHECKPOINT:
        assert seen.anomalies == ()
        assert seen.checkpoints, "no checkpoint rule matched"
        assert {m.rule.stage.value for m in seen.checkpoints if m.rule.stage} == {entry.stage}
        if entry.rule:
            assert entry.rule in {m.rule.name for m in seen.checkpoints}
    else:
        assert seen.checkpoints == ()
        cause = seen.cause
        assert cause is not None, "no anomaly rule matched"
        assert cause.rule.category == entry.expect
        if entry.rule:
            assert cause.rule.name == entry.rule
        if entry.fault:
            assert cause.rule.fault.value == entry.fault
        # Every other match must be one the entry declares, never a stray category.
        assert {m.rule.category for m in seen.anomalies} <= {entry.expect, *entry.also}


# --- The held-out part: the bars -----------------------------------------------------------------

# What the shipped rules recognised of the held-out part when it was first run against them
# (rules/README.md has the figures and the lines missed). The rules are not adjusted to
# held-out lines: a change that recognises fewer of them is a regression, one that
# recognises more was made for other reasons and raises these.
HELDOUT_RECORDED = {Kind.FAILURE: 53, Kind.CHECKPOINT: 14, Kind.THROUGHPUT: 27, Kind.BENIGN: 86}
BARS = {Kind.FAILURE: 0.95, Kind.CHECKPOINT: 0.90, Kind.THROUGHPUT: 0.90, Kind.BENIGN: 1.0}


@pytest.fixture(scope="module")
def held(defaults: RuleSet) -> Figures:
    return figures(defaults, HELDOUT)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            Kind.FAILURE,
            marks=pytest.mark.xfail(
                strict=True,
                reason="53 of 57 held-out failures (93.0 %) on the first run, below the 95 % bar: three final "
                "exception lines and a TCPStore recvValue warning, which the rules leave alone on purpose "
                "(rules/README.md); the rules are not adjusted to the held-out part",
            ),
        ),
        Kind.CHECKPOINT,
        Kind.THROUGHPUT,
        Kind.BENIGN,
    ],
)
def test_heldout_bar(held: Figures, kind: Kind) -> None:
    assert held.share(kind) >= BARS[kind], [str(e) for e in held.misses if e.kind is kind]


def test_heldout_figures_do_not_fall_below_the_recorded_ones(held: Figures) -> None:
    for kind, recorded in HELDOUT_RECORDED.items():
        assert held.recognised[kind] >= recorded, [str(e) for e in held.misses if e.kind is kind]
    assert held.recognised[Kind.BENIGN] == held.total[Kind.BENIGN], "a benign held-out line was flagged"


# --- The rules themselves ------------------------------------------------------------------------

# Rules written from the code that prints the message, for which no public log line was
# found: each stays in the library for the framework that prints it.
FROM_SOURCE_ONLY = {
    "save_checkpoint_megatron", "saved_checkpoint_to",  # generic markers for sites' own scripts
    "nemo_async_checkpoint_scheduled", "accelerate_state_started", "accelerate_state_saved",
    "mmengine_best_checkpoint_saved", "fairseq_checkpoint_started", "tf_checkpoint_saved",
    "orbax_checkpoint_saved", "maxtext_checkpoint_saved", "torchtune_checkpoint_started",
    "torchtune_checkpoint_saved", "opennmt_checkpoint_started", "lightning_latest_checkpoint",
    "nccl_invalid_usage", "c10d_store_bind_failed", "slurm_task_failure_cancel", "slurm_kill_task_failed",
    "python_fatal_error", "keras_ms_per_step", "hf_train_samples_per_second", "ms_per_batch",
}  # fmt: skip


def test_every_rule_matches_a_real_line_or_says_why_not(defaults: RuleSet) -> None:
    matched = {m.rule.name for entry in TUNING + HELDOUT for m in defaults.match(entry.text)}
    names = {r.name for r in defaults.rules}
    assert names - matched <= FROM_SOURCE_ONLY
    assert FROM_SOURCE_ONLY <= names


def test_shipped_rule_names_are_unique_across_files() -> None:
    from ajr_agent.detect.rules.loader import _read_rule_file  # the merged list hides duplicates

    names = [entry.name for path in sorted(default_rules_dir().glob("*.toml")) for entry in _read_rule_file(path)]
    assert len(names) == len(set(names))


def test_every_anomaly_rule_says_where_its_message_comes_from(defaults: RuleSet) -> None:
    for rule in defaults.rules:
        assert len(rule.description) >= 40, rule.name
        if rule.kind is RuleKind.ANOMALY and rule.fault.value == "unknown":
            assert "unknown" in rule.description.lower() or rule.cascade, f"{rule.name}: say why the fault is open"


def test_match_lines_agrees_with_match_on_the_corpus(defaults: RuleSet) -> None:
    lines = [entry.text for entry in TUNING + HELDOUT]
    expected = [(i, m) for i, line in enumerate(lines) for m in defaults.match(line)]
    assert defaults.match_lines(lines) == expected


# --- Root cause across the lines of one failure ---------------------------------------------------

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
    line = next(e.text for e in TUNING if "uncorrectable ECC error" in e.text and "watchdog" in e.text)
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


def test_the_oom_killer_explains_the_shells_killed_report(defaults: RuleSet) -> None:
    lines = [
        "/var/spool/slurmd/job00191/slurm_script: line 28:  8156 Killed                  python3 main.py --prop hform",
        "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=191.batch cgroup. Some of your processes may "
        "have been killed by the cgroup out-of-memory handler.",
    ]
    cause = root_cause(attempt_matches(defaults, lines))
    assert cause is not None
    assert (cause.rule.category, cause.rule.fault.value) == ("host_oom", "application")


# --- root_cause on its own ------------------------------------------------------------------------


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
