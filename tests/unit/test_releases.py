"""What AJR does about the differences between Slurm releases and backends, without a Slurm.

The scheduler pass asked for when a StartTime a few seconds ahead comes, the pyslurm
backend's fallbacks (a queue pyslurm cannot decode, what it has no call for), the choice
of backend as logged, and `scontrol show config`'s lists as 24.11 prints them. The same
behaviours on the real releases: tests/integration/test_releases.py and test_pyslurm.py.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import types
from datetime import datetime
from pathlib import Path

import pytest

from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError
from ajr_agent.adapters.slurm.gateway import open_gateway
from ajr_agent.adapters.slurm.pyslurm_backend import PyslurmGateway
from ajr_agent.adapters.slurm_config import parse_show_config
from ajr_agent.domain.settings import Settings, SlurmBackend
from tests.conftest import wait_for


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory first on PATH for stand-in Slurm commands."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return directory


def command(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def recording_scontrol(directory: Path, calls: Path, fail_after: int = 0) -> None:
    """A scontrol that logs each call (time and arguments, as JSON) and fails every call after the first `fail_after`."""
    script = directory / "scontrol"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys, time\n"
        f"with open({str(calls)!r}, 'a') as log:\n    log.write(json.dumps([time.time(), sys.argv[1:]]) + '\\n')\n"
        f"if {fail_after} and len(open({str(calls)!r}).readlines()) > {fail_after}:\n"
        "    sys.exit('Job is no longer pending execution for job 7')\n"
        "if sys.argv[1:] == ['--version']:\n    print('slurm-wlm 26.05.5')\n"
    )  # fmt: skip
    script.chmod(0o755)


def logged(calls: Path) -> list[tuple[float, list[str]]]:
    return [tuple(json.loads(line)) for line in calls.read_text().splitlines()] if calls.exists() else []  # type: ignore[misc]


def test_a_start_time_seconds_ahead_gets_a_scheduler_pass_once_it_has_come(bin_dir: Path, tmp_path: Path) -> None:
    """slurmctld runs a pass soon after an update, none when a begin time passes: the pass the
    release asked for finds the job waiting, and the next would be the backfill's (30 s)."""
    calls = tmp_path / "calls"
    recording_scontrol(bin_dir, calls)
    CommandGateway(timeout=5).update(7, StartTime="now+1")
    begin = int(logged(calls)[0][0]) + 1  # scontrol's now+1 is in whole seconds
    wait_for(lambda: len(logged(calls)) == 2, 5, "the scheduler pass to be asked for")
    at, args = logged(calls)[1]
    assert args == ["update", "JobId=7", f"StartTime={datetime.fromtimestamp(begin).isoformat()}"]
    assert at >= begin  # not before the job may start: that pass would find it waiting again


@pytest.mark.parametrize("fields", [{"StartTime": "now"}, {"StartTime": "now+600"}, {"AdminComment": "now+2"},
                                    {"StartTime": "2026-01-02T03:04:05"}])  # fmt: skip
def test_other_updates_ask_for_no_pass(bin_dir: Path, tmp_path: Path, fields: dict[str, str]) -> None:
    calls = tmp_path / "calls"
    recording_scontrol(bin_dir, calls)
    CommandGateway(timeout=5).update(7, **fields)
    time.sleep(1.2)
    assert len(logged(calls)) == 1


def test_a_refused_update_asks_for_no_pass_and_a_refused_pass_is_no_error(bin_dir: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    calls = tmp_path / "calls"
    recording_scontrol(bin_dir, calls, fail_after=1)
    caplog.set_level(logging.DEBUG, logger="ajr_agent.adapters.slurm.commands")
    gateway = CommandGateway(timeout=5)
    gateway.update(7, StartTime="now+1")
    # The job has started by then (the backfill came first): Slurm refuses, nothing to do.
    wait_for(lambda: "no scheduler pass asked" in caplog.text, 5, "the refused pass to be logged")
    with pytest.raises(SlurmError, match="no longer pending"):
        gateway.update(7, StartTime="now+1")
    time.sleep(1.2)
    assert len(logged(calls)) == 3


class _Job:
    """A pyslurm.Job as the backend reads it; `raw_name` bytes are decoded on access, as pyslurm does."""

    def __init__(self, job_id: int, raw_name: bytes = b"train") -> None:
        self.id, self.raw_name = job_id, raw_name
        self.state, self.user_id, self.user_name, self.requeue_count = "RUNNING", 1000, "alice", 0
        self.start_time, self.end_time, self.is_batch_job, self.is_requeueable = 1_700_000_000, None, True, True
        self.allocated_nodes, self.state_reason, self.partition, self.ntasks = "n1", "None", "defq", 4
        self.working_directory, self.standard_output, self.comment = "/runs", "/runs/out", '{"APS": {}}'

    @property
    def name(self) -> str:
        return self.raw_name.decode()


def fake_pyslurm(*jobs: _Job, refuse: str = "") -> types.ModuleType:
    """A pyslurm module whose Jobs.load() gives `jobs` and whose Job actions fail with `refuse` when set."""
    module = types.ModuleType("pyslurm")
    module.__version__ = "24.11.0"  # type: ignore[attr-defined]

    class Job:
        def __init__(self, job_id: int) -> None:
            self.job_id = job_id

        def __getattr__(self, method: str) -> object:
            def act(**kwargs: object) -> None:
                if refuse:
                    raise RuntimeError(refuse)

            return act

    module.Jobs = types.SimpleNamespace(load=lambda: {job.id: job for job in jobs})  # type: ignore[attr-defined]
    module.Job = Job  # type: ignore[attr-defined]
    return module


def fake_squeue(directory: Path, job_id: int) -> None:
    """A squeue that prints one running job in the format AJR asks for (its fields from SQUEUE_FORMAT2)."""
    script = directory / "squeue"
    script.write_text(
        f"#!{sys.executable}\nimport os, re, sys\n"
        "fmt = os.environ['SQUEUE_FORMAT2']\n"
        f"values = {{'JobID': '{job_id}', 'State': 'RUNNING', 'UserId': '1000', 'UserName': 'alice', 'RestartCnt': '0',"
        " 'BatchFlag': '1', 'Requeue': '1', 'NumTasks': '4', 'Name': 'bad\\ufffdname', 'Reason': 'None'}\n"
        "out = ''.join(values.get(name, '') + end for name, end in re.findall(r'([A-Za-z]+):([^,]*)', fmt))\n"
        "sys.stdout.write(out + '\\n')\n"
    )  # fmt: skip
    script.chmod(0o755)


def test_a_queue_pyslurm_cannot_decode_is_read_through_squeue_with_one_warning(
    bin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_squeue(bin_dir, 8)
    gateway = PyslurmGateway(5, fake_pyslurm(_Job(7), _Job(8, b"bad\xffname")))
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert [(job.job_id, job.name, job.tasks) for job in gateway.list_jobs()] == [(8, "bad\ufffdname", 4)]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("pyslurm cannot read job 8 (its name, paths or comment")


def test_a_readable_queue_comes_from_pyslurm_with_each_jobs_task_count() -> None:
    gateway = PyslurmGateway(5, fake_pyslurm(_Job(7), _Job(9)))
    assert [(job.job_id, job.tasks, job.end_time) for job in gateway.list_jobs()] == [(7, 4, None), (9, 4, None)]


def test_pyslurm_refusals_are_slurm_errors_and_cancel_of_a_finished_job_is_none() -> None:
    PyslurmGateway(5, fake_pyslurm(refuse="Job has already finished")).cancel(7)
    with pytest.raises(SlurmError, match="Job has already finished") as finished:
        PyslurmGateway(5, fake_pyslurm(refuse="Job has already finished")).release(7)
    assert not finished.value.transient and finished.value.command == ["pyslurm.Job(7).release"]
    with pytest.raises(SlurmError, match="Unable to contact slurm controller") as unreachable:
        PyslurmGateway(5, fake_pyslurm(refuse="Unable to contact slurm controller (connect failure)")).cancel(7)
    assert unreachable.value.transient


def test_choosing_pyslurm_logs_what_still_goes_through_the_commands(bin_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    command(bin_dir, "scontrol", "echo 'slurm-wlm 24.11.5'")
    monkeypatch.setitem(sys.modules, "pyslurm", fake_pyslurm())
    caplog.set_level(logging.INFO, logger="ajr_agent.adapters.slurm.gateway")
    assert open_gateway(Settings()).backend == "pyslurm"
    assert "Slurm backend: pyslurm (24.11.0 matches Slurm 24.11.5)" in caplog.text
    assert "through Slurm's commands, not pyslurm: job updates and exclusions (scontrol update)" in caplog.text
    assert "reboots (scontrol reboot ASAP nextstate=RESUME): pyslurm has no call for a node reboot" in caplog.text


def test_without_pyslurm_the_log_says_so_with_slurms_release(bin_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    command(bin_dir, "scontrol", "echo 'slurm-wlm 26.05.5'")
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    caplog.set_level(logging.INFO, logger="ajr_agent.adapters.slurm.gateway")
    assert open_gateway(Settings(slurm_backend=SlurmBackend.AUTO)).backend == "commands"
    assert "Slurm backend: commands (pyslurm is not importable: " in caplog.text
    assert "; Slurm 26.05.5)" in caplog.text


def test_show_config_lists_of_24_11_read_under_their_plain_key_too() -> None:
    """24.11 prints each EpilogSlurmctld on a line of its own, `EpilogSlurmctld[0] = ...`; 22.05 one line."""
    text = ("Configuration data as of 2026-12-03T10:00:00\nEpilogSlurmctld[0]      = /usr/local/lib/ajr/ajr-epilog\n"
            "EpilogSlurmctld[1]      = /etc/slurm/site-epilog\nSlurmctldHost[0]        = ctl1(10.0.0.1)\n"
            "SlurmUser               = slurm(64030)\n")  # fmt: skip
    config = parse_show_config(text)
    assert config["EpilogSlurmctld"] == "/usr/local/lib/ajr/ajr-epilog,/etc/slurm/site-epilog"
    assert config["EpilogSlurmctld[1]"] == "/etc/slurm/site-epilog" and config["SlurmctldHost[0]"] == "ctl1(10.0.0.1)"
    assert parse_show_config("EpilogSlurmctld         = /a\n")["EpilogSlurmctld"] == "/a"
