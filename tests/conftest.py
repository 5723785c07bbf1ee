"""Fixtures shared by the end-to-end tests: a recording next hop and a running gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.service import Running, running
from tests.support.backends import backend  # noqa: F401 - the shared store fixture
from tests.support.people import seed
from tests.support.smtp import Sink, gateway_config, sink


@pytest.fixture(autouse=True)
def state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's own state directory (not made yet): none touches ~/.local/state/optgate
    or /var/lib/optgate. Tests of the state directory itself clear $STATE_DIRECTORY."""
    path = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(path))
    return path


@pytest.fixture
async def next_hop() -> AsyncIterator[Sink]:
    async with sink() as recorder:
        yield recorder


@pytest.fixture
def config(tmp_path: Path, next_hop: Sink) -> Config:
    return gateway_config(tmp_path, next_hop.port)


@pytest.fixture
async def gate(config: Config) -> AsyncIterator[Running]:
    await seed(config)
    async with running(config) as running_gate:
        yield running_gate
