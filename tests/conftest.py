"""Shared fixtures: the real local Slurm cluster, and a real agent process against it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SLURM = ROOT / "packaging" / "local-slurm" / "local-slurm.sh"
DEMO = ROOT / "packaging" / "demo"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until predicate() is truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


HEALTHY_NODE_STATES = ("idle", "mixed", "allocated")


def start_local_slurm(extra_conf: Path | None) -> None:
    """(Re)start the local cluster, with extra slurm.conf lines from a file or without any."""
    env = {k: v for k, v in os.environ.items() if k != "AJR_SLURM_EXTRA_CONF"}
    if extra_conf is not None:
        env["AJR_SLURM_EXTRA_CONF"] = str(extra_conf)
    subprocess.run([str(LOCAL_SLURM), "start"], env=env, check=True, timeout=300)


def node_healthy() -> bool:
    """The local node takes jobs."""
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    states = out.stdout.split()
    return out.returncode == 0 and bool(states) and all(s in HEALTHY_NODE_STATES for s in states)


@contextlib.contextmanager
def slurm_reconfigured(extra_lines: str, workdir: Path) -> Iterator[None]:
    """The local cluster restarted with extra slurm.conf lines, and restored plain afterwards,
    so that other test modules find the cluster they expect."""
    extra = workdir / "slurm.conf.extra"
    extra.write_text(extra_lines)
    try:
        start_local_slurm(extra)
        yield
    finally:
        start_local_slurm(None)
        wait_for(node_healthy, 60, "the node to take jobs again")


@pytest.fixture(scope="session")
def slurm() -> None:
    """The local one-node Slurm cluster, started (idempotently) for tests that claim Slurm behaviour."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm integration tests need root: run them through packaging/dev/test.sh")
    subprocess.run([str(LOCAL_SLURM), "start"], check=True, timeout=300)


def scontrol_show(job_id: int) -> dict[str, str]:
    """`scontrol show job -o` as a dict (values with spaces, such as Comment, come out cut; fine for tests)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True, check=True)
    fields: dict[str, str] = {}
    for token in out.stdout.split():
        key, _, value = token.partition("=")
        fields.setdefault(key, value)
    return fields


def sbatch(script: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> int:
    """Submit a batch script from cwd; the job id."""
    out = subprocess.run(
        ["sbatch", "--parsable", *args, str(script)], cwd=cwd, capture_output=True, text=True, check=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return int(out.stdout.strip().split(";")[0])


@dataclass
class AgentProcess:
    """A real `ajr-agent` process with its own config and state database."""

    workdir: Path
    dry_run: bool = False
    extra_config: str = ""
    poll_interval: float = 0.5
    process: subprocess.Popen[str] | None = None
    submitted: list[int] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.workdir / "ajr.toml"

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    def start(self) -> "AgentProcess":
        # Each agent has a spool of its own unless the test gives one: agents must not take
        # each other's job-end records.
        spool = "" if "spool_dir" in self.extra_config else f'spool_dir = "{self.workdir / "spool"}"\n'
        # Nor each other's cockpit port: only tests of the cockpit open one.
        http = "" if "http_port" in self.extra_config else "http_port = 0\n"
        self.config.write_text(
            f'state_db = "{self.workdir / "ajr.db"}"\npoll_interval = {self.poll_interval}\n'
            f'rules_dirs = ["{self.workdir / "rules.d"}"]\n{spool}{http}'
            f"dry_run = {'true' if self.dry_run else 'false'}\n{self.extra_config}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AJR_", "APS_"))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ajr_agent.surfaces.service", "--config", str(self.config), "--log-level", "DEBUG"],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        wait_for(lambda: "started" in self.log.read_text() or self.process.poll() is not None, 30, "agent start")
        assert self.process.poll() is None, f"agent died at start:\n{self.log.read_text()}"
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ajr_agent.surfaces.cli", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def show(self, job_id: int) -> dict[str, Any] | None:
        done = self.cli("show", str(job_id), "--json")
        return json.loads(done.stdout) if done.returncode == 0 else None

    def job(self, job_id: int) -> dict[str, Any] | None:
        shown = self.show(job_id)
        return shown["job"] if shown and shown.get("managed") else None


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
