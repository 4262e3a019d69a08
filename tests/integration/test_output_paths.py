"""Where each release's squeue says a job's output goes, and where AJR takes it to be.

squeue's STDOUT differs by release: 22.05 expands the default file and not a path given
with -o, 24.11 expands neither, 26.05 prints the default relative to the working
directory. AJR looks for a job's logs in the directory of that file, so every shape must
come out as the same whole path.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ajr_agent.adapters.slurm import CommandGateway
from ajr_agent.domain.jobs import expand_stdout
from tests.integration.support import sbatch

pytestmark = pytest.mark.slurm

NAME = "ajrtest-output"


@pytest.mark.parametrize(("output", "expected"), [
    (None, "{cwd}/slurm-{id}.out"),
    ("%x-%j.out", "{cwd}/{name}-{id}.out"),
    ("{logs}/%x-%j.out", "{logs}/{name}-{id}.out"),
    ("{logs}/run-%j/%u.out", "{logs}/run-{id}/{user}.out"),
])  # fmt: skip
def test_every_release_gives_the_output_file_as_a_whole_path(slurm: None, tmp_path: Path, output: str | None,
                                                              expected: str) -> None:  # fmt: skip
    cwd, logs = tmp_path / "work", tmp_path / "logs"
    cwd.mkdir()
    script = cwd / "job.sh"
    script.write_text("#!/bin/bash\nsleep 1\n")
    args = ["--begin=now+3600", "-J", NAME] + ([] if output is None else ["-o", output.format(logs=logs)])
    job_id = sbatch(script, cwd, *args)
    try:
        job = CommandGateway(30).job(job_id)
        assert job is not None
        whole = expected.format(cwd=cwd, logs=logs, name=NAME, id=job_id, user=job.user)
        assert expand_stdout(job.stdout, job) == whole, f"squeue said {job.stdout!r}"
        assert job.stdout_dir == str(Path(whole).parent)  # where AJR looks for the job's logs
    finally:
        subprocess.run(["scancel", str(job_id)], check=False)
