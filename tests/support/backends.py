"""The stores under test: SQLite and PostgreSQL behind one fixture, and raw access to both."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from suppression.opening import open_store
from suppression.store import Store
from tests.support.keys import AUDIT_KEY


@dataclass
class Backend:
    """A store under test and ways to reach behind its back."""

    store: Store
    raw_sql: Callable[[str], None]
    query: Callable[[str], list[tuple[Any, ...]]]
    url: str


# a maintenance connection to this server creates and drops one database per test
# (not OPTGATE_*: that prefix is the configuration's, and unknown names there are errors)
POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _on_server(database: str) -> str:
    return POSTGRES.rsplit("/", 1)[0] + "/" + database


def _blocking(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to the end on a loop of its own (for a sync ``raw_sql``)."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, work()).result()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, empty database; its URL. Fails (never skips) when no server answers."""
    try:
        admin = await asyncpg.connect(POSTGRES, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"no PostgreSQL at {POSTGRES} ({exc}): run scripts/setup-system as root, "
            "or point TEST_POSTGRES_URL at a server",
            pytrace=False,
        )
    name = f"optgate_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _on_server(name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def postgres_sql(url: str) -> Callable[[str], None]:
    def raw_sql(sql: str) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        _blocking(run)

    return raw_sql


def postgres_query(url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    def query(sql: str) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []

        async def run() -> None:
            conn = await asyncpg.connect(url)
            try:
                rows.extend(tuple(row) for row in await conn.fetch(sql))
            finally:
                await conn.close()

        _blocking(run)
        return rows

    return query


# the parameter of every fixture over both stores: the SQLite one is pure unless the test
# needs more, the PostgreSQL one needs the server (tests/support/tiers.py)
BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.pure),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "postgres":
        async with postgres_database() as url:
            under_test = Backend(
                await open_store(url, audit_key=AUDIT_KEY),
                postgres_sql(url),
                postgres_query(url),
                url,
            )
            try:
                yield under_test
            finally:
                await under_test.store.close()  # a test may have reopened it
        return
    path = tmp_path / "store.db"
    store = await open_store(f"sqlite:///{path}", audit_key=AUDIT_KEY)

    def raw_sql(sql: str) -> None:
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(sql)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(path)) as db:
            return db.execute(sql).fetchall()

    under_test = Backend(store, raw_sql, query, f"sqlite:///{path}")
    yield under_test
    await under_test.store.close()
