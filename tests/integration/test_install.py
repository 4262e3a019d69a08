"""`ajr install` into a temporary prefix, then `ajr doctor` against the real slurmctld running
the installed hooks, with a real agent: every check passes; without the EpilogSlurmctld line
the epilog check fails, alone, with the line to add.

slurmctld loads job_submit.lua from /etc/slurm only, so the installed script is copied
there for this module and removed afterwards, and the cluster is restarted plain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import ROOT, wait_for

from tests.integration.support import AgentProcess, node_healthy, sbatch, start_local_slurm

pytestmark = pytest.mark.slurm

LIVE_SCRIPT = Path("/etc/slurm/job_submit.lua")


def ajr(*args: str | Path, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AJR_", "APS_"))}
    if path is not None:
        env["PATH"] = f"{path}:{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "ajr_agent.surfaces.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with an ajr-agent: run from the checkout by a Python that has none beside it,
    the installer looks on PATH."""
    agent = tmp_path_factory.mktemp("bin") / "ajr-agent"
    agent.write_text(f'#!/bin/sh\nexec {sys.executable} -m ajr_agent.surfaces.service "$@"\n')
    agent.chmod(0o755)
    return agent.parent


@pytest.fixture(scope="module")
def prefix(slurm: None, shim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AJR installed into a temporary prefix by `ajr install`."""
    root = tmp_path_factory.mktemp("installed")
    done = ajr("install", "--prefix", root, path=shim)
    assert done.returncode == 0, done.stderr
    assert f"created      {root / 'usr/local/lib/ajr/ajr-epilog'}" in done.stdout
    assert "the epilog hook runs as SlurmUser root (from scontrol show config)" in done.stdout
    return root


@pytest.fixture(scope="module")
def live_script(prefix: Path) -> Iterator[None]:
    """The installed job_submit.lua where slurmctld reads it; the plain cluster again afterwards."""
    shutil.copyfile(prefix / "etc/slurm/job_submit.lua", LIVE_SCRIPT)
    try:
        yield
    finally:
        try:
            start_local_slurm(None)
            wait_for(node_healthy, 60, "the node to take jobs again")
        finally:
            LIVE_SCRIPT.unlink(missing_ok=True)


def reconfigure(lines: str, workdir: Path) -> None:
    extra = workdir / "slurm.conf.extra"
    extra.write_text(lines)
    start_local_slurm(extra)
    wait_for(node_healthy, 60, "the node to take jobs")


def running_agent(agent_factory: Callable[..., AgentProcess], prefix: Path) -> AgentProcess:
    """An agent whose state and spool are the installed ones; it has polled once."""
    agent = agent_factory(extra_config=f'spool_dir = "{prefix / "var/spool/ajr/epilog"}"\n',
                          workdir=prefix / "var/lib/ajr")  # fmt: skip
    wait_for(lambda: "last_poll_at" in (agent.cli("status", "--json").stdout or ""), 30, "the agent's first poll")
    return agent


def doctor_lines(agent: AgentProcess, prefix: Path) -> tuple[int, list[str]]:
    done = ajr("--config", agent.config, "doctor", "--prefix", prefix)
    return done.returncode, done.stdout.splitlines()


def test_a_second_install_changes_nothing(prefix: Path, shim: Path) -> None:
    done = ajr("install", "--prefix", prefix, path=shim)
    assert done.returncode == 0, done.stderr
    assert "nothing changed: every file was already in place" in done.stdout
    assert " created " not in done.stdout and " updated " not in done.stdout


def test_doctor_names_the_missing_epilog_line(
    prefix: Path, live_script: None, agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    reconfigure("JobSubmitPlugins=lua\n", tmp_path)
    agent = running_agent(agent_factory, prefix)
    code, lines = doctor_lines(agent, prefix)
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed == ["FAIL  epilog        EpilogSlurmctld is not set: the agent sees job ends at its next poll only"], \
        "\n".join(lines)  # fmt: skip
    fix = lines[lines.index(failed[0]) + 1].strip()
    assert fix == (f"fix: add EpilogSlurmctld={prefix / 'usr/local/lib/ajr/ajr-epilog'} to slurm.conf "
                   "(`ajr install` puts the hook there), then restart slurmctld")  # fmt: skip


def test_doctor_passes_with_the_installed_hooks_and_a_running_agent(
    prefix: Path, live_script: None, agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    hook = prefix / "usr/local/lib/ajr/ajr-epilog"
    reconfigure(f"EpilogSlurmctld={hook}\nJobSubmitPlugins=lua\n", tmp_path)
    agent = running_agent(agent_factory, prefix)
    code, lines = doctor_lines(agent, prefix)
    assert code == 0 and lines[-1] == "12 checks: all passed", "\n".join(lines)
    assert all(line.startswith("PASS") for line in lines[:-1]), "\n".join(lines)

    # The installed hook reaches the agent through the installed spool.
    script = tmp_path / "ends.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    job_id = sbatch(script, tmp_path, "-J", "ajr-installed", "--comment", '{"APS": {}}')
    agent.submitted.append(job_id)
    wait_for(lambda: f"job {job_id}: Slurm reports its end" in agent.log.read_text(), 60, "the epilog record")
