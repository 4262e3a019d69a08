"""Finding and reading rule files: the shipped directory, then the site's drop-ins, merged by name."""

from __future__ import annotations

from ajr_agent.domain.validation import describe_validation_error

import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

import ajr_agent
from ajr_agent.detect.rules.model import Rule, RuleFileError, RuleName

logger = logging.getLogger(__name__)


class _RuleDisable(BaseModel):
    """A drop-in entry that only turns off an earlier rule: no pattern needed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RuleName
    enabled: Literal[False]
    description: StrictStr = ""


def default_rules_dir() -> Path:
    """Return the directory of the rule files shipped with AJR.

    In a source checkout or an editable install that is ``rules/`` beside the
    package; an installed package has them under ``<prefix>/share/ajr/rules``.
    """
    beside_package = Path(ajr_agent.__file__).resolve().parent.parent / "rules"
    if beside_package.is_dir():
        return beside_package
    return Path(sys.prefix) / "share" / "ajr" / "rules"


def load_rule_files(dirs: Sequence[Path]) -> list[Rule]:
    """Read every ``*.toml`` rule file of ``dirs`` and return the enabled rules.

    Directories are read in the given order, files in each in sorted name order
    (names starting with '.' are skipped: editor lock and swap files). A rule
    replaces an earlier one of the same name and keeps that one's position, so
    the order stays the shipped file's. Disabled rules are dropped at the end. A
    missing directory is skipped; anything unreadable or invalid raises
    :class:`RuleFileError`.
    """
    merged: dict[str, Rule | _RuleDisable] = {}
    for directory in dirs:
        for path in _rule_files(directory):
            for entry in _read_rule_file(path):
                if isinstance(entry, _RuleDisable) and entry.name not in merged:
                    logger.warning(
                        "%s: rule %r disables a rule that no earlier file defines",
                        path,
                        entry.name,
                    )
                merged[entry.name] = entry
    return [rule for rule in merged.values() if isinstance(rule, Rule) and rule.enabled]


def _rule_files(directory: Path) -> list[Path]:
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RuleFileError(f"{directory}: cannot list rule directory: {exc.strerror}") from exc
    files = [p for p in entries if p.suffix == ".toml" and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.name)


def _read_rule_file(path: Path) -> list[Rule | _RuleDisable]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RuleFileError(f"{path}: cannot read rule file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise RuleFileError(f"{path}: not UTF-8 text: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)", or with "(at end
        # of document)", where the last line's number still helps.
        where = f" (line {len(text.splitlines())})" if str(exc).endswith("end of document)") else ""
        raise RuleFileError(f"{path}: invalid TOML: {exc}{where}") from exc

    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise RuleFileError(
            f"{path}: unknown top-level key {unknown[0]!r} (rules go in [[rule]] tables)"
        )
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise RuleFileError(f"{path}: 'rule' must be an array of tables, written [[rule]]")

    entries: list[Rule | _RuleDisable] = []
    seen: set[str] = set()
    for index, table in enumerate(tables, start=1):
        entry = _parse_rule(path, index, table)
        if entry.name in seen:
            raise RuleFileError(f"{path}: rule {entry.name!r}: defined twice in this file")
        seen.add(entry.name)
        entries.append(entry)
    return entries


def _parse_rule(path: Path, index: int, table: Any) -> Rule | _RuleDisable:
    if not isinstance(table, dict):
        raise RuleFileError(f"{path}: rule #{index}: must be a table, written [[rule]]")
    name = table.get("name")
    where = f"{path}: rule {name!r}" if isinstance(name, str) else f"{path}: rule #{index}"
    if "source" in table:
        raise RuleFileError(f"{where}: unknown key 'source'")
    disable_only = table.get("enabled") is False and "pattern" not in table
    try:
        if disable_only:
            return _RuleDisable.model_validate(table)
        return Rule.model_validate({**table, "source": str(path)})
    except ValidationError as exc:
        hint = (
            " (an entry without a pattern only disables a rule: name and enabled = false)"
            if disable_only
            else ""
        )
        raise RuleFileError(f"{where}: {describe_validation_error(exc)}{hint}") from None
