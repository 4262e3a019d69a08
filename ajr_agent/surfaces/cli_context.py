"""What every `ajr` command shares: the settings and the store, AJR's errors as messages, --json output."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

import click
from pydantic import TypeAdapter

from ajr_agent.domain.errors import AjrError
from ajr_agent.domain.settings import Settings
from ajr_agent.adapters.config_file import load_settings
from ajr_agent.adapters.store import Store

Command = TypeVar("Command", bound=Callable[..., Any])


class Context:
    """What every command needs: the settings, and the store opened on demand."""

    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The agent's settings, as the agent itself reads them."""
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings

    def store(self) -> Store:
        """The state database the agent writes."""
        if not self.settings.state_db.exists():
            raise click.ClickException(
                f"no state database at {self.settings.state_db}: the agent has not run with this configuration yet"
            )
        return Store(self.settings.state_db, wal=self.settings.state_db_wal)


def fail_on_ajr_errors(function: Command) -> Command:
    """The command ends with AJR's own message, not a traceback: a tired admin can act on it."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AjrError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def echo_json(answer: object) -> None:
    """A read model's answer as the API serialises it, indented for a terminal."""
    click.echo(TypeAdapter(type(answer)).dump_json(answer, indent=2).decode())
