"""The package's layers import only downwards, so the data flows one way: Slurm and logs in,
decisions in the middle, actions and views out. A new import against the flow fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ajr_agent"

# Each layer and the layers it may import besides itself. domain is plain data and pure
# functions; detect reads lines into events; adapters talk to Slurm, files and SQLite;
# views answer questions from the store; runtime runs the loop; surfaces face people and
# other programs; ops installs and checks a host (the cli runs it).
MAY_IMPORT = {
    "domain": set(),
    "detect": {"domain"},
    "adapters": {"domain"},
    "views": {"domain", "adapters", "detect"},
    "runtime": {"domain", "detect", "adapters"},
    "surfaces": {"domain", "detect", "adapters", "views", "runtime", "ops"},
    "ops": {"domain", "detect", "adapters"},
}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def _imported_layers(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; the layers are checked on absolute ones")
            names = [node.module or ""]
            if node.module == "ajr_agent":
                names = [f"ajr_agent.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ajr_agent" and len(parts) > 1 and parts[1] in MAY_IMPORT:
                found.add(parts[1])
    return found


def test_every_module_sits_in_a_known_layer() -> None:
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py"}, f"modules outside the layers: {sorted(top - {'__init__.py'})}"
    assert {_layer(p) for p in _modules()} <= set(MAY_IMPORT)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_flow(path: Path) -> None:
    layer = _layer(path)
    against = _imported_layers(path) - MAY_IMPORT[layer] - {layer}
    assert not against, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(against)}, against the flow"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_readable(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by what its parts do"


def test_the_check_sees_an_import_against_the_flow(tmp_path: Path) -> None:
    module = tmp_path / "policy.py"
    module.write_text("from ajr_agent.adapters.slurm import CommandGateway\nfrom ajr_agent import surfaces\n")
    assert _imported_layers(module) == {"adapters", "surfaces"}


TESTS = PACKAGE.parent / "tests"


@pytest.mark.parametrize("path", sorted(TESTS.rglob("test_*.py")), ids=lambda p: str(p.relative_to(TESTS)))
def test_test_modules_share_through_conftest_and_support_only(path: Path) -> None:
    """A test module imported by another runs its tests twice and hides where a helper lives."""
    imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}  # fmt: skip
    others = sorted(m for m in imported if m.startswith("tests.") and m.rsplit(".", 1)[-1].startswith("test_"))
    assert not others, f"{path.relative_to(TESTS)} imports test modules {others}: move what they share to support.py"
