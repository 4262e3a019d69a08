"""The local Slurm cluster and a real agent process against it: helpers of the integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tests.conftest import ROOT, wait_for

LOCAL_SLURM = ROOT / "packaging" / "local-slurm" / "local-slurm.sh"
DEMO = ROOT / "packaging" / "demo"


# Another user's jobs are submitted as this account (sbatch --uid, as root): one that every
# Debian system has. Not "nobody": Slurm 26.05 refuses --uid=nobody (slurm_opt.c, arg_set_uid).
OTHER_USER = "daemon"
HEALTHY_NODE_STATES = ("idle", "mixed", "allocated")
# The integration tests' cluster: five nodes on this host, room for a 4-node job and a spare.
NODES = tuple(f"n{i}" for i in range(1, 6))


def start_local_slurm(extra_conf: Path | None) -> None:
    """(Re)start the local cluster of NODES, with extra slurm.conf lines from a file or without any."""
    env = {k: v for k, v in os.environ.items() if k != "AJR_SLURM_EXTRA_CONF"}
    if extra_conf is not None:
        env["AJR_SLURM_EXTRA_CONF"] = str(extra_conf)
    subprocess.run([str(LOCAL_SLURM), "start", "--nodes", str(len(NODES))], env=env, check=True, timeout=300)


def node_healthy() -> bool:
    """Every node of the local cluster takes jobs."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    states = out.stdout.split()
    return out.returncode == 0 and bool(states) and all(s in HEALTHY_NODE_STATES for s in states)


def node_state(node: str) -> str:
    """sinfo's state of one node, e.g. `idle`, `down*`."""
    return subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True,
                          check=True).stdout.split()[0]  # fmt: skip


def fail_node(node: str) -> float:
    """Make a node fail as a powered-off one would (its slurmd and job steps killed); when it did."""
    subprocess.run([str(LOCAL_SLURM), "node-stop", node], check=True, timeout=60)
    return time.time()


def revive_node(node: str) -> None:
    """Bring a failed node back; it takes jobs again when this returns."""
    subprocess.run([str(LOCAL_SLURM), "node-start", node], check=True, timeout=120)


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
    # Where the agent and its CLI run: e.g. ha-slurm.sh's "run N", on another controller host.
    launcher: tuple[str, ...] = ()
    state_db: Path | None = None  # another agent's, shared under failover; its own by default

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
        # The backend under test (packaging/dev/test.sh runs the recovery tests through each).
        backend = os.environ.get("AJR_TEST_SLURM_BACKEND", "")
        backend = f'slurm_backend = "{backend}"\n' if backend and "slurm_backend" not in self.extra_config else ""
        self.config.write_text(
            f'state_db = "{self.state_db or self.workdir / "ajr.db"}"\npoll_interval = {self.poll_interval}\n'
            f'rules_dirs = ["{self.workdir / "rules.d"}"]\n{spool}{http}{backend}'
            f"dry_run = {'true' if self.dry_run else 'false'}\n{self.extra_config}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AJR_", "APS_"))}
        self.process = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "ajr_agent.surfaces.service", "--config", str(self.config),
             "--log-level", "DEBUG"],
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
            [*self.launcher, sys.executable, "-m", "ajr_agent.surfaces.cli", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def show(self, job_id: int) -> dict[str, Any] | None:
        done = self.cli("show", str(job_id), "--json")
        return json.loads(done.stdout) if done.returncode == 0 else None

    def job(self, job_id: int) -> dict[str, Any] | None:
        shown = self.show(job_id)
        return shown["job"] if shown and shown.get("managed") else None
