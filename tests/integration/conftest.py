"""Fixtures of the integration tests: the real local Slurm cluster, and real agents against it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.support import AgentProcess, revive_node, start_local_slurm


@pytest.fixture(scope="session")
def slurm() -> None:
    """The local Slurm cluster of NODES, started (idempotently) for tests that claim Slurm behaviour."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm integration tests need root: run them through packaging/dev/test.sh")
    start_local_slurm(None)


@pytest.fixture
def failing_nodes(slurm: None) -> Iterator[list[str]]:
    """The nodes a test makes fail (it appends them): brought back afterwards, whatever happened."""
    failed: list[str] = []
    yield failed
    for node in dict.fromkeys(failed):
        revive_node(node)


@pytest.fixture
def agent_factory(slurm: None, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents on the local cluster; stop them and cancel their test jobs afterwards."""
    agents: list[AgentProcess] = []

    def start(dry_run: bool = False, extra_config: str = "", workdir: Path | None = None,
              poll_interval: float = 0.5) -> AgentProcess:  # fmt: skip
        path = workdir or tmp_path / f"agent{len(agents)}"
        path.mkdir(parents=True, exist_ok=True)
        agent = AgentProcess(path, dry_run=dry_run, extra_config=extra_config, poll_interval=poll_interval).start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if agent.process and agent.process.poll() is None:
            agent.stop()
        if agent.submitted:
            subprocess.run(["scancel", *map(str, agent.submitted)], check=False)
        if os.environ.get("AJR_TEST_ARTIFACTS"):
            shutil.copy(agent.log, Path(os.environ["AJR_TEST_ARTIFACTS"]) / f"{agent.workdir.name}.log")
