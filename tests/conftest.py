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
