"""Hostile text in the queue, on the real local Slurm: what unprivileged users type is data, never structure.

An attacker's jobs carry, in their names, working directories, output paths and
comments, line breaks followed by queue records forged in the format AJR once read
(fields ended by \\x1f) and in today's with a guessed token, all saying that a victim's
running managed job ended FAILED; another job's name reads like an ExcNodeList. All are
held but one, which runs: squeue lists it after the victim's job, so that a parser where
the last record of a job wins takes its forgery.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ajr_agent.adapters.slurm import SQUEUE_FIELDS, CommandGateway, new_token
from tests.conftest import wait_for
from tests.integration.support import AgentProcess
from tests.conftest import LINE_BREAKS

pytestmark = pytest.mark.slurm

VICTIM, ATTACKER = "ajrtest-victim", "ajrtest-mallory"
MANAGED = '{"APS": {}}'
EXCLUSION_NAME = "x ExcNodeList=n[0-99999999]"


@dataclass
class Queue:
    """The module's jobs: the victim's running managed job and the attacker's held ones, by id."""

    workdir: Path
    victim: int
    victim_uid: int
    attacker: dict[int, dict[str, str]]  # job id -> the fields the attacker set, as submitted, and its State


def ensure_user(name: str) -> int:
    """An unprivileged system user without a home, created when missing; its uid."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        # Another test run may create it at the same moment: its failure is fine if the user exists after.
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, check=False)  # fmt: skip
        return pwd.getpwnam(name).pw_uid


def sbatch_as(user: str, cwd: Path, *args: str) -> int:
    """Submit a job as `user` (through munge, like any user's sbatch); its id."""
    done = subprocess.run(["runuser", "-u", user, "--", "sbatch", "--parsable", *args], cwd=cwd,
                          capture_output=True, text=True, check=False, errors="surrogateescape")  # fmt: skip
    assert done.returncode == 0, f"sbatch as {user} failed: {done.stderr}"
    return int(done.stdout.strip().split(";")[0])


def as_read(submitted: str) -> str:
    """A value as AJR reads it back: the raw bytes it was submitted as, those that are not UTF-8 as U+FFFD."""
    return submitted.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def state(job_id: int) -> str:
    done = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
    return done.stdout.strip()


def forged(victim: int, uid: int, separator: str) -> str:
    """A record of the victim's job ending FAILED, each field ended by `separator`."""
    values = {
        "JobID": str(victim), "State": "FAILED", "UserId": str(uid), "UserName": VICTIM, "RestartCnt": "0",
        "StartTime": "2026-01-01T00:00:00", "EndTime": "2026-01-01T00:01:00", "BatchFlag": "1", "Requeue": "1",
        "NodeList": "n1", "Reason": "NonZeroExitCode", "Partition": "defq", "NumTasks": "1", "WorkDir": "w",
        "STDOUT": "o", "Name": "victim-train", "Comment": MANAGED,
    }  # fmt: skip
    return "".join(values[field] + separator for field in SQUEUE_FIELDS)


@pytest.fixture(scope="module")
def queue(slurm: None) -> Iterator[Queue]:
    """The victim's job running and the attacker's hostile jobs held; all cancelled afterwards."""
    victim_uid = ensure_user(VICTIM)
    ensure_user(ATTACKER)
    # Under /tmp, not pytest's tmp_path: its parents are root's alone, and the users' jobs start here.
    workdir = Path(tempfile.mkdtemp(prefix="ajr-hostile-", dir="/tmp"))
    workdir.chmod(0o1777)
    submitted: list[int] = []
    try:
        victim = sbatch_as(VICTIM, workdir, "-J", "victim-train", "--comment", MANAGED, "-o", f"{workdir}/victim.out",
                           "--wrap", "sleep 600")  # fmt: skip
        submitted.append(victim)
        wait_for(lambda: state(victim) == "RUNNING", 120, "the victim's job to run")
        guessed = new_token()  # well formed, but not the one of the read
        attacks: list[dict[str, str]] = [{"Name": f"r\n{forged(victim, victim_uid, chr(0x1f))}", "State": "RUNNING"}]
        for brk in LINE_BREAKS:
            attacks.append({"Name": f"x{brk}{forged(victim, victim_uid, chr(0x1f))}{brk}"})
            attacks.append({"Name": f"y{brk}{forged(victim, victim_uid, guessed)}{brk}"})
        # Bytes that are not UTF-8 (surrogate-escaped here, sent as the raw byte), then a forgery.
        attacks.append({"Name": "z\udcff\n" + forged(victim, victim_uid, "\x1f")})
        attacks.append({"WorkDir": f"{workdir}/w\n{forged(victim, victim_uid, chr(0x1f))}"})
        attacks.append({"STDOUT": f"{workdir}/o\n{forged(victim, victim_uid, chr(0x1f))}"})
        attacks.append({"Comment": "note\n" + forged(victim, victim_uid, "\x1f").replace("APS", "aps")})
        attacks.append({"Name": ("n\n" * 512)[:1024]})  # Slurm's longest name
        attacks.append({"Name": EXCLUSION_NAME})
        attacker: dict[int, dict[str, str]] = {}
        for fields in attacks:
            fields.setdefault("State", "PENDING")
            args = ["-o", fields.get("STDOUT", "/dev/null"), "-J", fields.get("Name", "quiet")]
            args += ["-D", fields["WorkDir"]] if "WorkDir" in fields else []
            args += ["--comment", fields["Comment"]] if "Comment" in fields else []
            args += ["--wrap", "sleep 600"] if fields["State"] == "RUNNING" else ["--hold", "--wrap", "true"]
            job_id = sbatch_as(ATTACKER, workdir, *args)
            submitted.append(job_id)
            attacker[job_id] = fields
        running = [job_id for job_id, fields in attacker.items() if fields["State"] == "RUNNING"]
        wait_for(lambda: all(state(j) == "RUNNING" for j in running), 120, "the attacker's running job")
        yield Queue(workdir, victim, victim_uid, attacker)
    finally:
        if submitted:
            subprocess.run(["scancel", *map(str, submitted)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def test_forged_records_in_names_paths_and_comments_stay_data(queue: Queue) -> None:
    gateway = CommandGateway(timeout=30)
    jobs = {job.job_id: job for job in gateway.list_jobs()}

    victim = jobs[queue.victim]
    assert (victim.state, victim.user, victim.user_id) == ("RUNNING", VICTIM, queue.victim_uid)
    assert (victim.name, victim.comment, victim.work_dir) == ("victim-train", MANAGED, str(queue.workdir))
    assert victim.stdout == f"{queue.workdir}/victim.out" and victim.nodes and victim.restart_count == 0
    for job_id, fields in queue.attacker.items():
        job = jobs[job_id]
        assert (job.user, job.state) == (ATTACKER, fields["State"])
        assert job.reason == ("JobHeldUser" if job.state == "PENDING" else "None")
        assert job.name == as_read(fields.get("Name", "quiet"))
        assert job.work_dir == as_read(fields.get("WorkDir", str(queue.workdir)))
        assert job.stdout == as_read(fields.get("STDOUT", "/dev/null"))
        assert job.comment == as_read(fields.get("Comment", ""))
    # The one-job read the CLI uses is the same parser.
    for job_id in list(queue.attacker)[:3] + [queue.victim]:
        assert gateway.job(job_id) == jobs[job_id]


def test_agent_takes_no_forged_record_for_the_victims_job(
    queue: Queue, agent_factory: Callable[..., AgentProcess]
) -> None:
    """Dry run, so that even a fooled agent changes nothing on the shared cluster."""
    agent = agent_factory(dry_run=True)
    wait_for(lambda: agent.job(queue.victim), 30, "the agent to manage the victim's job")
    polled_from = time.monotonic()
    time.sleep(3)  # six polls
    job = agent.job(queue.victim)
    assert job is not None and job["requeues_used"] == 0 and job["attempt"] == 0
    shown = agent.show(queue.victim)
    assert shown is not None and not [a for a in shown["actions"] if a["kind"] != "annotate"]
    assert "cannot read the Slurm queue" not in agent.log.read_text()
    assert time.monotonic() - polled_from >= 3 and state(queue.victim) == "RUNNING"


def test_exclude_nodes_reads_slurms_exclusions_and_keeps_the_users_own(queue: Queue) -> None:
    gateway = CommandGateway(timeout=30)
    nodes = sorted({node for members in gateway.partition_nodes().values() for node in members})
    assert nodes, "sinfo lists no node"
    own, ajrs = nodes[0], nodes[-1]  # the same node on a one-node cluster
    plain = next(j for j, fields in queue.attacker.items() if fields.get("Name") == EXCLUSION_NAME)
    excluding = sbatch_as(ATTACKER, queue.workdir, "--hold", "-o", "/dev/null", "-J", EXCLUSION_NAME,
                          "--exclude", own, "--wrap", "true")  # fmt: skip
    try:
        for job_id, before in ((plain, set()), (excluding, {own})):
            assert excluded(job_id) == before
            started = time.monotonic()
            gateway.exclude_nodes(job_id, [ajrs])
            assert time.monotonic() - started < 10
            assert excluded(job_id) == before | {ajrs}
            assert gateway.job(job_id).name == EXCLUSION_NAME  # type: ignore[union-attr]
    finally:
        subprocess.run(["scancel", str(excluding)], check=False)


def excluded(job_id: int) -> set[str]:
    """The job's ExcNodeList as Slurm holds it, expanded by Slurm itself."""
    shown = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%x"], capture_output=True, text=True,
                           check=True).stdout.strip()  # fmt: skip
    if not shown or shown == "(null)":
        return set()
    return set(subprocess.run(["scontrol", "show", "hostnames", shown], capture_output=True, text=True,
                              check=True).stdout.split())  # fmt: skip
