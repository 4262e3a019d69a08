"""Unit tests of the rule engine (ajr_agent.detect.rules) and the shipped default rules."""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import tomllib
from pathlib import Path
from collections.abc import Sequence

import pytest
import regex

from ajr_agent.detect.rules import engine, grep, patterns, prefilter
from tests.unit.support import SLOW_LINE, with_slow_rule
from ajr_agent.domain.errors import AjrError
from ajr_agent.detect.rules import (
    DEFAULT_PRIORITY,
    Fault,
    Rule,
    RuleFileError,
    RuleKind,
    RuleMatch,
    RuleSet,
    default_rules_dir,
    load_rule_files,
    required_literals,
    root_cause,
)


@pytest.fixture(scope="module")
def defaults() -> RuleSet:
    return RuleSet.load([default_rules_dir()])


@pytest.fixture(scope="module")
def batched(defaults: RuleSet) -> RuleSet:
    """The shipped rules, matching even the smallest batch as a batch."""
    rules = RuleSet.from_rules(defaults.rules)
    rules.batch_min_lines = 0
    return rules


def names(matches: list[RuleMatch]) -> list[str]:
    return [m.rule.name for m in matches]


def write(directory: Path, filename: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text)
    return path


# --- The shipped defaults ----------------------------------------------------


def test_defaults_load_from_default_rules_dir(defaults: RuleSet) -> None:
    assert (default_rules_dir() / "00-defaults.toml").is_file()
    assert [r.name for r in defaults.rules[:3]] == [
        "save_checkpoint_dash",
        "save_checkpoint_megatron",
        "saved_checkpoint_to",
    ]
    # The shipped rules are split by family (00-defaults.toml, 10-gpu.toml, ...), read in name order.
    files = sorted(default_rules_dir().glob("*.toml"))
    assert len(files) > 1 and files[0].name == "00-defaults.toml"
    assert {Path(r.source).name for r in defaults.rules} == {f.name for f in files}
    order = [f.name for f in files]
    assert [order.index(Path(r.source).name) for r in defaults.rules] == sorted(
        order.index(Path(r.source).name) for r in defaults.rules
    )
    kinds = {r.kind for r in defaults.rules}
    assert kinds == {RuleKind.CHECKPOINT, RuleKind.ANOMALY, RuleKind.THROUGHPUT}
    assert all(r.category for r in defaults.rules if r.kind is RuleKind.ANOMALY)


def test_every_default_rule_has_a_literal_anchor(defaults: RuleSet) -> None:
    # An unanchored default rule would run on every line of every log.
    assert [r.name for r in defaults.rules if required_literals(r.pattern) is None] == []


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("[rank0] save-checkpoint iteration=100", "save_checkpoint_dash"),
        ("SAVE-CHECKPOINT done", "save_checkpoint_dash"),
        (
            "SAVE_CHECKPOINT: iteration: 2000, ckpt saving takes 12.5 seconds",
            "save_checkpoint_megatron",
        ),
        ("save_checkpoint: iteration: 7, ckpt saving takes 0.1 seconds", "save_checkpoint_megatron"),
        ("Epoch 3: Saved checkpoint to /lustre/ckpt/epoch3.ckpt", "saved_checkpoint_to"),
        ("  successfully saved checkpoint from iteration    1000 to /ckpt [ t 1/2, p 1/4 ]",
         "megatron_checkpoint_saved"),
        ("  successfully saved checkpoint at iteration    1000 to /ckpt", "megatron_checkpoint_saved"),
        ("Epoch 3, global step 4000: 'val_loss' reached 0.44312 (best 0.44312), saving model to "
         "'/ckpt/epoch=3-step=4000.ckpt' as top 3", "lightning_checkpoint_saved"),
        ("Saving model checkpoint to /out/checkpoint-500", "hf_checkpoint_saved"),
        ("[Torch] Checkpoint global_step500 is ready now!", "deepspeed_checkpoint_saved"),
        ("[Torch] Checkpoint global_step100 is about to be saved!", "deepspeed_checkpoint_started"),
        ("zero checkpoint saved /ckpt/global_step500/zero_pp_rank_0_mp_rank_00_optim_states.pt",
         "deepspeed_checkpoint_saved"),
        ("Async checkpoint save for step 50 (/ckpt/step=49.ckpt) finalized successfully.",
         "nemo_async_checkpoint_saved"),
    ],
)
def test_checkpoint_rules(defaults: RuleSet, line: str, rule: str) -> None:
    matches = defaults.match(line)
    assert names(matches) == [rule]
    assert matches[0].rule.kind is RuleKind.CHECKPOINT
    assert matches[0].value is None


# One positive example per default anomaly rule: (line, rule, category, fault).
ANOMALY_CASES = [
    ("Rank0: (1) segmentation fault: artificial segfault", "segfault", "segfault", "application"),
    ("/var/spool/slurm/job12/slurm_script: line 5: 123 Segmentation fault (core dumped) python train.py",
     "segfault", "segfault", "application"),
    ("srun: error: node3: task 1: Bus error", "bus_error", "signal", "unknown"),
    ("    traceback : Signal 11 (SIGSEGV) received by PID 4242", "fatal_signal", "signal", "unknown"),
    ("    traceback : Signal 6 (SIGABRT) received by PID 4242", "abort_signal", "signal", "unknown"),
    ("RuntimeError: DataLoader worker (pid 11) is killed by signal: Killed.", "dataloader_worker_died", "signal", "unknown"),
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.", "gpu_xid_hardware", "gpu_hardware", "node"),
    ("NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, Graphics Exception", "gpu_xid", "gpu_hardware", "unknown"),
    ("NVRM: Xid (PCI:0000:3b:00): 45, pid=1234, Ch 00000001", "gpu_xid_cleanup", "gpu_hardware", "unknown"),
    ("Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost.",
     "gpu_fallen_off_bus", "gpu_hardware", "node"),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "gpu_ecc_error", "gpu_hardware", "node"),
    ("RuntimeError: No CUDA GPUs are available", "gpu_unavailable", "gpu_hardware", "node"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "gpu_oom", "gpu_oom", "application"),
    ("torch.cuda.OutOfMemoryError: boom", "gpu_oom", "gpu_oom", "application"),
    ("RuntimeError: CUDA error: an illegal memory access was encountered",
     "cuda_illegal_memory_access", "cuda_error", "unknown"),
    ("RuntimeError: unspecified launch failure", "cuda_launch_failure", "cuda_error", "unknown"),
    ("RuntimeError: CUDA error: device-side assert triggered", "cuda_device_assert", "cuda_error", "application"),
    ("RuntimeError: CUDA error: misaligned address", "cuda_error", "cuda_error", "unknown"),
    ("NCCL WARN Call to connect returned Connection refused, ncclSystemError",
     "nccl_system_error", "nccl", "infrastructure"),
    ("failed: ncclRemoteError: A call failed possibly due to a network error or a remote process exiting",
     "nccl_remote_error", "nccl", "infrastructure"),
    ("ncclInternalError: Internal check failed.", "nccl_internal_error", "nccl", "unknown"),
    ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited",
     "nccl_error", "nccl", "unknown"),
    ("[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=42, OpType=ALLREDUCE) ran for 600000 ms",
     "nccl_watchdog_timeout", "nccl", "unknown"),
    ("[Rank 5] To avoid data inconsistency, we are taking the entire process down.", "nccl_watchdog_abort", "nccl", "unknown"),
    ("host:1:2 [1] misc/socket.cc:538 NCCL WARN Net : Connection closed by remote peer host<47861>",
     "nccl_peer_lost", "nccl", "unknown"),
    ("[1] ib_mlx5_log.c:177 Transport retry count exceeded on mlx5_0:1/IB",
     "ib_retry_exceeded", "fabric", "infrastructure"),
    ("NET/IB : Got completion from peer 10.0.0.2 with status=IBV_WC_RETRY_EXC_ERR(12)",
     "ib_retry_exceeded", "fabric", "infrastructure"),
    ("NCCL WARN Call to ibv_create_qp failed with error Cannot allocate memory",
     "ib_verbs_error", "fabric", "infrastructure"),
    ("mlx5: node7: got completion with error:", "mlx5_error", "fabric", "node"),
    ("host:1:2 [4] NCCL WARN NET/IB : Got completion from peer 10.0.0.2<54862> with status=12 opcode=0",
     "ib_completion_error", "fabric", "infrastructure"),
    ("[h:1:0:1] ib_mlx5_log.c:179  Remote operation error on mlx5_0:1/IB (synd 0x14 vend 0x89 hw_synd 0/0)",
     "ucx_ib_completion_error", "fabric", "infrastructure"),
    ("NET/OFI Request 0x7f14 completed with error. RC: 113.", "efa_error", "fabric", "infrastructure"),
    ("kernel: Out of memory: Killed process 4242 (python)", "host_oom", "host_oom", "application"),
    ("slurmstepd: error: Detected 1 oom_kill event in StepId=12.0. Some of your processes may have been killed",
     "host_oom", "host_oom", "application"),
    ("slurmstepd: error: Detected 2 oom-kill event(s) in step 12.batch cgroup.", "host_oom", "host_oom", "application"),
    ("OSError: [Errno 5] Input/output error: '/lustre/ckpt/iter_1000'", "fs_io_error", "filesystem", "infrastructure"),
    ("OSError: [Errno 116] Stale file handle", "fs_io_error", "filesystem", "infrastructure"),
    ("OSError: [Errno 28] No space left on device", "fs_no_space", "filesystem", "infrastructure"),
    ("OSError: [Errno 122] Disk quota exceeded", "fs_quota_exceeded", "filesystem", "application"),
    ("RuntimeError: [enforce fail at inline_container.cc:445] . PytorchStreamWriter failed writing file data/1: file write failed",
     "fs_write_failed", "filesystem", "infrastructure"),
    ("slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***",
     "slurm_time_limit", "slurm_time_limit", "application"),
    ("slurmstepd: error: *** STEP 12.0 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***",
     "slurm_time_limit", "slurm_time_limit", "application"),
    ("slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO NODE FAILURE, "
     "SEE SLURMCTLD LOG FOR DETAILS ***", "slurm_node_failure", "slurm_node_failure", "node"),
    ("srun: error: Node failure on node4", "slurm_node_failure", "slurm_node_failure", "node"),
    (" iteration      100/  1000 | lm loss: nan | loss scale: 1.0 |", "nan_loss", "nan_loss", "application"),
    ("Epoch 1: 10%| loss=NaN", "nan_loss", "nan_loss", "application"),
    ("Rank 3: found NaN in local grad norm in backward pass", "nan_found", "nan_loss", "application"),
    ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
     "torchrun_child_failed", "python_exception", "unknown"),
    ("[rank3]: Traceback (most recent call last):", "python_uncaught_exception", "python_exception", "application"),
    ("E0801 13:23:20.000000 32974 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) "
     "local_rank: 3 (pid: 33054) of binary: /usr/bin/python3", "launcher_worker_failed", "python_exception", "unknown"),
    ("srun: error: node1: tasks 0-3: Exited with exit code 1", "srun_task_failed", "task_exit", "unknown"),
    ("{'loss': nan, 'grad_norm': nan, 'learning_rate': 1e-05, 'epoch': 0.5}", "nan_loss", "nan_loss", "application"),
    ("Loss is inf, stopping training", "nan_loss", "nan_loss", "application"),
    ("ProcessGroupNCCL.cpp:260, unhandled cuda error", "nccl_internal_error", "nccl", "unknown"),
    # Rules written from the code that prints the message, with no public log line in the
    # rule corpus (tests/fixtures/corpus): the formats of those sources.
    ("torch.distributed.DistBackendError: NCCL error in: NCCLUtils.hpp:275, invalid usage (run with "
     "NCCL_DEBUG=WARN for details), NCCL version 2.21.5", "nccl_invalid_usage", "nccl", "application"),
    ("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address. "
     "The server socket has failed to bind to [::]:29500 (errno: 98 - Address already in use).",
     "c10d_store_bind_failed", "c10d", "unknown"),
    ("Fatal Python error: Cannot recover from stack overflow.", "python_fatal_error", "signal", "unknown"),
    ("slurmstepd: error: *** STEP 12.0 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TASK FAILURE ***",
     "slurm_task_failure_cancel", "task_exit", "unknown"),
    ("slurmstepd: error: *** STEP 12.0 ON node1 FAILED (non-zero exit code or other failure mode) ***",
     "slurm_task_failure_cancel", "task_exit", "unknown"),
    ("slurmstepd: error: *** STEP 12.0 STEPD TERMINATED ON node1 AT 2026-01-01T00:05:00 DUE TO JOB NOT ENDING "
     "WITH SIGNALS ***", "slurm_kill_task_failed", "slurm_node_failure", "node"),
    ("slurmstepd: error: *** EXTERN STEP FOR 12 STEPD TERMINATED ON node1 AT 2026-01-01T00:05:00 DUE TO JOB NOT "
     "ENDING WITH SIGNALS ***", "slurm_kill_task_failed", "slurm_node_failure", "node"),
]


@pytest.mark.parametrize(("line", "rule", "category", "fault"), ANOMALY_CASES)
def test_anomaly_rules(defaults: RuleSet, line: str, rule: str, category: str, fault: str) -> None:
    matches = {m.rule.name: m for m in defaults.match(line)}
    assert rule in matches, f"{rule} did not match {line!r}; got {sorted(matches)}"
    matched = matches[rule].rule
    assert matched.kind is RuleKind.ANOMALY
    assert matched.category == category
    assert matched.fault is Fault(fault)


def test_every_default_anomaly_rule_has_a_positive_example(defaults: RuleSet) -> None:
    # Here, or as a real line of the rule corpus (test_rule_corpus.py asserts what it matches).
    from tests.unit.corpus import PARTS, load

    in_corpus = {m.rule.name for part in PARTS for entry in load(part) for m in defaults.match(entry.text)}
    anomaly_rules = {r.name for r in defaults.rules if r.kind is RuleKind.ANOMALY}
    assert anomaly_rules - {case[1] for case in ANOMALY_CASES} - in_corpus == set()


@pytest.mark.parametrize(
    "line",
    [
        "slurmstepd: error: *** STEP 12.0 ON node1 CANCELLED AT 2026-01-01T00:00:00 ***",
        "slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:00:00 ***",
        "slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO JOB REQUEUE ***",
        "node1:123:456 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>",
        "node1:123:456 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via NET/IB/0/GDRDMA",
        "node1:123:456 [0] NCCL INFO Call to ibv_reg_dmabuf_mr failed, falling back to ibv_reg_mr",
        "node1:123:456 [0] NCCL INFO NET/IB : mlx5_2 port 1 error state ignored (not in use)",
        "Traceback (most recent call last):",
        "Loading checkpoint from /lustre/ckpt/iter_0001000",
        "resuming from checkpoint at iteration 1000",
        "/torch/nn/utils/clip_grad.py:12: UserWarning: the default of error_if_nonfinite will change",
        "validation done, errors=0 warnings=2",
        " iteration 10/100 | lm loss: 2.3E+00 | number of nan iterations:   0 |",
        "dataset: loaded 42 documents, loss_mask enabled",
        "srun: error: node1: task 0: Terminated",
        "srun: Force Terminated StepId=12.0",
        "slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO PREEMPTION ***",
        "  successfully loaded checkpoint from /ckpt [ t 1/1, p 1/1 ] at iteration 500",
        "Restoring states from the checkpoint path at /ckpt/epoch=3-step=4000.ckpt",
        "Saving model checkpoint to /out",
        "Epoch 1, global step 49992: 'train_loss' was not in top 1",
        "failed (exitcode: -15) local_rank: 0 (pid: 42) of binary: /usr/bin/python3",
        "exitcode  : 0 (pid: 42)",
        "srun: error: node1: task 0: Exited with exit code 0",
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
        "{'loss': 0.2051, 'grad_norm': nan, 'learning_rate': 9.7e-06, 'epoch': 0.53}",
        "grad norm: inf | loss scale: 65536.0",
        "",
    ],
)
def test_benign_lines_match_no_rule(defaults: RuleSet, line: str) -> None:
    assert defaults.match(line) == []


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (" iteration 10/100 | throughput per GPU (TFLOP/s/GPU): 402.1 | lm loss: 2.1E+00 |", 402.1),
        ("step 5 TFLOPs: 123.4", 123.4),
        ("tflops=98", 98.0),
        ("model TFLOPS_per_GPU=1.5e2", 150.0),
    ],
)
def test_throughput_value(defaults: RuleSet, line: str, value: float) -> None:
    readings = [m for m in defaults.match(line) if m.rule.kind is RuleKind.THROUGHPUT]
    assert [(m.rule.name, m.value) for m in readings] == [("tflops", pytest.approx(value))]


def test_throughput_without_a_number_is_no_reading(defaults: RuleSet) -> None:
    assert defaults.match("TFLOP/s/GPU: n/a") == []


def test_unparseable_throughput_capture_is_no_match() -> None:
    rule = Rule(name="loose", kind="throughput", pattern=r"speed: (?P<value>[0-9.]+)")
    rules = RuleSet.from_rules([rule])
    assert rules.match("speed: .") == []
    assert [m.value for m in rules.match("speed: 1.5")] == [1.5]


def test_matches_come_in_rule_order(defaults: RuleSet) -> None:
    line = "RuntimeError: CUDA error: uncorrectable ECC error encountered"
    assert names(defaults.match(line)) == ["gpu_ecc_error", "cuda_error"]


# --- Loading and drop-in semantics -------------------------------------------


def test_later_directory_overrides_by_name_in_place(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    site = tmp_path / "site"
    write(shipped, "00-defaults.toml", """
[[rule]]
name = "first"
kind = "checkpoint"
pattern = 'first'

[[rule]]
name = "second"
kind = "anomaly"
pattern = 'second'
category = "segfault"
""")
    site_file = write(site, "10-site.toml", """
[[rule]]
name = "first"
kind = "anomaly"
pattern = 'replaced'
category = "nccl"
fault = "node"
""")
    rules = load_rule_files([shipped, site])
    assert [r.name for r in rules] == ["first", "second"]
    assert rules[0].pattern == "replaced"
    assert rules[0].fault is Fault.NODE
    assert rules[0].source == str(site_file)
    matcher = RuleSet.from_rules(rules)
    assert matcher.match("first") == []
    assert names(matcher.match("replaced")) == ["first"]


def test_files_are_read_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "20-b.toml", "[[rule]]\nname = 'x'\nkind = 'checkpoint'\npattern = 'from-20'\n")
    write(tmp_path, "10-a.toml", "[[rule]]\nname = 'x'\nkind = 'checkpoint'\npattern = 'from-10'\n")
    write(tmp_path, ".#30-lock.toml", "not toml at all [")
    write(tmp_path, "README.md", "not a rule file")
    assert [r.pattern for r in load_rule_files([tmp_path])] == ["from-20"]


def test_disable_by_name(tmp_path: Path) -> None:
    site = write(tmp_path / "site", "50-off.toml", """
[[rule]]
name = "bus_error"
enabled = false
""")
    rules = load_rule_files([default_rules_dir(), site.parent])
    assert "bus_error" not in {r.name for r in rules}
    assert "segfault" in {r.name for r in rules}
    assert RuleSet.from_rules(rules).match("srun: error: node3: task 1: Bus error") == []


def test_disabling_an_unknown_rule_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "50-off.toml", "[[rule]]\nname = 'no_such_rule'\nenabled = false\n")
    with caplog.at_level(logging.WARNING, logger="ajr_agent.detect.rules"):
        assert load_rule_files([tmp_path]) == []
    assert "no_such_rule" in caplog.text


def test_full_rule_with_enabled_false_is_validated_and_dropped(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[[rule]]\nname = 'x'\nkind = 'checkpoint'\npattern = 'x'\nenabled = false\n")
    assert load_rule_files([tmp_path]) == []


def test_missing_directory_is_skipped(tmp_path: Path) -> None:
    assert load_rule_files([tmp_path / "nope"]) == []


def test_rule_set_load_uses_match_timeout() -> None:
    rules = RuleSet.load([default_rules_dir()], match_timeout=0.2)
    assert rules.match_timeout == 0.2
    assert len(rules.rules) == len(load_rule_files([default_rules_dir()]))


# --- Errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("name = 'r'\nkind = 'checkpoint'\npattern = 'x'\ncolour = 'red'", "rule 'r': unknown key 'colour'"),
        ("name = 'r'\nkind = 'checkpoint'\npattern = 'x'\nsource = '/tmp/x'", "rule 'r': unknown key 'source'"),
        ("name = 'r'\nkind = 'checkpoint'\npattern = 'x'\nignore_case = 'yes'", "rule 'r': ignore_case: Input should be a valid boolean"),
        ("name = 'r'\nkind = 'checkpoint'\npattern = 12", "rule 'r': pattern: Input should be a valid string"),
        ("name = 'r'\nkind = 'nonsense'\npattern = 'x'", "rule 'r': kind: Input should be 'checkpoint', 'anomaly' or 'throughput'"),
        ("name = 'r'\nkind = 'anomaly'\npattern = 'x'\ncategory = 'nccl'\nfault = 'gpu'", "rule 'r': fault: Input should be"),
        ("name = 'r'\nkind = 'checkpoint'", "rule 'r': missing key 'pattern'"),
        ("name = 'r'\nkind = 'checkpoint'\npattern = ''", "rule 'r': pattern: String should have at least 1 character"),
        ("name = 'r'\nkind = 'checkpoint'\npattern = 'foo(bar'", "rule 'r': pattern does not compile: missing ) at position 7"),
        ("name = 'r'\nkind = 'anomaly'\npattern = 'x'", "rule 'r': an anomaly rule needs a category"),
        ("name = 'r'\nkind = 'anomaly'\npattern = 'x'\ncategory = 'Has Spaces'", "rule 'r': category: category 'Has Spaces' must be"),
        ("name = 'r'\nkind = 'checkpoint'\npattern = 'x'\ncategory = 'nccl'", "rule 'r': category is only for anomaly rules"),
        ("name = 'r'\nkind = 'checkpoint'\npattern = 'x'\nfault = 'node'", "rule 'r': fault is only for anomaly rules"),
        ("name = 'r'\nkind = 'throughput'\npattern = 'TFLOPs: ([0-9.]+)'", "rule 'r': a throughput pattern needs a named group (?P<value>...)"),
        ("kind = 'checkpoint'\npattern = 'x'", "rule #1: missing key 'name'"),
        ("name = 'bad name'\nkind = 'checkpoint'\npattern = 'x'", "rule 'bad name': name: name 'bad name' must be"),
        ("name = 'r'\nenabled = false\nkind = 'anomaly'", "rule 'r': unknown key 'kind' (an entry without a pattern only disables"),
    ],
)
def test_invalid_rule_names_file_and_rule(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "10-site.toml", f"[[rule]]\n{body}\n")
    with pytest.raises(RuleFileError) as caught:
        load_rule_files([tmp_path])
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)
    assert isinstance(caught.value, AjrError)


def test_nameless_rule_is_named_by_index(tmp_path: Path) -> None:
    path = write(tmp_path, "10-site.toml", """
[[rule]]
name = "ok"
kind = "checkpoint"
pattern = 'ok'

[[rule]]
kind = "checkpoint"
pattern = 'foo(bar'
""")
    with pytest.raises(RuleFileError, match=r"rule #2: .*missing key 'name'") as caught:
        load_rule_files([tmp_path])
    assert str(caught.value).startswith(str(path))


def test_duplicate_name_within_one_file(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[[rule]]\nname='x'\nkind='checkpoint'\npattern='a'\n"
                              "[[rule]]\nname='x'\nkind='checkpoint'\npattern='b'\n")
    with pytest.raises(RuleFileError, match=r"a\.toml: rule 'x': defined twice in this file"):
        load_rule_files([tmp_path])


@pytest.mark.parametrize(
    "text",
    [
        "[[rule]]\nname = 'x'\npattern = = 'y'\nkind = 'checkpoint'\n",
        "[[rule]]\nname = 'x'\npattern = 'unterminated\n",
    ],
)
def test_toml_syntax_error_names_file_and_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "10-site.toml", text)
    with pytest.raises(RuleFileError) as caught:
        load_rule_files([tmp_path])
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 3" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules = []\n", "unknown top-level key 'rules'"),
        ("[rule]\nname = 'x'\n", "'rule' must be an array of tables"),
        ("rule = [1]\n", "rule #1: must be a table"),
    ],
)
def test_malformed_file_structure(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "a.toml", text)
    with pytest.raises(RuleFileError, match=expected):
        load_rule_files([tmp_path])


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_bytes(b"[[rule]]\nname = '\xff'\n")
    with pytest.raises(RuleFileError, match=r"a\.toml: not UTF-8"):
        load_rule_files([tmp_path])


def test_unreadable_file_as_broken_symlink(tmp_path: Path) -> None:
    (tmp_path / "a.toml").symlink_to(tmp_path / "missing-target")
    with pytest.raises(RuleFileError, match=r"a\.toml: cannot read rule file"):
        load_rule_files([tmp_path])


def test_rules_dir_that_is_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "not-a-dir", "")
    with pytest.raises(RuleFileError, match="cannot list rule directory"):
        load_rule_files([path])


def test_rule_set_rejects_duplicate_names_and_bad_timeout() -> None:
    rule = Rule(name="x", kind="checkpoint", pattern="x")
    with pytest.raises(ValueError, match="duplicate rule names: x"):
        RuleSet.from_rules([rule, rule])
    with pytest.raises(ValueError, match="match_timeout"):
        RuleSet.from_rules([rule], match_timeout=0)


# --- Timeouts ------------------------------------------------------------------


def test_catastrophic_pattern_times_out_counts_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    evil = Rule(name="evil", kind="anomaly", category="segfault", pattern="(a+)+$", source="/etc/ajr/rules.d/99-evil.toml")
    good = Rule(name="good", kind="anomaly", category="segfault", pattern="a{5}b")
    rules = RuleSet.from_rules([evil, good], match_timeout=0.001)
    line = "a" * 5000 + "!"
    with caplog.at_level(logging.WARNING, logger="ajr_agent.detect.rules"):
        assert rules.match(line) == []
        assert rules.match(line) == []
    assert rules.timeouts["evil"] == 2
    assert rules.timeouts["good"] == 0
    warnings = [r for r in caplog.records if "evil" in r.getMessage()]
    assert len(warnings) == 1, "warns once per rule"
    assert "/etc/ajr/rules.d/99-evil.toml" in warnings[0].getMessage()
    # The other rules still work on the lines they match.
    assert names(rules.match("aaaaab")) == ["good"]


def test_a_line_stops_trying_rules_after_a_few_timeouts() -> None:
    # Five slow site patterns all anchored on what one hostile line holds.
    slow = [Rule(name=f"slow{i}", kind="anomaly", category="segfault", pattern=f"slow{i}.*(a+)+$") for i in range(5)]
    rules = RuleSet.from_rules(slow, match_timeout=0.001)
    line = "".join(f"slow{i}" for i in range(5)) + "a" * 5000 + "!"
    assert rules.match(line) == []
    assert sum(rules.timeouts.values()) == 5, "every rule counts as not matching"
    assert engine.LINE_TIMEOUTS_AT_MOST < 5


def test_a_pass_matches_what_fits_in_its_budget_and_leaves_the_rest(defaults: RuleSet) -> None:
    lines = [SLOW_LINE] * 40 + ["Rank0: (1) segmentation fault"]
    rules = with_slow_rule(defaults)
    found, done = rules.match_within(lines, budget=0.05)
    assert 1 <= done < len(lines), "40 lines of one timeout each cannot fit in 50 ms"
    assert found == rules.match_lines(lines[:done])
    # Read again pass after pass, every line is matched in the end, the failure too.
    while done < len(lines):
        more, step = rules.match_within(lines[done:], budget=0.05)
        found += [(done + index, match) for index, match in more]
        done += step
    assert [(i, m.rule.name) for i, m in found] == [(40, "segfault")]


def test_a_pass_over_ordinary_lines_matches_them_all_as_one_batch_would(defaults: RuleSet) -> None:
    lines = [f"iteration {i} | TFLOPs: {100 + i % 7}.5 | loss 2.1" for i in range(3000)] + ["CUDA error: an illegal memory access was encountered"]
    found, done = defaults.match_within(lines, budget=10.0)
    assert done == len(lines)
    assert found == defaults.match_lines(lines)


# --- The literal prefilter -----------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "anchors"),
    [
        ("segmentation fault", {"segmentation fault"}),
        (r"NVRM: Xid\b|\bXid \d+", {"nvrm: xid", "xid "}),
        (r"ab?c", {"a"}),  # a character before a quantifier is never required
        (r"abc{2}def", {"def"}),
        (r"torch\.(?:cuda\.)?OutOfMemoryError", {"outofmemoryerror"}),
        (r"\*\*\* JOB \S+ ON", {"*** job "}),
        (r"TFLOP[^:]{0,20}:\s*(?P<value>[0-9.]+)", {"tflop"}),
        (r"a|", None),  # the empty alternative matches every line
        (r"(?:foo|bar)", {"foo", "bar"}),  # a group of literal alternatives is an anchor
        (r"(?P<v>foo|ba\|r)baz", {"foo", "ba|r"}),  # as rare as "baz": the first wins
        (r"(?:foo|bar)?x", {"x"}),  # an optional group is not
        (r"(?:foo|bar)+", None),  # nor, to keep the scanner simple, a repeated one
        (r"(?:fo+|bar)", None),  # nor one with more than literals
        (r"^(?!.*\bNCCL INFO\b).*?\bmlx5.{0,80}?\b(?:failed|error)\b", {"failed", "error"}),
        (r"\x41BCD", None),  # escapes with arguments are not followed
        (r"(?x) s e g v", None),  # verbose mode changes what a space means
        (r"(?:segfault){e<=1}", None),  # fuzzy matching
        (r"foo(?#comment(", None),
        (r"[[:alpha:]]+xyz", None),
        (r"caf\u00e9 ok", None),
        ("cafés are ok", {"s are ok"}),
        (r"x\.y\|z", {"x.y|z"}),
        (r"(?f)strasse", None),  # full case folding: "ss" may match "ß"
        (r"(?V1)strasse", None),  # version 1 folds fully under IGNORECASE
        (r"(?i)strasse", {"strasse"}),
        (r"loss\w*=nan\b", {"=nan"}),  # a run rare in ordinary lines beats a common one
        (r"the\s+training\s+loss", {"training"}),  # all common: the longest
    ],
)
def test_required_literals(pattern: str, anchors: set[str] | None) -> None:
    result = required_literals(pattern)
    assert (None if result is None else set(result)) == anchors


TRICKY_RULES = [
    Rule(name="opt", kind="anomaly", category="x", pattern=r"ab?c"),
    Rule(name="alt", kind="anomaly", category="x", pattern=r"(?:foo|bar)baz|qux"),
    Rule(name="unanchored", kind="anomaly", category="x", pattern=r"(?:zz|yy)+"),
    Rule(name="case", kind="anomaly", category="x", pattern=r"MiXeD", ignore_case=False),
    Rule(name="kelvin", kind="anomaly", category="x", pattern=r"kelvin"),
    Rule(name="value", kind="throughput", pattern=r"rate=(?P<value>\d+)"),
    Rule(name="dup_value", kind="throughput", pattern=r"speed (?P<value>\d+)"),
    Rule(name="lookbehind", kind="anomaly", category="x", pattern=r"(?<=\[)err\]"),
    Rule(name="long_s", kind="anomaly", category="x", pattern=r"segv"),
    Rule(name="dotted_i", kind="anomaly", category="x", pattern=r"ibv"),
    Rule(name="digits", kind="anomaly", category="x", pattern=r"Errno 28\]"),
    Rule(name="anchored_value", kind="throughput", pattern=r"^step \d+ rate (?P<value>\d+)"),
]

LINES = [
    "", "ac", "abc", "abbc", "xx foobaz", "barbaz", "QUX!", "zzyy", "MiXeD", "mixed",
    "\u212aelvin reading", "KELVIN", "rate=12 speed 7", "[err]", "err]", "plain line",
    "Rank0: (1) segmentation fault: artificial segfault", "ümlaut abc", "TFLOPs: 1.5",
    "\u017fegv", "\u0130BV down", "[Errno 28]", "[Errno 29]", "█▉ 57% rate=3",
    # Characters that share a lead byte with the three look-alikes, next to anchors.
    "\u0142 segv \u2014ibv \u0102kelvin", "\u2014\u212aelvin\u0141", "caf\u00e9[err]\u00e9",
]


def test_prefilter_gives_the_same_results_as_trying_every_rule(defaults: RuleSet) -> None:
    rules = list(defaults.rules) + TRICKY_RULES
    matcher = RuleSet.from_rules(rules)
    lines = LINES + [
        "RuntimeError: CUDA error: an illegal memory access was encountered",
        "slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***",
        " iteration 1 | throughput per GPU (TFLOP/s/GPU): 400.0 | lm loss: nan |",
        "node1 NCCL INFO NET/IB : Using [0]mlx5_0:1/IB",
    ]
    for line in lines:
        expected = [rule.name for rule in rules if _compile_plain(rule).search(line)]
        assert names(matcher.match(line)) == expected, line
    batch = [(i, m.rule.name) for i, line in enumerate(lines) for m in matcher.match(line)]
    assert [(i, m.rule.name) for i, m in matcher.match_lines(lines)] == batch
    # KELVIN SIGN, LONG S and DOTTED CAPITAL I fold to ASCII letters only through
    # Unicode rules: the prefilter must not hide them.
    assert "kelvin" in names(matcher.match("\u212aelvin reading"))
    assert "long_s" in names(matcher.match("\u017fegv"))
    assert "dotted_i" in names(matcher.match("\u0130BV down"))
    assert [(m.rule.name, m.value) for m in matcher.match("rate=12 speed 7")] == [
        ("value", 12.0),
        ("dup_value", 7.0),
    ]


def _compile_plain(rule: Rule) -> regex.Pattern[str]:
    return regex.compile(rule.pattern, regex.IGNORECASE if rule.ignore_case else 0)


def test_disabled_rules_are_left_out_of_a_rule_set() -> None:
    on = Rule(name="on", kind="checkpoint", pattern="saved")
    off = Rule(name="off", kind="checkpoint", pattern="saved", enabled=False)
    matcher = RuleSet.from_rules([on, off])
    assert [r.name for r in matcher.rules] == ["on"]
    assert names(matcher.match("saved")) == ["on"]


def test_only_three_non_ascii_letters_match_ascii_ones_case_insensitively() -> None:
    # The prefilter key maps exactly these to ASCII (see prefilter._key_table); a
    # new `regex` release that folds more characters would make it hide matches.
    ascii_alnum = regex.compile(r"[a-z0-9]", regex.IGNORECASE)
    found = [
        cp for cp in range(128, 0x110000)
        if not 0xD800 <= cp <= 0xDFFF and ascii_alnum.fullmatch(chr(cp))
    ]  # fmt: skip
    assert found == [0x130, 0x17F, 0x212A]


def test_match_lines_reports_line_indexes_in_order(batched: RuleSet) -> None:
    lines = [
        "plain",
        "RuntimeError: CUDA error: uncorrectable ECC error encountered",
        " iteration 3 | throughput per GPU (TFLOP/s/GPU): 401.5 |",
        "save-checkpoint",
    ]
    assert [(i, m.rule.name) for i, m in batched.match_lines(lines)] == [
        (1, "gpu_ecc_error"),
        (1, "cuda_error"),
        (2, "tflops"),
        (3, "save_checkpoint_dash"),
    ]
    assert batched.match_lines([]) == []


def test_match_lines_copes_with_a_newline_inside_a_line(batched: RuleSet) -> None:
    lines = ["first\nsegmentation fault", "Bus error"]
    assert [(i, m.rule.name) for i, m in batched.match_lines(lines)] == [(0, "segfault"), (1, "bus_error")]


def test_match_survives_lone_surrogates(batched: RuleSet) -> None:
    line = "bad byte \udcff then segmentation fault"  # as decoded with surrogateescape
    assert names(batched.match(line)) == ["segfault"]
    assert [m.rule.name for _, m in batched.match_lines([line])] == ["segfault"]


def test_match_lines_with_repeated_and_cached_lines(batched: RuleSet) -> None:
    lines = ["Bus error", "plain", "Bus error", "plain", "segmentation fault"]
    expected = [(i, m.rule.name) for i, line in enumerate(lines) for m in batched.match(line)]
    assert expected == [(0, "bus_error"), (2, "bus_error"), (4, "segfault")]
    for _ in range(2):  # keys unseen in the first batch, cached in the second
        assert [(i, m.rule.name) for i, m in batched.match_lines(lines)] == expected


def test_candidate_cache_stays_bounded_and_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefilter, "_CACHE_MAX_ENTRIES", 4)
    monkeypatch.setattr(prefilter, "_CACHE_MAX_KEY_CHARS", 40)
    matcher = RuleSet.load([default_rules_dir()])
    lines = [f"step {i} tag{chr(97 + i % 26)}{i % 7} segmentation fault" for i in range(50)]
    lines.append("x" * 100 + " segmentation fault")  # too long to be cached
    for _ in range(2):  # the second pass runs on whatever the cache kept
        assert [m.rule.name for _, m in matcher.match_lines(lines)] == ["segfault"] * len(lines)
        assert len(matcher._prefilter._cache) <= 4
        assert all(len(key) <= 40 for key in matcher._prefilter._cache)



# --- The block scan of throughput rules -----------------------------------------


@pytest.mark.parametrize(
    ("pattern", "scannable"),
    [
        (r"TFLOP[^:=|\d]{0,20}[:=]\s*(?P<value>\d+(?:\.\d+)?)", True),
        (r"\brate (?P<value>\d+)\b", True),  # \b sees "\n" as at a string's edge
        (r"[$^](?P<value>\d+)", True),  # in a class they are plain characters
        (r"^rate (?P<value>\d+)", False),
        (r"rate (?P<value>\d+)$", False),
        (r"\Arate (?P<value>\d+)", False),
        (r"rate (?P<value>\d+)\Z", False),
        (r"(?<=rate )(?P<value>\d+)", False),
        (r"rate (?P<value>\d+)(?! ms)", False),
        (r"(?s)rate.(?P<value>\d+)", False),  # an inline flag
        (r"(?:rate){e<=1} (?P<value>\d+)", False),  # fuzzy matching
        (r"rate (?P<value>\d+)\\", True),
        ("rate \\", False),  # a dangling backslash
    ],
)
def test_block_scannable(pattern: str, scannable: bool) -> None:
    assert patterns.block_scannable(pattern) is scannable


# Throughput patterns whose matches can run across a line break in a joined batch.
SPANNING_RULES = [
    Rule(name="spanning", kind="throughput", pattern=r"TFLOP[^\d]*(?P<value>\d+)"),
    Rule(name="dots", kind="throughput", pattern=r"tok\W{0,3}(?P<value>[0-9.]*)"),
    Rule(name="spaces", kind="throughput", pattern=r"rate\s*(?P<value>\d+)\b"),
]


def per_line(matcher: RuleSet, lines: Sequence[str]) -> list[tuple[int, str, float | None]]:
    return [(i, m.rule.name, m.value) for i, line in enumerate(lines) for m in matcher.match(line)]


def batch(matcher: RuleSet, lines: Sequence[str]) -> list[tuple[int, str, float | None]]:
    matcher.batch_min_lines = 0  # even two lines are matched as a batch
    return [(i, m.rule.name, m.value) for i, m in matcher.match_lines(lines)]


def test_a_few_lines_are_matched_one_by_one(defaults: RuleSet, grep_runs: list[int]) -> None:
    matcher = RuleSet.from_rules(defaults.rules)
    matcher.grep_min_chars = 0
    lines = realistic_log(200)
    expected = per_line(matcher, lines)
    found = []
    for start in range(0, len(lines), 5):  # under BATCH_MIN_LINES: no batch, so no grep either
        found += [(start + i, m.rule.name, m.value) for i, m in matcher.match_lines(lines[start : start + 5])]
    assert engine.BATCH_MIN_LINES == 6
    assert found == expected and grep_runs == []


def test_a_match_across_a_line_break_does_not_hide_the_next_lines_match() -> None:
    matcher = RuleSet.from_rules(SPANNING_RULES)
    lines = ["TFLOP none", "TFLOPS 7 TFLOP 8", "x 3", "tok", ".", "tok 5", "rate", "4", "rate 6"]
    assert batch(matcher, lines) == per_line(matcher, lines) == [
        (1, "spanning", 7.0), (5, "dots", 5.0), (8, "spaces", 6.0),
    ]  # fmt: skip


def test_block_scan_agrees_with_line_by_line_on_random_lines() -> None:
    rng = random.Random(3)
    pieces = ["TFLOP", "TFLOPs: ", "tok", "rate", "rate=", "speed ", " ", ":", "=", "|", ".", "7", "12.5", "x", "\u212a"]
    lines = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6))) for _ in range(3000)]
    matcher = RuleSet.from_rules([*SPANNING_RULES, *TRICKY_RULES])
    expected = per_line(matcher, lines)
    assert len({name for _, name, _ in expected}) >= 5  # the lines do exercise the rules
    assert batch(matcher, lines) == expected
    matcher.grep_min_chars = 0
    assert batch(matcher, lines) == expected


def test_first_match_of_a_line_counts_even_without_a_number() -> None:
    # As when searching the line alone: "tok ." is the line's match, and not a reading.
    matcher = RuleSet.from_rules(SPANNING_RULES)
    lines = ["tok . tok 9", "tok 3 tok 4"]
    assert batch(matcher, lines) == per_line(matcher, lines) == [(1, "dots", 3.0)]


def test_a_block_scan_out_of_time_finishes_line_by_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lines = realistic_log(4000)
    matcher = RuleSet.load([default_rules_dir()])
    expected = per_line(matcher, lines)
    monkeypatch.setattr(engine, "_SCAN_SECONDS_PER_CHAR", -1.0)  # a deadline already past
    with caplog.at_level(logging.DEBUG, logger="ajr_agent.detect.rules"):
        assert batch(matcher, lines) == expected
    assert "timed out; searching the rest line by line" in caplog.text
    assert sum(name == "tflops" for _, name, _ in expected) > 500


# --- The grep prefilter of large batches --------------------------------------------

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"

# TRICKY_RULES without the unanchored one (which turns grep off), plus a rule whose
# literal holds every character special in a POSIX extended regex.
GREP_RULES = [rule for rule in TRICKY_RULES if rule.name != "unanchored"] + [
    Rule(name="ere", kind="anomaly", category="x", pattern=r"x\.y\|z\(\)\[\]\{\}\*\+\?\^\$\\ ok"),
]

TRICKY_GREP_LINES = LINES + [
    "", "\r", "Bus error\r", "\rsegmentation fault", "nul\0 Bus error", "\0",
    "x.y|z()[]{}*+?^$\\ ok", "xay|z()[]{}*+?^$\\ ok", "bad byte \udcff then segmentation fault",
    "Bus 7error", "seg1mentation fault", "RuntimeError: CUDA error: an illegal memory access was encountered",
    "caf\u00e9 CUDA error: out of memory", "oom-\u212aill", "\u212aILLED oom_kill",
    "y" * 300_000 + " segmentation fault", "z" * 300_000, "w" * 200_000 + "\u00e9",
]  # fmt: skip


def realistic_log(count: int, seed: int = 7) -> list[str]:
    """Return ``count`` lines shaped like a training log, with the odd event line."""
    rng = random.Random(seed)
    events = [
        "  successfully saved checkpoint from iteration    5000 to /lustre/ckpt [ t 1/4, p 1/8 ]",
        "[rank3]:[E626 06:24:44.903881913 ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught "
        "collective operation timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE) ran for 600020 ms",
        "RuntimeError: CUDA error: an illegal memory access was encountered",
        " iteration 12 | lm loss: nan | grad norm: inf |",
    ]
    shapes = [
        lambda i: f" iteration {i:8d}/ 1000000 | elapsed time per iteration (ms): {rng.uniform(700, 1400):.1f}"
        f" | throughput per GPU (TFLOP/s/GPU): {rng.uniform(380, 420):.1f} | lm loss: {rng.uniform(1, 3):.6E} |",
        lambda i: f"gpu-node-{rng.randrange(64):03d}:{i} [{i % 8}] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB",
        lambda i: f"{{'loss': {rng.uniform(0.5, 3):.4f}, 'grad_norm': {rng.uniform(0.1, 3):.6f}, 'epoch': {i / 1e5:.2f}}}",
        lambda i: f"{i % 101:3d}%|{'█' * (i % 11)}{' ' * (10 - i % 11)}| {i % 1752}/1752 [00:{i % 60:02d}<1:21:36]",
        lambda i: f"sample {i}: " + " ".join(rng.choice(("error", "fail", "nan", "the", "kill", "bus")) for _ in range(9)),
    ]  # fmt: skip
    return [events[i % len(events)] if i % 97 == 0 else rng.choice(shapes)(i) for i in range(count)]


def corpus_lines() -> list[str]:
    return [
        table["text"]
        for path in sorted(CORPUS.glob("*.toml"))
        for table in tomllib.loads(path.read_text(encoding="utf-8"))["line"]
    ]


@pytest.fixture
def grep_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the exit status of each command that the rule engine runs."""
    runs: list[int] = []

    class RecordingPopen(subprocess.Popen):  # type: ignore[type-arg]
        def wait(self, timeout: float | None = None) -> int:
            returncode = super().wait(timeout)
            runs.append(returncode)
            return returncode

    monkeypatch.setattr(grep.subprocess, "Popen", RecordingPopen)
    return runs


Found = list[tuple[int, str, float | None]]


def grep_and_python(rules: Sequence[Rule], lines: list[str]) -> tuple[Found, Found]:
    """Return what match_lines finds with grep forced on, and with grep off."""
    by_grep = RuleSet.from_rules(rules)
    by_grep.grep_min_chars = by_grep.batch_min_lines = 0
    by_python = RuleSet.from_rules(rules)
    by_python.grep_executable = None
    by_python.batch_min_lines = 0

    def flat(matches: list[tuple[int, RuleMatch]]) -> Found:
        return [(index, match.rule.name, match.value) for index, match in matches]

    return flat(by_grep.match_lines(lines)), flat(by_python.match_lines(lines))


@pytest.mark.skipif(shutil.which("grep") is None, reason="needs grep")
@pytest.mark.parametrize(
    "lines",
    [corpus_lines(), realistic_log(20_000), TRICKY_GREP_LINES, [], [""]],
    ids=["corpus", "realistic", "tricky", "none", "empty_line"],
)
@pytest.mark.parametrize("extra_rules", [[], GREP_RULES], ids=["defaults", "tricky_rules"])
def test_grep_prefilter_gives_the_same_matches_as_python(
    defaults: RuleSet, lines: list[str], extra_rules: list[Rule], grep_runs: list[int]
) -> None:
    by_grep, by_python = grep_and_python(list(defaults.rules) + extra_rules, lines)
    assert by_grep == by_python
    assert grep_runs == ([] if not lines else [0])  # ran and did not fail (its sentinel line matches)


def test_a_line_break_inside_a_line_sets_grep_aside(
    defaults: RuleSet, grep_runs: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    # grep numbers such a line as two; the tailer never hands one over.
    lines = ["a\nBus error", " throughput per GPU (TFLOP/s/GPU): 400.0 |\nsegmentation fault", "plain"]
    with caplog.at_level(logging.DEBUG, logger="ajr_agent.detect.rules"):
        by_grep, by_python = grep_and_python(defaults.rules, lines)
    assert by_grep == by_python == [(0, "bus_error", None), (1, "segfault", None), (1, "tflops", 400.0)]
    assert grep_runs == [0]
    assert "line break" in caplog.text


def test_a_failing_scan_still_collects_grep(
    defaults: RuleSet, grep_runs: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    matcher = RuleSet.from_rules(defaults.rules)
    matcher.grep_min_chars = 0

    def broken_scan(*_: object) -> list[tuple[int, RuleMatch]]:
        raise RuntimeError("scan broke")

    monkeypatch.setattr(matcher, "_scan", broken_scan)
    with pytest.raises(RuntimeError, match="scan broke"):
        matcher.match_lines(realistic_log(100))
    assert grep_runs == [0]  # waited for, not left a zombie


def test_grep_prefilter_finds_the_events_of_a_realistic_log(
    defaults: RuleSet, grep_runs: list[int]
) -> None:
    by_grep, _ = grep_and_python(defaults.rules, realistic_log(2000))
    assert grep_runs == [0]
    found = {name for _, name, _ in by_grep}
    assert {"megatron_checkpoint_saved", "nccl_watchdog_timeout", "cuda_illegal_memory_access"} <= found
    assert {"tflops", "nan_loss"} <= found


def test_grep_runs_only_on_large_batches(defaults: RuleSet, grep_runs: list[int]) -> None:
    matcher = RuleSet.from_rules(defaults.rules)
    assert matcher.grep_min_chars == grep.GREP_MIN_BATCH_CHARS == 2**20
    lines = realistic_log(2000)
    assert sum(map(len, lines)) < matcher.grep_min_chars
    small = matcher.match_lines(lines)
    assert [(i, m) for i, line in enumerate(lines) for m in matcher.match(line)] == small
    assert grep_runs == []
    big = lines * (matcher.grep_min_chars // sum(map(len, lines)) + 1)
    copies = len(big) // len(lines)
    assert matcher.match_lines(big) == [(i + n * len(lines), m) for n in range(copies) for i, m in small]
    assert grep_runs == [0]


def test_an_unanchored_rule_turns_grep_off(grep_runs: list[int]) -> None:
    matcher = RuleSet.from_rules(TRICKY_RULES)
    matcher.grep_min_chars = 0
    expected = [(i, m.rule.name) for i, line in enumerate(LINES) for m in matcher.match(line)]
    assert [(i, m.rule.name) for i, m in matcher.match_lines(LINES)] == expected
    assert grep_runs == []


@pytest.mark.parametrize("failure", ["missing", "exit_2", "timeout"])
def test_grep_failure_falls_back_to_python(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "grep"
    if failure == "missing":
        fake = tmp_path / "no-such-grep"
    else:
        fake.write_text("#!/bin/sh\nexit 2\n" if failure == "exit_2" else "#!/bin/sh\nexec sleep 10\n")
        fake.chmod(0o755)
        monkeypatch.setattr(grep, "GREP_TIMEOUT", 0.2)
    lines = realistic_log(3000) + TRICKY_GREP_LINES
    expected = RuleSet.load([default_rules_dir()])
    expected.grep_executable = None
    matcher = RuleSet.load([default_rules_dir()])
    matcher.grep_executable = str(fake)
    matcher.grep_min_chars = 0
    with caplog.at_level(logging.DEBUG, logger="ajr_agent.detect.rules"):
        assert matcher.match_lines(lines) == expected.match_lines(lines)
    assert "matching without it" in caplog.text
    assert not [record for record in caplog.records if record.levelno > logging.DEBUG]


def test_no_memory_file_for_grep_falls_back_to_python(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_memfd(*_: object) -> int:
        raise OSError(24, "Too many open files")

    lines = realistic_log(3000)
    expected = RuleSet.load([default_rules_dir()])
    expected.grep_executable = None
    matcher = RuleSet.load([default_rules_dir()])
    matcher.grep_min_chars = 0
    monkeypatch.setattr(grep.os, "memfd_create", no_memfd)
    with caplog.at_level(logging.DEBUG, logger="ajr_agent.detect.rules"):
        assert matcher.match_lines(lines) == expected.match_lines(lines)
    assert "Too many open files" in caplog.text and "matching without it" in caplog.text


# --- Priority, cascade and root_cause ---------------------------------------------


def test_priority_and_cascade_defaults() -> None:
    rule = Rule(name="r", kind="anomaly", category="x", pattern="x")
    assert (rule.priority, rule.cascade) == (DEFAULT_PRIORITY, False)


def test_priority_and_cascade_load_from_toml(tmp_path: Path) -> None:
    write(tmp_path, "10-site.toml", """
[[rule]]
name = "lustre_evicted"
kind = "anomaly"
pattern = 'evicted by'
category = "filesystem"
priority = 65
cascade = true
""")
    (rule,) = load_rule_files([tmp_path])
    assert (rule.priority, rule.cascade) == (65, True)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("kind = 'checkpoint'\npattern = 'x'\npriority = 5", "priority is only for anomaly rules"),
        ("kind = 'throughput'\npattern = '(?P<value>1)'\ncascade = true", "cascade is only for anomaly rules"),
        ("kind = 'anomaly'\npattern = 'x'\ncategory = 'x'\npriority = 1001",
         "priority: Input should be less than or equal to 1000"),
        ("kind = 'anomaly'\npattern = 'x'\ncategory = 'x'\npriority = -1",
         "priority: Input should be greater than or equal to 0"),
        ("kind = 'anomaly'\npattern = 'x'\ncategory = 'x'\npriority = '90'", "priority: Input should be a valid integer"),
        ("kind = 'anomaly'\npattern = 'x'\ncategory = 'x'\ncascade = 'yes'", "cascade: Input should be a valid boolean"),
    ],
)
def test_invalid_priority_and_cascade(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "10-site.toml", f"[[rule]]\nname = 'r'\n{body}\n")
    with pytest.raises(RuleFileError, match=regex.escape(f"{path}: rule 'r': ") + ".*" + regex.escape(expected)):
        load_rule_files([tmp_path])


def test_every_default_anomaly_rule_states_its_priority(defaults: RuleSet) -> None:
    anomalies = [r for r in defaults.rules if r.kind is RuleKind.ANOMALY]
    assert [r.name for r in anomalies if "priority" not in r.model_fields_set] == []


def test_default_cascades_are_the_consequences(defaults: RuleSet) -> None:
    assert {r.name for r in defaults.rules if r.cascade} == {
        "gpu_xid_cleanup", "nccl_watchdog_timeout", "nccl_watchdog_abort", "nccl_peer_lost",
        "abort_signal", "dataloader_worker_died", "python_uncaught_exception",
        "torchrun_child_failed", "launcher_worker_failed", "srun_task_failed",
        "nccl_heartbeat_timeout", "jax_task_heartbeat_timeout", "spawn_worker_raised",
        "detectron2_training_exception", "slurm_task_failure_cancel",
    }  # fmt: skip


def test_root_cause_of_one_line(defaults: RuleSet) -> None:
    line = "RuntimeError: CUDA error: out of memory"
    assert names(defaults.match(line)) == ["gpu_oom"]  # cuda_error leaves an out-of-memory to gpu_oom
    cause = root_cause(defaults.match(line))
    assert cause is not None and cause.rule.name == "gpu_oom"
    assert root_cause(defaults.match("save-checkpoint")) is None
