"""The in-memory Slurm against the real local one: the same requests, the same states, the same refusals.

MemorySlurm claims Slurm's semantics and Slurm's own words for what AJR asks; this plays
one job's recovery on both and compares what each shows and answers at every step, so
that a Slurm upgrade that changes them shows here, not in a test that trusts the fake.
"""

from __future__ import annotations

import subprocess
from typing import Callable

import pytest

from ajr_agent.adapters.slurm.commands import CommandGateway
from ajr_agent.adapters.slurm.errors import SlurmError
from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.domain.jobs import JobSnapshot
from tests.conftest import wait_for
from tests.integration.support import fail_node

pytestmark = pytest.mark.slurm


def answer(request: Callable[[], object]) -> str:
    """What a request answered: "ok", or Slurm's words when it refused."""
    try:
        request()
    except SlurmError as exc:
        return exc.reason
    return "ok"


def shown(job: JobSnapshot | None) -> tuple[object, ...]:
    """What the comparison looks at: what AJR's policy reads of a job, times apart."""
    assert job is not None
    return job.state, job.reason, job.restart_count, job.nodes, job.end_time is None


def test_one_recovery_shows_and_answers_the_same_on_both(slurm: None) -> None:
    real = CommandGateway(timeout=20)
    job_id = int(subprocess.run(["sbatch", "--parsable", "-J", "ajrtest-memory", "-o", "/dev/null", "--wrap",
                                 "sleep 300"], capture_output=True, text=True, check=True).stdout.split(";")[0])  # fmt: skip
    try:
        running = wait_for(lambda: (j := real.job(job_id)) and j.running and j, 60, f"job {job_id} to run")
        memory = MemorySlurm(jobs={job_id: running}, partitions=real.partition_nodes(),
                             slurm_version=real.version())  # fmt: skip
        both = (real, memory)

        def step(request: Callable[[CommandGateway | MemorySlurm], object]) -> None:
            answers = [answer(lambda: request(gateway)) for gateway in both]
            assert answers[0] == answers[1], f"Slurm answered {answers[0]!r}, MemorySlurm {answers[1]!r}"

        def same_job() -> None:
            seen = wait_for(lambda: (j := real.job(job_id)) and j.state != "COMPLETING" and j, 30,
                            f"job {job_id} to stop completing")  # fmt: skip
            if seen.reason == "BeginTime":  # slurmctld's scheduler has passed since the request
                memory.schedule()
            assert shown(seen) == shown(memory.jobs[job_id])

        step(lambda g: g.update(job_id, StartTime="now+2"))  # running: refused
        step(lambda g: g.release(job_id))  # running: no error, no change
        step(lambda g: g.requeue_hold(job_id))
        same_job()
        step(lambda g: g.requeue_hold(job_id))  # pending: refused
        step(lambda g: g.update(job_id, ExcNodeList="ajr-no-such-node"))
        step(lambda g: g.update(job_id, StartTime="soon"))
        step(lambda g: g.release(job_id))
        same_job()
        step(lambda g: g.update(job_id, StartTime="now+600", AdminComment="ajr: memory contract test"))
        same_job()
        step(lambda g: g.cancel(job_id))
        same_job()
        step(lambda g: g.release(job_id))  # over: refused
        step(lambda g: g.update(job_id, StartTime="now"))
        step(lambda g: g.cancel(job_id))  # over: scancel answers 0
        step(lambda g: g.requeue(999_999_999))
        step(lambda g: g.drain("ajr-no-such-node", "ajr: memory contract test"))
    finally:
        subprocess.run(["scancel", str(job_id)], check=False)


def test_a_job_that_may_not_be_requeued_is_refused_alike(slurm: None) -> None:
    real = CommandGateway(timeout=20)
    job_id = int(subprocess.run(["sbatch", "--parsable", "--no-requeue", "-J", "ajrtest-memory", "-o", "/dev/null",
                                 "--wrap", "exit 3"], capture_output=True, text=True, check=True).stdout.split(";")[0])  # fmt: skip
    try:
        failed = wait_for(lambda: (j := real.job(job_id)) and j.ended and j, 60, f"job {job_id} to fail")
        memory = MemorySlurm(jobs={job_id: failed}, partitions=real.partition_nodes())
        for request in (lambda g: g.requeue(job_id), lambda g: g.requeue_hold(job_id),
                        lambda g: g.update(job_id, AdminComment="ajr: left failed"), lambda g: g.cancel(job_id)):  # fmt: skip
            answers = [answer(lambda: request(gateway)) for gateway in (real, memory)]
            assert answers[0] == answers[1], f"Slurm answered {answers[0]!r}, MemorySlurm {answers[1]!r}"
        assert shown(real.job(job_id)) == shown(memory.jobs[job_id]) == ("FAILED", "NonZeroExitCode", 0, failed.nodes,
                                                                         False)  # fmt: skip
    finally:
        subprocess.run(["scancel", str(job_id)], check=False)


def test_a_lost_node_requeues_or_ends_its_jobs_and_shows_alike(slurm: None, failing_nodes: list[str]) -> None:
    real = CommandGateway(timeout=20)
    submitted = []
    for flag in ("--requeue", "--no-requeue"):
        done = subprocess.run(["sbatch", "--parsable", flag, "-N", "2", "-w", "n[4-5]", "-J", "ajrtest-memory", "-o",
                               "/dev/null", "--wrap", "sleep 300"], capture_output=True, text=True, check=True)  # fmt: skip
        submitted.append(int(done.stdout.split(";")[0]))
    try:
        jobs = {job_id: wait_for(lambda: (j := real.job(job_id)) and j.running and j, 60, f"job {job_id} to run")
                for job_id in submitted}  # fmt: skip
        memory = MemorySlurm(jobs=dict(jobs), partitions=real.partition_nodes(), slurm_version=real.version())
        failing_nodes.append("n5")
        fail_node("n5")
        memory.lose("n5")
        for job_id in submitted:
            seen = wait_for(lambda: (j := real.job(job_id)) and not j.running and j.state != "COMPLETING" and j, 90,
                            f"Slurm to requeue or end job {job_id}")  # fmt: skip
            assert shown(seen) == shown(memory.jobs[job_id])
        [real_state], [memory_state] = real.node_states(["n5"]), memory.node_states(["n5"])
        assert (real_state.state, real_state.responding, real_state.reason, real_state.lost) == (
            memory_state.state, memory_state.responding, memory_state.reason, memory_state.lost)  # fmt: skip
        healthy = [(s.name, s.state, s.lost) for s in real.node_states(["n1"])]
        assert healthy == [(s.name, s.state, s.lost) for s in memory.node_states(["n1"])] == [("n1", "idle", False)]
    finally:
        subprocess.run(["scancel", *map(str, submitted)], check=False)
