"""Test tiers: what each test needs from the machine, worked out at collection and kept true.

A test's tiers are the union of the tier marks on its module, class and function, the tiers
its fixtures declare (``@needs(...)`` under ``@pytest.fixture``) and those of fixture
parameters (``pytest.param("postgres", marks=pytest.mark.postgres)``). ``pure`` means
"nothing else": it is dropped where another tier applies, so a module marked pure whose
tests use the PostgreSQL backend parameter puts those in ``postgres`` and the SQLite ones in
``pure``. ``corpus`` is pure's slow sibling (sweeps of the whole shared corpus, Hypothesis
and other big-data tests): it beats pure and, like pure, gives way to every tier that
needs the machine. A test left with no tier is a collection error. While a pure or corpus
test runs (its fixtures included), opening or binding a socket, starting a process and
sleeping for real fail it; with ``--tiers-audit``, a test whose only tier is sockets and
that did none of that is listed at the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

# as registered in pyproject.toml, where each is described
TIERS = ("pure", "corpus", "sockets", "postgres", "postfix", "browser", "root")
# the tiers whose tests run with sockets, processes and real sleeps closed
SOCKET_FREE = ("pure", "corpus")

_HOME = str(Path(__file__).resolve().parents[2]) + "/"

F = TypeVar("F", bound=Callable[..., Any])

# the longest single sleep a pure test may take
LONGEST_SLEEP = 0.05


def needs(*tiers: str) -> Callable[[F], F]:
    """Declare the tiers a fixture brings to every test that uses it (under @pytest.fixture)."""
    unknown = set(tiers) - set(TIERS) | (set(SOCKET_FREE) & set(tiers))
    if unknown:
        raise ValueError(f"not a tier a fixture can bring: {sorted(unknown)}")

    def mark(function: F) -> F:
        function.__tiers__ = frozenset(tiers)  # type: ignore[attr-defined]
        return function

    return mark


def _fixture_tiers(item: pytest.Function) -> set[str]:
    # the fixture definitions a test uses: pytest's own record of its fixture closure
    definitions = item._fixtureinfo.name2fixturedefs
    found: set[str] = set()
    for name in item.fixturenames:
        for definition in definitions.get(name, ())[-1:]:
            found |= getattr(definition.func, "__tiers__", frozenset())
    return found


def assign(items: Iterable[pytest.Item]) -> list[str]:
    """Settle every item's tiers onto the item itself; the ids of items with none."""
    items = list(items)
    settled: list[tuple[pytest.Item, set[str]]] = []
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if isinstance(item, pytest.Function):
            tiers |= _fixture_tiers(item)
        if tiers - set(SOCKET_FREE):  # the machine is needed: not socket-free after all
            tiers -= set(SOCKET_FREE)
        elif len(tiers) > 1:
            tiers.discard("pure")  # a corpus sweep in a pure module
        settled.append((item, tiers))
    # a module's or class's mark is shared by its tests; each test now carries its own
    for item, _ in settled:
        for node in item.listchain():
            node.own_markers[:] = [mark for mark in node.own_markers if mark.name not in TIERS]
    untiered = []
    for item, tiers in settled:
        for tier in sorted(tiers):
            item.add_marker(tier)
        if not tiers:
            untiered.append(item.nodeid)
    return untiered


def socket_free_tier(item: pytest.Item) -> str | None:
    """``pure`` or ``corpus`` for a test that runs with the doors closed, else None."""
    return next((t for t in SOCKET_FREE if item.get_closest_marker(t) is not None), None)


class Violations(list[str]):
    """What a pure test did that its tier forbids, each with where it happened."""

    def record(self, what: str) -> None:
        stack = traceback.extract_stack()[:-2]  # without this method and the door
        ours = [f for f in stack if f.filename.startswith(_HOME) and "/.venv/" not in f.filename]
        self.append(
            f"{what} at " + " <- ".join(f"{f.filename[len(_HOME) :]}:{f.lineno}" for f in ours[-3:])
        )


class ForbiddenInPureTest(RuntimeError):
    """Raised where a pure test reaches for the network, a process or the clock."""


def _forbid(violations: Violations, what: str) -> Callable[..., Any]:
    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        violations.record(what)
        raise ForbiddenInPureTest(f"a pure test may not {what}: mark it with its real tier")

    return forbidden


def _sleeper(violations: Violations, real: Callable[[float], Any]) -> Callable[..., Any]:
    def sleep(seconds: float, *args: Any, **kwargs: Any) -> Any:
        if seconds > LONGEST_SLEEP:
            violations.record(f"sleep {seconds} s")
            raise ForbiddenInPureTest(f"a pure test may not sleep {seconds} s")
        return real(seconds, *args, **kwargs)

    return sleep


# (owner, attribute, what it does) for every way out of the process the suite's code takes
_DOORS: list[tuple[Any, str, str]] = [
    (socket.socket, "connect", "connect a socket"),
    (socket.socket, "connect_ex", "connect a socket"),
    (socket.socket, "bind", "bind a socket"),
    (socket.socket, "sendto", "send a datagram"),
    (asyncio.BaseEventLoop, "create_connection", "open a connection"),
    (asyncio.BaseEventLoop, "create_server", "start a server"),
    (asyncio.BaseEventLoop, "create_datagram_endpoint", "open a datagram endpoint"),
    (asyncio.BaseEventLoop, "subprocess_exec", "start a process"),
    (asyncio.BaseEventLoop, "subprocess_shell", "start a process"),
    (asyncio.SelectorEventLoop, "create_unix_connection", "open a connection"),
    (asyncio.SelectorEventLoop, "create_unix_server", "start a server"),
    (subprocess.Popen, "__init__", "start a process"),
    (os, "system", "start a process"),
    (os, "fork", "fork"),
    (os, "posix_spawn", "start a process"),
    (os, "posix_spawnp", "start a process"),
]


_NOTHING = object()


def _watch(violations: Violations, what: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def watched(*args: Any, **kwargs: Any) -> Any:
        violations.record(what)
        return real(*args, **kwargs)

    return watched


@contextmanager
def _replaced(replacements: list[tuple[Any, str, Callable[..., Any]]]) -> Iterator[None]:
    # what each owner held itself (a class may inherit the attribute: then it held nothing)
    saved = [(owner, name, vars(owner).get(name, _NOTHING)) for owner, name, _ in replacements]
    try:
        for owner, name, replacement in replacements:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            if original is _NOTHING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


@contextmanager
def forbidding_io() -> Iterator[Violations]:
    """Sockets, processes and real sleeps closed for the duration; what was tried."""
    violations = Violations()
    replacements = [(owner, name, _forbid(violations, what)) for owner, name, what in _DOORS]
    replacements += [
        (time, "sleep", _sleeper(violations, time.sleep)),
        (asyncio, "sleep", _sleeper(violations, asyncio.sleep)),
    ]
    with _replaced(replacements):
        yield violations


@contextmanager
def watching_io() -> Iterator[Violations]:
    """Sockets and processes open as ever, each use recorded (``--tiers-audit``)."""
    used = Violations()
    with _replaced(
        [(owner, name, _watch(used, what, getattr(owner, name))) for owner, name, what in _DOORS]
    ):
        yield used
