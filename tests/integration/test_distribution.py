"""The package as a site gets it: `python -m build` makes an sdist and a wheel that carry the
rules, the Slurm hooks and the packaging files; the wheel, installed into a clean venv, gives
working `ajr` and `ajr-agent` commands that find those files without the source checkout.

The build runs on a copy of the checkout, so the checkout is left as it was, and every
command runs from a directory outside both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SHIPPED = [
    "rules/00-defaults.toml",
    "rules/10-gpu.toml",
    "rules/90-throughput.toml",
    "rules/README.md",
    "slurm_hooks/job_submit.lua",
    "slurm_hooks/ajr-epilog",
    "slurm_hooks/README.md",
    "packaging/etc/ajr.toml",
    "packaging/etc/rules.d/50-site.toml.example",
    "packaging/systemd/ajr-agent.service",
    "packaging/slurm/slurm.conf.ajr",
]
# Not needed to build: tests and benchmarks, and what a checkout accumulates.
LEFT_BEHIND = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".benchmarks", "tests", "bench", "*.db", "*.db-wal", "*.db-shm")  # fmt: skip


def run(*command: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Nothing of this test run may leak in: no PYTHONPATH pointing at the checkout, no AJR_* settings.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("AJR_", "APS_"))}
    env["AJR_CONFIG"] = str(cwd / "ajr.toml")
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel of a copy of the checkout."""
    work = tmp_path_factory.mktemp("dist")
    try:
        import build  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "build"], check=True, timeout=300)
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=LEFT_BEHIND)
    out = work / "out"
    # The default of `build`: the sdist first, then the wheel from the unpacked sdist, which
    # proves that the sdist carries everything the wheel needs.
    run(sys.executable, "-m", "build", "--outdir", out, source, cwd=work, timeout=300)
    return {"sdist": next(out.glob("ajr-*.tar.gz")), "wheel": next(out.glob("ajr-*.whl"))}


@pytest.fixture(scope="module")
def installed(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with the wheel installed (its dependencies from the package index); its directory."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home / "venv", with_pip=True)
    (home / "ajr.toml").write_text("")
    run(home / "venv" / "bin" / "python", "-m", "pip", "install", "-q", built["wheel"], cwd=home, timeout=300)
    return home


def test_the_sdist_carries_the_rules_hooks_and_packaging_files(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    missing = [path for path in SHIPPED if path not in names]
    assert not missing, f"the sdist lacks {missing}"


def test_the_wheel_carries_them_under_share_ajr(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
    prefix = built["wheel"].name.split("-py3")[0] + ".data/data/share/ajr/"
    missing = [path for path in SHIPPED if prefix + path not in names]
    assert not missing, f"the wheel lacks {missing} (under {prefix})"
    # Every module of every layer, and the cockpit's files: a subpackage left out of
    # setup.cfg would install an agent that fails at its first import.
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "ajr_agent").rglob("*") if p.is_file()
              and p.suffix in (".py", ".html", ".js", ".css", ".svg") and "__pycache__" not in p.parts}  # fmt: skip
    assert "ajr_agent/surfaces/static/index.html" in source
    assert not source - names, f"the wheel lacks {sorted(source - names)}"


def test_the_installed_commands_work_from_the_wheel(installed: Path) -> None:
    bin_dir = installed / "venv" / "bin"
    where = run(bin_dir / "python", "-c", "import ajr_agent; print(ajr_agent.__file__)", cwd=installed).stdout
    assert where.startswith(str(installed / "venv")), f"ajr_agent came from {where}, not from the venv"
    usage = run(bin_dir / "ajr", "--help", cwd=installed).stdout
    assert "install" in usage and "doctor" in usage and "rules" in usage
    assert "Run the AJR agent" in run(bin_dir / "ajr-agent", "--help", cwd=installed).stdout
    checked = run(bin_dir / "ajr", "rules", "check", cwd=installed).stdout
    assert checked.startswith("ok: ") and f"from {installed / 'venv' / 'share' / 'ajr' / 'rules'}" in checked


def test_the_installer_finds_its_files_in_the_wheel(installed: Path) -> None:
    root = installed / "root"
    report = run(installed / "venv" / "bin" / "ajr", "install", "--prefix", root, cwd=installed).stdout
    assert f"created      {root / 'etc/systemd/system/ajr-agent.service'}" in report
    unit = (root / "etc/systemd/system/ajr-agent.service").read_text()
    assert f"ExecStart={installed / 'venv' / 'bin' / 'ajr-agent'} --config {root / 'etc/ajr/ajr.toml'}" in unit
    assert (root / "usr/local/lib/ajr/ajr-epilog").read_text().count(f"SPOOL={root / 'var/spool/ajr/epilog'}") == 1
    assert (root / "etc/ajr/rules.d/50-site.toml.example").is_file()
