"""slurm_hooks/job_submit.lua under the Lua interpreters it must run on.

slurmctld on Debian links Lua 5.1; newer Slurm builds use 5.3/5.4. The Lua-side
tests live in tests/lua/ and print one line per case and a RESULT line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "slurm_hooks" / "job_submit.lua"
LUA_TESTS = ROOT / "tests" / "lua" / "test_job_submit.lua"
INTERPRETERS = ["lua5.1", "lua5.4"]

# Fewer cases than this means the Lua file stopped early without saying so.
MIN_CASES = 90


def interpreter(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install {name}); the job_submit.lua tests need it")
    return path


@pytest.mark.parametrize("lua", INTERPRETERS)
def test_script_compiles(lua: str) -> None:
    done = subprocess.run(
        [interpreter(lua), "-e", f"assert(loadfile([==[{SCRIPT}]==]))"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, f"{lua} cannot load {SCRIPT}; slurmctld would refuse to start:\n{done.stderr}"


@pytest.mark.parametrize("lua", INTERPRETERS)
def test_lua_unit_tests_pass(lua: str) -> None:
    done = subprocess.run(
        [interpreter(lua), str(LUA_TESTS), str(SCRIPT)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    output = f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    result = re.search(r"^RESULT passed=(\d+) failed=(\d+)", done.stdout, re.MULTILINE)
    assert result, f"{lua}: the Lua tests did not finish\n{output}"
    failures = [line for line in done.stdout.splitlines() if line.startswith("not ok")]
    assert not failures and int(result[2]) == 0, f"{lua}: failing cases:\n" + "\n".join(failures) + f"\n{output}"
    assert done.returncode == 0, f"{lua}: exit code {done.returncode}\n{output}"
    assert int(result[1]) >= MIN_CASES, f"{lua}: only {result[1]} cases ran\n{output}"
