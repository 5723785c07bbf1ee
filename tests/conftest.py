"""Fixtures shared by the end-to-end tests (a recording next hop, a running gateway) and the
test tiers' hooks (tests/support/tiers.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.runtime.service import Running, running
from tests.support.backends import backend  # noqa: F401 - the shared store fixture
from tests.support.people import seed
from tests.support.smtp import Sink, gateway_config, sink
from tests.support.tiers import (
    TIERS,
    assign,
    forbidding_io,
    needs,
    socket_free_tier,
    watching_io,
)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the tiers settled here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    untiered = assign(items)
    if untiered:
        shown = "\n  ".join(untiered[:20])
        raise pytest.UsageError(
            f"{len(untiered)} tests have no tier (tests/support/tiers.py):\n  {shown}"
        )
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("root"):
                item.add_marker(pytest.mark.skip(reason="tier root: run as root"))


UNUSED = pytest.StashKey[list[str]]()  # --tiers-audit: sockets tests that used no socket
USED = pytest.StashKey[bool]()  # --tiers-audit: this test opened a socket or a process


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tiers-audit",
        action="store_true",
        help="list the tests whose only tier is sockets but that opened no socket or process",
    )


def _guarded(item: pytest.Item, phase: str) -> Generator[None, Any, Any]:
    """Run one phase of a test; a pure or corpus test fails if it reached for a socket or a
    process (with --tiers-audit, a sockets test that never did is listed)."""
    tier = socket_free_tier(item)
    if tier is None:
        if not (item.config.getoption("--tiers-audit") and _only_sockets(item)):
            return (yield)
        with watching_io() as used:
            try:
                return (yield)
            finally:
                item.stash[USED] = item.stash.get(USED, False) or bool(used)
                if phase == "teardown" and not item.stash[USED]:
                    item.config.stash.setdefault(UNUSED, []).append(item.nodeid)
    with forbidding_io() as violations:
        try:
            return (yield)
        finally:
            if violations:
                pytest.fail(f"marked {tier}, but: " + "; ".join(violations[:3]), pytrace=False)


def _only_sockets(item: pytest.Item) -> bool:
    return {mark.name for mark in item.iter_markers() if mark.name in TIERS} == {"sockets"}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    unused = config.stash.get(UNUSED, [])
    if config.getoption("--tiers-audit"):
        terminalreporter.write_sep("=", f"tier sockets, but no socket or process: {len(unused)}")
        for nodeid in unused:
            terminalreporter.write_line(nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded(item, "call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded(item, "teardown"))


@pytest.fixture(autouse=True)
def state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's own state directory (not made yet): none touches ~/.local/state/optgate
    or /var/lib/optgate. Tests of the state directory itself clear $STATE_DIRECTORY."""
    path = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(path))
    return path


@pytest.fixture
@needs("sockets")
async def next_hop() -> AsyncIterator[Sink]:
    async with sink() as recorder:
        yield recorder


@pytest.fixture
def config(tmp_path: Path, next_hop: Sink) -> Config:
    return gateway_config(tmp_path, next_hop.port)


@pytest.fixture
@needs("sockets")
async def gate(config: Config) -> AsyncIterator[Running]:
    await seed(config)
    async with running(config) as running_gate:
        yield running_gate
