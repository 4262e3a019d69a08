"""Fixtures the unit tests share: the in-memory Slurm, an agent over it stepped by hand, a filled
state database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ajr_agent.adapters.slurm.memory import MemorySlurm
from ajr_agent.adapters.store import Store
from ajr_agent.domain.settings import Settings
from ajr_agent.runtime.agent import Agent, load_rules
from ajr_agent.runtime.inline_pool import InlinePool
from tests.unit.support import fill


@pytest.fixture
def queue() -> MemorySlurm:
    """The cluster as the agent sees it: put jobs in `queue.jobs`."""
    return MemorySlurm()


@pytest.fixture
def agent(tmp_path: Path, queue: MemorySlurm) -> Agent:
    """An agent over `queue`, its actions and verdicts run at once (InlinePool), its state in `tmp_path`."""
    settings = Settings(state_db=tmp_path / "ajr.db", rules_dirs=(), clear_begin_time=True)
    store = Store(settings.state_db)
    # Pretend the agent has watched this cluster for a while.
    store.set_meta(watching_since=1.0)
    return Agent(settings, store, queue, load_rules(settings), pool=InlinePool())


@pytest.fixture
def state_db(tmp_path: Path) -> Path:
    """A state database holding `support.fill`'s jobs."""
    path = tmp_path / "ajr.db"
    store = Store(path)
    fill(store, time.time())
    store.close()
    return path


