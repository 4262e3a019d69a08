"""The EpilogSlurmctld hook (the real script, run as slurmctld would) and the agent's reading of its records."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ajr_agent.adapters.epilog_spool import read_spool

HOOK = Path(__file__).resolve().parents[2] / "slurm_hooks" / "ajr-epilog"

SLURM_ENV = {
    "SLURM_JOB_ID": "42", "SLURM_JOB_RESTART_COUNT": "1", "SLURM_JOB_EXIT_CODE2": "3:0",
    "SLURM_JOB_DERIVED_EC": "0", "SLURM_JOB_NODELIST": "gpu-[1-2]", "SLURM_JOB_USER": "alice",
    "SLURM_JOB_NAME": "llama", "SLURM_JOB_COMMENT": '{"APS": {"auto_resume_mode": "requeue"}}',
}  # fmt: skip


def hook_for(spool: Path, tmp_path: Path) -> Path:
    """The shipped hook with its spool directory pointed at `spool`, as the installer writes it."""
    copy = tmp_path / "ajr-epilog"
    copy.write_text(HOOK.read_text().replace("SPOOL=/var/spool/ajr/epilog", f"SPOOL={spool}"))
    copy.chmod(0o755)
    return copy


def run_hook(hook: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # slurmscriptd gives the hook no PATH of its own; only the job's variables.
    return subprocess.run([str(hook)], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=10)  # fmt: skip


def test_hook_writes_one_record_the_agent_reads(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    done = run_hook(hook_for(spool, tmp_path), **SLURM_ENV)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert [p.name for p in spool.iterdir()] == ["42.1.end"]
    [record] = read_spool(spool)
    assert (record.job_id, record.restart_count, record.exit_code, record.nodes) == (42, 1, "3:0", "gpu-[1-2]")
    assert list(spool.iterdir()) == []


def test_hook_ignores_jobs_without_aps(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for comment in ("nightly", None):
        env = {k: v for k, v in SLURM_ENV.items() if k != "SLURM_JOB_COMMENT"}
        if comment:
            env["SLURM_JOB_COMMENT"] = comment
        assert run_hook(hook_for(spool, tmp_path), **env).returncode == 0
    assert list(spool.iterdir()) == []


@pytest.mark.parametrize("problem", ["missing", "not a directory"])
def test_hook_never_fails(tmp_path: Path, problem: str) -> None:
    spool = tmp_path / "spool"
    if problem == "not a directory":
        spool.write_text("")
    assert run_hook(hook_for(spool, tmp_path), **SLURM_ENV).returncode == 0
    assert not spool.is_dir()


def test_hook_survives_odd_values(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {**SLURM_ENV, "SLURM_JOB_NAME": "a b;$(rm -rf /)`x`", "SLURM_JOB_COMMENT": 'APS "quoted" %s\\n'}
    assert run_hook(hook_for(spool, tmp_path), **env).returncode == 0
    assert read_spool(spool)[0].job_id == 42


def test_missing_spool_reads_as_nothing(tmp_path: Path) -> None:
    assert read_spool(tmp_path / "absent") == []


def test_malformed_record_is_set_aside_and_the_rest_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "7.0.end").write_text("job_id=seven\n")
    (tmp_path / "8.2.end").write_text("job_id=8\nrestart_count=2\nexit_code=0:9\nnodes=n1\n")
    (tmp_path / ".9.0.123").write_text("job_id=9\n")  # still being written by the hook
    records = read_spool(tmp_path)
    assert [(r.job_id, r.restart_count, r.exit_code) for r in records] == [(8, 2, "0:9")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".9.0.123", "7.0.end.bad"]
    assert "7.0.end is malformed" in caplog.text


# ---- the job's own text is hostile -----------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        {"SLURM_JOB_NAME": "x\njob_id=77"},
        {"SLURM_JOB_NAME": "\nrestart_count=99\nexit_code=0:0\nnodes=victim-1"},
        {"SLURM_JOB_NAME": "x\\njob_id=77\\nrestart_count=99"},  # dash's echo turns \n into a line break
        {"SLURM_JOB_USER": "alice\njob_id=77"},
        {"SLURM_JOB_COMMENT": '{"APS": {}}\njob_id=77\nrestart_count=99'},
        {"SLURM_JOB_NAME": "-n", "SLURM_JOB_USER": "-e"},
    ],
    ids=["name forges job_id", "name forges every key", "escaped newline in the name", "user forges job_id",
         "comment forges keys", "names that look like echo options"],
)
def test_no_user_text_can_create_or_override_a_key(tmp_path: Path, hostile: dict[str, str]) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    assert run_hook(hook_for(spool, tmp_path), **{**SLURM_ENV, **hostile}).returncode == 0
    assert [p.name for p in spool.iterdir()] == ["42.1.end"]
    [record] = read_spool(spool)
    assert (record.job_id, record.restart_count, record.exit_code, record.nodes) == (42, 1, "3:0", "gpu-[1-2]")
    assert list(spool.iterdir()) == [], "the record was set aside as malformed"


@pytest.mark.parametrize(
    "hostile",
    [
        {"SLURM_JOB_ID": "../../escaped"},
        {"SLURM_JOB_ID": "/tmp/escaped"},
        {"SLURM_JOB_ID": ""},
        {"SLURM_JOB_RESTART_COUNT": "1/../../../escaped"},
        {"SLURM_JOB_RESTART_COUNT": "1 2"},
    ],
)
def test_the_hook_writes_nowhere_but_its_spool_and_only_for_a_numeric_job(tmp_path: Path, hostile: dict[str, str]) -> None:
    spool = tmp_path / "a" / "spool"
    spool.mkdir(parents=True)
    hook = hook_for(spool, tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    assert run_hook(hook, **{**SLURM_ENV, **hostile}).returncode == 0
    assert {p for p in tmp_path.rglob("*")} == before


def test_values_that_are_not_slurms_shape_are_left_out(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {**SLURM_ENV, "SLURM_JOB_EXIT_CODE2": "3:0\nfoo", "SLURM_JOB_NODELIST": "gpu-1 $(reboot)"}
    assert run_hook(hook_for(spool, tmp_path), **env).returncode == 0
    [record] = read_spool(spool)
    assert (record.job_id, record.exit_code, record.nodes) == (42, "", "")


def test_the_record_holds_only_what_the_agent_reads(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    run_hook(hook_for(spool, tmp_path), **SLURM_ENV)
    keys = [line.partition("=")[0] for line in (spool / "42.1.end").read_text().splitlines()]
    assert keys == ["job_id", "restart_count", "exit_code", "nodes"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # What the hook before this one wrote for a job named "x\njob_id=77\nrestart_count=99": the first wins.
        ("job_id=42\nrestart_count=1\nexit_code=3:0\nnodes=n1\nname=x\njob_id=77\nrestart_count=99\n",
         (42, 1, "3:0", "n1")),
        ("job_id=42\nrestart_count=1\nexit_code=3:0\nnodes=n1\nuser=a\nname=x\nnodes=victim\nexit_code=0:0\n",
         (42, 1, "3:0", "n1")),
        ("job_id=42\nrestart_count=1\nexit_code=3:0 rm\nnodes=n1;reboot\n", (42, 1, "", "")),
        ("job_id=42\nrestart_count=1\nsurprise=1\n", (42, 1, "", "")),
    ],
    ids=["first job_id and restart_count win", "first nodes and exit_code win", "odd values dropped",
         "unknown keys ignored"],
)
def test_the_parser_takes_the_first_of_each_known_key(tmp_path: Path, text: str, expected: tuple) -> None:
    (tmp_path / "42.1.end").write_text(text)
    [record] = read_spool(tmp_path)
    assert (record.job_id, record.restart_count, record.exit_code, record.nodes) == expected


def test_a_record_whose_name_disagrees_with_its_content_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "42.1.end").write_text("job_id=77\nrestart_count=1\n")
    assert read_spool(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["42.1.end.bad"]
