"""The agent's settings: defaults, the file, the environment, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_agent.domain.settings import ConfigError, Settings
from ajr_agent.adapters.config_file import load_settings


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ajr_agent.adapters.config_file.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.poll_interval == 1.0 and settings.site_requeue_cap == 50
    assert settings.dry_run is False and settings.crashloop_threshold == 3


def test_file_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "ajr.toml"
    path.write_text('poll_interval = 0.5\nsite_requeue_cap = 7\nlog_dirs = ["/shared/logs"]\ndry_run = true\n')
    settings = load_settings(path, environ={})
    assert settings.poll_interval == 0.5 and settings.site_requeue_cap == 7
    assert settings.log_dirs == (Path("/shared/logs"),) and settings.dry_run


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ajr.toml"
    path.write_text("site_requeue_cap = 7\n")
    settings = load_settings(path, environ={"AJR_SITE_REQUEUE_CAP": "9", "AJR_LOG_DIRS": "/a:/b"})
    assert settings.site_requeue_cap == 9 and settings.log_dirs == (Path("/a"), Path("/b"))


@pytest.mark.parametrize("variable", ["AJR_DRY_RUN", "APS_DRY_RUN"])
def test_dry_run_from_either_variable(variable: str) -> None:
    assert load_settings(environ={variable: "true"}).dry_run


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("poll_interval = 3\n")
    assert load_settings(environ={"AJR_CONFIG": str(path)}).poll_interval == 3


def test_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_unknown_key_names_file_key_and_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "ajr.toml"
    path.write_text("pol_interval = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert str(path) in message and "pol_interval" in message and "poll_interval" in message


def test_wrong_value_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "ajr.toml"
    path.write_text("site_requeue_cap = -2\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert str(path) in message and "site_requeue_cap" in message and "greater than or equal to 0" in message


def test_wrong_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment variable AJR_POLL_INTERVAL"):
        load_settings(environ={"AJR_POLL_INTERVAL": "soon"})


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ajr.toml"
    path.write_text("poll_interval = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


def test_each_wrong_value_is_told_with_its_own_source(tmp_path: Path) -> None:
    path = tmp_path / "ajr.toml"
    path.write_text('site_requeue_cap = -2\nlog_dirs = ["/a", 3]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"AJR_POLL_INTERVAL": "soon"})
    # In the order of the settings (pydantic's), one line per source.
    assert str(caught.value).splitlines() == [
        "invalid configuration:",
        "  environment variable AJR_POLL_INTERVAL: poll_interval: Input should be a valid number, unable to parse "
        "string as a number (got 'soon')",
        f"  {path}: log_dirs[1]: Input is not a valid path for {Path!r} (got 3); "
        "site_requeue_cap: Input should be greater than or equal to 0 (got -2)",
    ]


def test_a_wrong_legacy_dry_run_names_the_variable_that_was_set() -> None:
    with pytest.raises(ConfigError, match="environment variable APS_DRY_RUN: dry_run: Input should be a valid boolean"):
        load_settings(environ={"APS_DRY_RUN": "perhaps"})
