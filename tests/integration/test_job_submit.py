"""slurm_hooks/job_submit.lua inside the real slurmctld (JobSubmitPlugins=lua).

The plugin is switched on for this module only: the fixture installs the script,
restarts the local cluster with the extra slurm.conf line, and afterwards restarts
it plain and removes the script, so other modules see the cluster they expect.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT, wait_for

from tests.integration.support import scontrol_show, slurm_reconfigured

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "slurm_hooks" / "job_submit.lua"
# job_submit/lua reads job_submit.lua from the directory of slurm.conf.
INSTALLED = Path("/etc/slurm/job_submit.lua")
PLUGIN = Path("/usr/lib/x86_64-linux-gnu/slurm-wlm/job_submit_lua.so")


def job_submit_plugins() -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "JobSubmitPlugins":
            return value.strip()
    return ""


@pytest.fixture(scope="module")
def lua_cluster(slurm: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """The local cluster with job_submit.lua active; yields a list to record submitted job ids in."""
    if not PLUGIN.exists():
        pytest.fail(f"{PLUGIN} is missing: install Debian's slurm-wlm-basic-plugins")
    submitted: list[int] = []
    try:
        shutil.copyfile(SCRIPT, INSTALLED)
        with slurm_reconfigured("JobSubmitPlugins=lua\n", tmp_path_factory.mktemp("job_submit")):
            assert job_submit_plugins() == "lua", "slurmctld did not pick up JobSubmitPlugins=lua"
            yield submitted
            if submitted:
                subprocess.run(["scancel", *map(str, submitted)], check=False)
    finally:
        INSTALLED.unlink(missing_ok=True)
    wait_for(lambda: job_submit_plugins() in ("", "(null)"), 30, "slurmctld without the job_submit plugin")


def sbatch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def submitted_job(done: subprocess.CompletedProcess[str], submitted: list[int]) -> int:
    assert done.returncode == 0, f"sbatch refused the job:\n{done.stderr}"
    job_id = int(done.stdout.strip().split(";")[0])
    submitted.append(job_id)
    return job_id


def comment_of(job_id: int) -> str:
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%k"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_unknown_mode_is_refused_with_the_reason(lua_cluster: list[int], tmp_path: Path) -> None:
    done = sbatch(tmp_path, "--comment", '{"APS": {"auto_resume_mode": "bogus"}}', "--wrap", "true")
    assert done.returncode != 0, f"sbatch accepted a bogus mode: {done.stdout}"
    assert 'AJR: invalid APS spec in --comment: APS.auto_resume_mode must be "requeue" or "singleton_dependency", ' \
        'got "bogus". Example: {"APS": ' in done.stderr, done.stderr  # fmt: skip


def test_malformed_json_is_refused_with_the_position(lua_cluster: list[int], tmp_path: Path) -> None:
    done = sbatch(tmp_path, "--comment", '{"APS": {"max_requeue_times": 3.5}', "--wrap", "true")
    assert done.returncode != 0, f"sbatch accepted broken JSON: {done.stdout}"
    assert "AJR: --comment is not valid JSON near position 35: expected ',' or '}' but found the end of the comment" \
        in done.stderr, done.stderr  # fmt: skip


def test_wrong_type_is_refused(lua_cluster: list[int], tmp_path: Path) -> None:
    done = sbatch(tmp_path, "--comment", '{"APS": {"max_requeue_times": "3"}}', "--wrap", "true")
    assert done.returncode != 0, f"sbatch accepted a string count: {done.stdout}"
    assert 'APS.max_requeue_times must be a non-negative integer such as 3, got "3"' in done.stderr, done.stderr


def test_valid_spec_is_accepted_and_made_requeueable(lua_cluster: list[int], tmp_path: Path) -> None:
    spec = '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 2}}'
    # --no-requeue: the Requeue=1 below can only come from the hook, not from JobRequeue=1.
    job_id = submitted_job(sbatch(tmp_path, "--hold", "--no-requeue", "--comment", spec, "--wrap", "true"), lua_cluster)
    assert scontrol_show(job_id)["Requeue"] == "1"
    assert comment_of(job_id) == spec


def test_job_without_comment_is_accepted_untouched(lua_cluster: list[int], tmp_path: Path) -> None:
    job_id = submitted_job(sbatch(tmp_path, "--hold", "--no-requeue", "--wrap", "true"), lua_cluster)
    assert scontrol_show(job_id)["Requeue"] == "0"


def test_singleton_without_dependency_is_accepted_with_a_warning(lua_cluster: list[int], tmp_path: Path) -> None:
    done = sbatch(tmp_path, "--hold", "--comment", '{"APS": {"auto_resume_mode": "singleton_dependency"}}',
                  "--wrap", "true")  # fmt: skip
    submitted_job(done, lua_cluster)
    assert 'AJR: warning: auto_resume_mode "singleton_dependency" needs --dependency=singleton' in done.stderr


def test_comment_update_is_checked_too(lua_cluster: list[int], tmp_path: Path) -> None:
    spec = '{"APS": {}}'
    job_id = submitted_job(sbatch(tmp_path, "--hold", "--comment", spec, "--wrap", "true"), lua_cluster)

    broken = subprocess.run(["scontrol", "update", f"JobId={job_id}", 'Comment={"APS": {"auto_resume_mode": 1}}'],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert broken.returncode != 0, "scontrol update let a broken spec in"
    assert comment_of(job_id) == spec

    fixed = '{"APS": {"max_requeue_times": 4}}'
    done = subprocess.run(["scontrol", "update", f"JobId={job_id}", f"Comment={fixed}"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert comment_of(job_id) == fixed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('{"APS": {"max_requeue_times": 123456789012345678901}}',
         "APS.max_requeue_times must be at most 10000, got 123456789012345678901"),
        ('{"APS": {"heartbeat_timeout": 2592001}}',
         "APS.heartbeat_timeout must be at most 2592000 seconds (30 days), got 2592001"),
        ('{"APS": {}, "x": "%s"}' % ("y" * 16400), "AJR reads at most 16384 bytes of a comment that mentions APS"),
    ],
    ids=["21-digit max_requeue_times", "heartbeat_timeout over 30 days", "a comment over 16 KiB"],
)
def test_values_beyond_the_agents_bounds_are_refused_naming_the_bound(
    lua_cluster: list[int], tmp_path: Path, spec: str, message: str
) -> None:
    done = sbatch(tmp_path, "--hold", "--comment", spec, "--wrap", "true")
    if done.returncode == 0:
        lua_cluster.append(int(done.stdout.strip().split(";")[0]))
    assert done.returncode != 0, f"sbatch accepted {spec[:80]}: {done.stdout}"
    assert message in done.stderr, done.stderr


def test_control_characters_in_a_refused_value_reach_the_user_escaped(lua_cluster: list[int], tmp_path: Path) -> None:
    done = sbatch(tmp_path, "--comment", '{"APS": {"auto_resume_mode": "x\\nFAKE\\u001b[2J"}}', "--wrap", "true")
    assert done.returncode != 0, f"sbatch accepted a bogus mode: {done.stdout}"
    assert 'got "x\\u000AFAKE\\u001B[2J"' in done.stderr, done.stderr
    assert "\x1b" not in done.stderr
