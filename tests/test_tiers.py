"""The test tiers themselves: how they are settled, and that a pure test cannot reach out."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.tiers import SOCKET_FREE, TIERS, ForbiddenInPureTest, forbidding_io, needs

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function")


def test_every_collected_test_has_a_tier_and_pure_and_corpus_stand_alone(
    request: pytest.FixtureRequest,
) -> None:
    for item in request.session.items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        assert tiers, item.nodeid
        for tier in SOCKET_FREE:
            assert tier not in tiers or tiers == {tier}, item.nodeid


def test_the_tiers_are_the_registered_markers() -> None:
    registered = (ROOT / "pyproject.toml").read_text()
    assert all(f'"{tier}: ' in registered for tier in TIERS)


def test_a_fixture_cannot_bring_pure_or_an_unknown_tier() -> None:
    with pytest.raises(ValueError, match="pure"):
        needs("pure")
    with pytest.raises(ValueError, match="corpus"):
        needs("corpus")
    with pytest.raises(ValueError, match="sockts"):
        needs("sockts")


@pytest.mark.sockets  # it starts a process once the doors are open again
def test_sockets_processes_and_sleeps_are_closed_then_open_again() -> None:
    before = vars(socket.socket).get("connect")  # none, or --tiers-audit's watcher
    with forbidding_io() as violations:
        with socket.socket() as sock, pytest.raises(ForbiddenInPureTest, match="bind"):
            sock.bind(("127.0.0.1", 0))
        with socket.socket() as sock, pytest.raises(ForbiddenInPureTest, match="connect"):
            sock.connect(("127.0.0.1", 9))
        with pytest.raises(ForbiddenInPureTest, match="process"):
            subprocess.run(["true"], check=False)  # noqa: S607
        with pytest.raises(ForbiddenInPureTest, match="process"):
            os.system("true")  # noqa: S605, S607
        with pytest.raises(ForbiddenInPureTest, match="sleep"):
            time.sleep(1)
        time.sleep(0.001)  # a moment is no sleep of note
    assert len(violations) == 5
    assert all("tests/test_tiers.py" in seen for seen in violations)
    assert vars(socket.socket).get("connect") is before  # the class's own attributes back
    assert subprocess.run(["true"], check=False).returncode == 0  # noqa: S607


async def test_the_event_loop_cannot_listen_or_connect() -> None:
    with forbidding_io() as violations:
        with pytest.raises(ForbiddenInPureTest, match="server"):
            await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        with pytest.raises(ForbiddenInPureTest, match="connection"):
            await asyncio.open_connection("127.0.0.1", 9)
        with pytest.raises(ForbiddenInPureTest, match="process"):
            await asyncio.create_subprocess_exec("true")
        with pytest.raises(ForbiddenInPureTest, match="sleep"):
            await asyncio.sleep(1)
        await asyncio.sleep(0)
    assert len(violations) == 4


SUITE = """
    import socket

    import pytest

    from tests.support.backends import BACKENDS
    from tests.support.tiers import needs

    pytestmark = pytest.mark.pure


    @pytest.fixture
    @needs("sockets")
    def listener():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            yield sock


    @pytest.fixture(params=BACKENDS)
    def store(request):
        return request.param


    def test_binds():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))


    @pytest.mark.sockets
    def test_binds_as_a_sockets_test():
        test_binds()


    def test_uses_the_listener(listener):
        assert listener.getsockname()[1]


    def test_on_each_store(store):
        pass


    @pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.corpus)])
    def test_sweep(n):
        if n == 2:
            test_binds()


    @pytest.mark.corpus
    def test_corpus_with_the_listener(listener):
        pass


    @pytest.mark.sockets
    def test_marked_sockets_but_quiet():
        pass
"""


def run_suite(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A small suite under this conftest's tiers, run by a pytest of its own."""
    suite = tmp_path / "tests"
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (suite / "test_suite.py").write_text(textwrap.dedent(SUITE))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(  # noqa: S603 - this Python's pytest on files written here
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers",
         *OPTIONS, *args, str(suite / "test_suite.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


@pytest.mark.sockets
def test_tiers_come_from_marks_fixtures_and_parameters_and_pure_is_enforced(
    tmp_path: Path,
) -> None:
    markers = ("-o", "markers=" + "\n".join(TIERS))
    pure = run_suite(tmp_path, "-m", "pure", "-v", *markers)
    assert "test_binds FAILED" in pure.stdout, pure.stdout
    assert "marked pure, but: bind a socket" in pure.stdout
    assert "test_on_each_store[sqlite] PASSED" in pure.stdout
    assert "test_sweep[1] PASSED" in pure.stdout
    assert "1 failed, 2 passed, 6 deselected" in pure.stdout
    sweep = run_suite(tmp_path, "-m", "corpus", "-v", *markers)
    assert "test_sweep[2] FAILED" in sweep.stdout, sweep.stdout
    assert "marked corpus, but: bind a socket" in sweep.stdout
    assert "1 failed, 8 deselected" in sweep.stdout  # with the listener it is a sockets test
    sockets = run_suite(tmp_path, "-m", "sockets", "-v", "--tiers-audit", *markers)
    assert "test_binds_as_a_sockets_test PASSED" in sockets.stdout, sockets.stdout
    assert "test_uses_the_listener PASSED" in sockets.stdout
    assert "test_corpus_with_the_listener PASSED" in sockets.stdout
    assert "4 passed, 5 deselected" in sockets.stdout
    lines = sockets.stdout.splitlines()
    heading = next(i for i, line in enumerate(lines) if "but no socket or process: 1 " in line)
    assert lines[heading + 1] == "tests/test_suite.py::test_marked_sockets_but_quiet"
    postgres = run_suite(tmp_path, "-m", "postgres", "--collect-only", "-q", *markers)
    assert "test_on_each_store[postgres]" in postgres.stdout
    assert "1/9 tests collected" in postgres.stdout, postgres.stdout
    (tmp_path / "tests" / "test_bare.py").write_text("def test_without_a_tier():\n    pass\n")
    bare = subprocess.run(  # noqa: S603 - this Python's pytest on files written here
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *OPTIONS, *markers, str(tmp_path / "tests")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert bare.returncode == 4  # a usage error
    assert "1 tests have no tier" in bare.stderr, bare.stderr
    assert "test_bare.py::test_without_a_tier" in bare.stderr
