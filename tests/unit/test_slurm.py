"""The Slurm gateway's parsing and its handling of failing or hung commands."""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import pytest

from ajr_agent.config import Settings, SlurmBackend
from ajr_agent.slurm import (
    SEP,
    SQUEUE_FIELDS,
    CommandGateway,
    PyslurmGateway,
    SlurmError,
    _snapshot_from_pyslurm,
    expand_stdout,
    open_gateway,
    parse_squeue,
    parse_time,
)


def line(**values: str) -> str:
    defaults = {
        "JobID": "12", "State": "RUNNING", "UserId": "1000", "UserName": "alice", "RestartCnt": "2",
        "StartTime": "2026-01-02T03:04:05", "EndTime": "Unknown", "BatchFlag": "1", "Requeue": "1",
        "NodeList": "node-[1-2]", "Reason": "None", "Partition": "gpu", "WorkDir": "/runs/a b", "STDOUT": "/runs/out/%x-%j.out",
        "Name": "llama|70b", "Comment": '{"APS": {}}',
    }  # fmt: skip
    defaults.update(values)
    return SEP.join(defaults[f] for f in SQUEUE_FIELDS) + SEP


def test_parse_squeue_reads_every_field() -> None:
    [job] = parse_squeue(line() + "\n")
    assert job.job_id == 12 and job.state == "RUNNING" and job.user_id == 1000 and job.user == "alice"
    assert job.restart_count == 2 and job.batch and job.requeueable
    assert job.start_time == parse_time("2026-01-02T03:04:05") and job.end_time is None
    assert job.nodes == "node-[1-2]" and job.work_dir == "/runs/a b" and job.name == "llama|70b"
    assert job.comment == '{"APS": {}}' and job.running and not job.ended
    assert job.stdout_dir == "/runs/out"


def test_comment_may_hold_anything_even_the_separator() -> None:
    [job] = parse_squeue(line(Comment='{"APS": {}} | note' + SEP + "tail"))
    assert job.comment == '{"APS": {}} | note' + SEP + "tail"


def test_null_comment_and_nodes_are_empty() -> None:
    [job] = parse_squeue(line(Comment="(null)", NodeList="", State="PENDING"))
    assert job.comment == "" and job.nodes == "" and not job.running and not job.ended


def test_states_with_flags_keep_the_base_state() -> None:
    [job] = parse_squeue(line(State="CANCELLED by 0"))
    assert job.state == "CANCELLED" and job.ended


def test_malformed_and_array_lines_are_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    jobs = parse_squeue("garbage\n" + line(JobID="13_4") + "\n" + line(JobID="14") + "\n")
    assert [j.job_id for j in jobs] == [14]
    assert "skipped" in caplog.text


@pytest.mark.parametrize("value", ["N/A", "Unknown", "None", "", "garbage-1"])
def test_placeholder_times_are_none(value: str) -> None:
    assert parse_time(value) is None


def test_expand_stdout_patterns_slurm_2205_leaves() -> None:
    [job] = parse_squeue(line())
    assert expand_stdout("/o/%x_%j_%u_%A_100%%.out", job) == "/o/llama|70b_12_alice_12_100%.out"


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put first on PATH, where a test writes stand-in Slurm commands."""
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return tmp_path


def write_command(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_hung_command_is_a_transient_error_within_the_timeout(fake_slurm: Path) -> None:
    write_command(fake_slurm, "scontrol", "sleep 30")
    gateway = CommandGateway(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SlurmError) as caught:
        gateway.release(5)
    assert caught.value.transient and "no answer within 0.5 s" in str(caught.value)
    assert time.monotonic() - started < 10


def test_unreachable_controller_is_transient(fake_slurm: Path) -> None:
    write_command(fake_slurm, "scontrol", "echo 'slurm_requeue error: Unable to contact slurm controller (connect failure)' >&2; exit 1")
    with pytest.raises(SlurmError) as caught:
        CommandGateway(timeout=5).requeue_hold(5)
    assert caught.value.transient and "requeuehold 5" in str(caught.value)


def test_refusal_is_permanent_and_keeps_slurms_words(fake_slurm: Path) -> None:
    write_command(fake_slurm, "scontrol", "echo 'Requested operation is presently disabled for job 5' >&2; exit 1")
    with pytest.raises(SlurmError) as caught:
        CommandGateway(timeout=5).requeue_hold(5)
    assert not caught.value.transient
    assert caught.value.reason == "Requested operation is presently disabled for job 5"


def test_missing_command_is_permanent(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_slurm))
    with pytest.raises(SlurmError, match="not installed or not on PATH"):
        CommandGateway(timeout=5).list_jobs()


def test_update_passes_values_with_spaces_as_one_argument(fake_slurm: Path, tmp_path: Path) -> None:
    record = tmp_path / "args"
    write_command(fake_slurm, "scontrol", f'for a in "$@"; do echo "$a" >> {record}; done')
    CommandGateway(timeout=5).update(7, AdminComment="ajr: requeued after segfault (1/3)", StartTime="now")
    assert record.read_text().splitlines() == [
        "update", "JobId=7", "AdminComment=ajr: requeued after segfault (1/3)", "StartTime=now"
    ]  # fmt: skip


def test_commands_go_to_the_cluster_slurm_conf_names(fake_slurm: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    record = tmp_path / "conf"
    write_command(fake_slurm, "squeue", f'echo "$SLURM_CONF" > {record}')
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/other-cluster.conf")
    assert CommandGateway(timeout=5).list_jobs() == []
    assert record.read_text().strip() == "/etc/slurm/other-cluster.conf"


def test_pyslurm_job_becomes_a_snapshot() -> None:
    job = types.SimpleNamespace(
        id=9, state="RUNNING", user_id=1000, user_name="alice", requeue_count=3, start_time=1700000000,
        end_time=None, is_batch_job=True, is_requeueable=False, allocated_nodes="gpu-[1-4]", state_reason="None",
        working_directory="/runs", standard_output="/runs/slurm-9.out", name="train", comment='{"APS": {}}',
    )  # fmt: skip
    snapshot = _snapshot_from_pyslurm(job)
    assert snapshot.job_id == 9 and snapshot.restart_count == 3 and snapshot.end_time is None
    assert snapshot.nodes == "gpu-[1-4]" and not snapshot.requeueable and snapshot.stdout_dir == "/runs"


def fake_pyslurm(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    module = types.ModuleType("pyslurm")
    module.__version__ = version  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyslurm", module)


def test_auto_uses_commands_without_pyslurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    assert open_gateway(Settings()).backend == "commands"


def test_explicit_pyslurm_without_pyslurm_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    with pytest.raises(SlurmError, match="pyslurm is not importable"):
        open_gateway(Settings(slurm_backend=SlurmBackend.PYSLURM))


def test_pyslurm_is_used_only_when_it_matches_slurm(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_command(fake_slurm, "scontrol", "echo 'slurm 25.11.2'")
    fake_pyslurm(monkeypatch, "25.11.0")
    assert isinstance(open_gateway(Settings()), PyslurmGateway)
    fake_pyslurm(monkeypatch, "24.5.0")
    assert open_gateway(Settings()).backend == "commands"
    with pytest.raises(SlurmError, match="does not match Slurm 25.11.2"):
        open_gateway(Settings(slurm_backend=SlurmBackend.PYSLURM))
