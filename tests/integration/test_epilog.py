"""The EpilogSlurmctld hand-off inside the real slurmctld: a job that dies without a telling
log line is recovered at once, not at the agent's next poll."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from ajr_agent.adapters.epilog_spool import read_spool
from tests.conftest import ROOT, wait_for
from tests.integration.support import AgentProcess, sbatch, scontrol_show, slurm_reconfigured

pytestmark = pytest.mark.slurm

HOOK = ROOT / "slurm_hooks" / "ajr-epilog"
# Far longer than the test may take: only the hand-off can explain a quick recovery.
SLOW_POLL = 120.0


@pytest.fixture(scope="module")
def epilog_spool(slurm: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local cluster with the hook as EpilogSlurmctld, writing into a spool of this module's own."""
    workdir = tmp_path_factory.mktemp("epilog")
    spool = workdir / "spool"
    spool.mkdir()
    hook = workdir / "ajr-epilog"
    hook.write_text(HOOK.read_text().replace("SPOOL=/var/spool/ajr/epilog", f"SPOOL={spool}"))
    hook.chmod(0o755)
    with slurm_reconfigured(f"EpilogSlurmctld={hook}\n", workdir):
        yield spool


def test_silent_death_is_recovered_within_seconds_of_its_end(
    epilog_spool: Path, agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = agent_factory(extra_config=f'spool_dir = "{epilog_spool}"\n', poll_interval=SLOW_POLL)
    # Let the agent's first poll pass, so the job is new to it when it ends.
    wait_for(lambda: "last_poll_at" in (agent.cli("status", "--json").stdout or ""), 30, "the first poll")
    script = tmp_path / "dies.sh"
    script.write_text("#!/bin/bash\nsleep 4\nexit 7\n")
    job_id = sbatch(script, tmp_path, "-J", "ajr-silent", "--comment", '{"APS": {"max_requeue_times": 1}}')
    agent.submitted.append(job_id)

    job = wait_for(lambda: (j := agent.job(job_id)) and j["requeues_used"] == 1 and j, 60, "the requeue")
    shown = agent.show(job_id)
    assert shown is not None
    hold = next(a for a in shown["actions"] if a["kind"] == "requeue_hold")
    ended = next(e for e in shown["events"] if e["kind"] == "epilog")
    assert "exit 7:0" in ended["text"]
    assert hold["created_at"] - ended["at"] < 10, "the requeue waited for a regular poll"
    assert "job ended FAILED" in next(e["text"] for e in shown["events"] if e["kind"] == "failure")
    wait_for(lambda: scontrol_show(job_id)["Restarts"] == "1", 30, "Slurm's restart count")
    assert job["limit"] == 1
    assert list(epilog_spool.iterdir()) == [] or all(p.name.startswith(".") for p in epilog_spool.iterdir())


def test_a_hostile_job_name_cannot_forge_the_record(epilog_spool: Path, tmp_path: Path) -> None:
    script = tmp_path / "ends.sh"
    script.write_text("#!/bin/bash\nexit 3\n")
    # No agent here: the record stays in the spool to be read as the agent would read it.
    job_id = sbatch(script, tmp_path, "-J", "x\njob_id=77\nrestart_count=99\\nnodes=victim", "--comment",
                    '{"APS": {}}', "--no-requeue")  # fmt: skip
    wait_for(lambda: (epilog_spool / f"{job_id}.0.end").exists(), 60, "the hook's record of the job's end")
    records = [r for r in read_spool(epilog_spool) if r.job_id in (job_id, 77)]
    assert [(r.job_id, r.restart_count, r.exit_code) for r in records] == [(job_id, 0, "3:0")]
    assert records[0].nodes and "victim" not in records[0].nodes
