"""Reading the agent's settings: /etc/ajr/ajr.toml, overridden by AJR_* environment variables.

Every key has a default, so the agent runs with no file at all. A wrong key or value
stops start-up with the file, the key and what was expected: an agent that silently
ignores a typo in `site_requeue_cap` would be worse than one that does not start.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Mapping

from pydantic import ValidationError

from ajr_agent.domain.settings import ConfigError, Settings
from ajr_agent.domain.validation import FieldProblem, describe_problems, validation_problems


DEFAULT_CONFIG_PATH = Path("/etc/ajr/ajr.toml")


CONFIG_ENV = "AJR_CONFIG"


# The system AJR replaces was switched to dry run with APS_DRY_RUN; sites keep their habit.
LEGACY_DRY_RUN_ENV = "APS_DRY_RUN"


def config_path(explicit: str | Path | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The file to read: --config, else $AJR_CONFIG, else /etc/ajr/ajr.toml."""
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_settings(path: Path | None = None, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read the settings file (missing is fine unless named explicitly) and apply the environment.

    Raises ConfigError naming the file, the key and what was expected.
    """
    explicit = path is not None or bool(environ.get(CONFIG_ENV))
    source = config_path(path, environ)
    values: dict[str, object] = {}
    if source.exists():
        try:
            values = tomllib.loads(source.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{source}: cannot be read: {exc.strerror}") from exc
    elif explicit:
        raise ConfigError(f"{source}: no such configuration file (named by --config or ${CONFIG_ENV})")
    _check_keys(values, str(source))
    from_environment = _environment_values(environ)
    try:
        return Settings.model_validate(values | {key: value for key, (_, value) in from_environment.items()})
    except ValidationError as exc:
        variables = {key: variable for key, (variable, _) in from_environment.items()}
        raise ConfigError(_describe(exc, str(source), variables)) from exc


def _check_keys(values: Mapping[str, object], source: str) -> None:
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        known = ", ".join(sorted(Settings.model_fields))
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; the known keys are: {known}")


def _environment_values(environ: Mapping[str, str]) -> dict[str, tuple[str, object]]:
    """AJR_<KEY> for every setting, by key: the variable and its value; lists are colon-separated like PATH."""
    values: dict[str, tuple[str, object]] = {}
    if environ.get(LEGACY_DRY_RUN_ENV):
        values["dry_run"] = (LEGACY_DRY_RUN_ENV, environ[LEGACY_DRY_RUN_ENV])
    for name, field in Settings.model_fields.items():
        variable = f"AJR_{name.upper()}"
        raw = environ.get(variable)
        if raw is None:
            continue
        is_list = "tuple" in str(field.annotation)
        values[name] = (variable, tuple(p for p in raw.split(":") if p) if is_list else raw)
    return values


def _describe(exc: ValidationError, source: str, variables: Mapping[str, str]) -> str:
    """The problems, one line per source: the file, or the environment variable that set the key."""
    by_origin: dict[str, list[FieldProblem]] = {}
    for problem in validation_problems(exc):
        variable = variables.get(problem.top_key or "")
        origin = f"environment variable {variable}" if variable else source
        by_origin.setdefault(origin, []).append(problem)
    lines = [describe_problems(problems, origin) for origin, problems in by_origin.items()]
    return "invalid configuration:\n  " + "\n  ".join(lines)
