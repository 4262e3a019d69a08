"""The pyslurm backend on the real local Slurm, where packaging/dev/test.sh installed the pyslurm built for it.

Which pyslurm this machine has is test.sh's AJR_TEST_PYSLURM, else the one installed in
the Python running the tests: its version (built from ../shared/vendor against the
release's libslurm-dev: 22.05, 24.11), or `none` (26.05, or a venv set up without it). The agent's `auto` choice is checked against it,
log line and all. The rest compares pyslurm's reading and actions with the commands':
every job of a queue with jobs in each state (array tasks, hostile names) reads the
same through both, and requeue held, release and cancel do and refuse what scontrol does.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ajr_agent.adapters.slurm.calls import SlurmAnswer
from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError
from ajr_agent.adapters.slurm.pyslurm_backend import PyslurmGateway
from ajr_agent.domain.jobs import JobSnapshot
from tests.conftest import LINE_BREAKS, wait_for
from tests.integration.support import AgentProcess, sbatch

pytestmark = pytest.mark.slurm



def installed_pyslurm() -> str:
    """The version of the pyslurm installed beside AJR, `none` without one (what test.sh also asks)."""
    try:
        return importlib.metadata.version("pyslurm")
    except importlib.metadata.PackageNotFoundError:
        return "none"


EXPECTED = os.environ.get("AJR_TEST_PYSLURM") or installed_pyslurm()
needs_pyslurm = pytest.mark.skipif(EXPECTED == "none", reason="no pyslurm installed for this Slurm")


def pyslurm_gateway() -> PyslurmGateway:
    """The backend over the installed pyslurm; the test fails, not skips, when it is not there."""
    try:
        module = importlib.import_module("pyslurm")
    except ImportError as exc:
        pytest.fail(f"pyslurm {EXPECTED} is installed here, but it does not import: {exc}")
    assert module.__version__ == EXPECTED
    return PyslurmGateway(30, module)


@pytest.fixture
def jobs(slurm: None, tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Submit test jobs from tmp_path (`sbatch` arguments); all cancelled afterwards."""
    submitted: list[int] = []

    def submit(*args: str) -> int:
        job_id = sbatch(script(tmp_path, "sleep 300"), tmp_path, "-o", "/dev/null", *args)
        submitted.append(job_id)
        return job_id

    yield submit
    subprocess.run(["scancel", *map(str, submitted)], check=False)


def script(directory: Path, body: str) -> Path:
    path = directory / "job.sh"
    path.write_text(f"#!/bin/bash\n{body}\n")
    return path


def test_auto_chooses_pyslurm_where_it_matches_and_says_why(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(extra_config='slurm_backend = "auto"\n')
    log = agent.log.read_text()
    version = CommandGateway(30).version()
    if EXPECTED == "none":
        assert "Slurm backend: commands (pyslurm is not importable: No module named 'pyslurm'; " \
               f"Slurm {version})" in log  # fmt: skip
    else:
        assert f"Slurm backend: pyslurm ({EXPECTED} matches Slurm {version})" in log
        assert "through Slurm's commands, not pyslurm: job updates and exclusions" in log
        assert "reboots (scontrol reboot ASAP nextstate=RESUME): pyslurm has no call for a node reboot" in log


def comparable(job: JobSnapshot) -> JobSnapshot:
    """What AJR reads of a job: its stdout as the directory AJR looks in (24.11's squeue prints
    the pattern, `slurm-%j.out`, pyslurm and 22.05's squeue the path), the start of an attempt
    that started and the end of one that ended (for others Slurm gives expected times)."""
    started = job.running or job.ended
    return replace(job, stdout=job.stdout_dir, start_time=job.start_time if started else None,
                   end_time=job.end_time if job.ended else None)  # fmt: skip


@needs_pyslurm
def test_pyslurm_reads_every_job_as_squeue_does(jobs: Callable[..., int], tmp_path: Path) -> None:
    commands, pyslurm = CommandGateway(30), pyslurm_gateway()
    hostile = "x" + "".join(LINE_BREAKS) + "\x1f\x01 y"
    ids = [
        jobs("-J", "ajrtest-running"),
        jobs("-J", "ajrtest-held", "--hold"),
        jobs("-J", "ajrtest-later", "--begin=now+3600"),
        jobs("-J", hostile, "--comment", hostile, "--hold"),
        jobs("-J", "ajrtest-tasks", "-n", "2", "--comment", '{"APS": {}}'),
        jobs("-J", "ajrtest-array", "--array=1-2", "--hold"),
    ]
    requeued = jobs("-J", "ajrtest-requeued")
    failed = sbatch(script(tmp_path, "exit 3"), tmp_path, "-J", "ajrtest-failed", "-o", "/dev/null")
    wait_for(lambda: (j := commands.job(requeued)) and j.running, 60, f"job {requeued} to run")
    commands.requeue_hold(requeued)
    wait_for(lambda: (j := commands.job(requeued)) and j.held, 60, f"job {requeued} to be held")
    wait_for(lambda: (j := commands.job(failed)) and j.state == "FAILED", 60, f"job {failed} to fail")
    through_squeue = {job.job_id: comparable(job) for job in commands.list_jobs()}
    through_pyslurm = {job.job_id: comparable(job) for job in pyslurm.list_jobs()}
    for job_id in [*ids, requeued, failed]:
        assert through_pyslurm.get(job_id) == through_squeue.get(job_id)
    assert through_pyslurm[ids[3]].name == hostile
    assert set(through_pyslurm) == set(through_squeue)


@needs_pyslurm
def test_pyslurm_holds_releases_and_cancels_and_refuses_as_scontrol_does(jobs: Callable[..., int]) -> None:
    commands, pyslurm = CommandGateway(30), pyslurm_gateway()
    job_id = jobs("-J", "ajrtest-actions")
    wait_for(lambda: (j := commands.job(job_id)) and j.running, 60, f"job {job_id} to run")
    pyslurm.requeue_hold(job_id)
    held = wait_for(lambda: (j := commands.job(job_id)) and j.held and j, 60, f"job {job_id} to be held")
    assert held.restart_count == 1 and held.reason == "job requeued in held state"
    with pytest.raises(SlurmError, match=SlurmAnswer.PENDING):  # the executor reads "Slurm requeued it first"
        pyslurm.requeue_hold(job_id)
    pyslurm.release(job_id)
    assert not commands.job(job_id).held  # type: ignore[union-attr]
    pyslurm.cancel(job_id)
    wait_for(lambda: (j := commands.job(job_id)) and j.state == "CANCELLED", 60, f"job {job_id} to be cancelled")
    pyslurm.cancel(job_id)  # over: no error, as scancel
    with pytest.raises(SlurmError, match=SlurmAnswer.FINISHED) as refused:
        pyslurm.release(job_id)
    assert not refused.value.transient
    with pytest.raises(SlurmError, match=SlurmAnswer.INVALID_JOB):
        pyslurm.requeue(999_999_999)


@needs_pyslurm
def test_a_job_named_in_bytes_pyslurm_cannot_decode_is_read_through_squeue(jobs: Callable[..., int], tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    pyslurm = pyslurm_gateway()
    name = os.fsdecode(b"ajrtest-\xff\xfe")
    # The shell passes the name's bytes as they are; pyslurm decodes them as strict UTF-8.
    plain = jobs("-J", "ajrtest-plain", "--hold")
    odd = int(subprocess.run(["bash", "-c", f"sbatch --parsable --hold -o /dev/null -J $'ajrtest-\\xff\\xfe' "
                              f"{script(tmp_path, 'sleep 300')}"], cwd=tmp_path, capture_output=True, text=True,
                             check=True).stdout.strip())  # fmt: skip
    try:
        caplog.set_level(logging.WARNING, logger="ajr_agent.adapters.slurm.pyslurm_backend")
        listed = {job.job_id: job for job in pyslurm.list_jobs()}
        pyslurm.list_jobs()
        assert listed[odd].name == "ajrtest-\ufffd\ufffd" != name and plain in listed
        # Once, naming the first such job pyslurm meets (one of an earlier run may still be in Slurm's memory).
        warnings = [r.getMessage() for r in caplog.records if "pyslurm cannot read job" in r.getMessage()]
        assert len(warnings) == 1 and "not UTF-8" in warnings[0] and "read through squeue" in warnings[0]
    finally:
        subprocess.run(["scancel", str(odd)], check=False)
