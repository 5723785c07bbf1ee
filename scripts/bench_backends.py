#!/usr/bin/env python3
"""SQLite against PostgreSQL in one run: imports, lookups, store copy, the relay on 1 and 2 nodes.

    .venv/bin/python scripts/bench_backends.py [--rows 200000] [--relay-n 4000] [--runs 3]
                                               [--postgres postgresql://postgres@127.0.0.1/postgres]

1. ``optgate suppress import`` of ``--rows`` CSV addresses into an empty store
   of each backend: rows per second, and PostgreSQL / SQLite.
2. ``lookup_many`` of 100 recipients (half suppressed) against that store:
   lookups per second, and PostgreSQL / SQLite (scripts/bench_store.py's).
3. ``optgate store copy`` of the SQLite store into a new PostgreSQL database,
   at a quarter of ``--rows`` and at ``--rows``: seconds and peak RSS (flat:
   the copy streams).
4. The relay on PostgreSQL with 1 and 2 nodes (``scripts/bench_relay.sh
   --store URL --nodes 1,2``): messages per second and their ratio.

Each part makes its own databases on the ``--postgres`` server and drops them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import OPTGATE, lookups, run_child, store_import, write_csv

REPO = Path(__file__).resolve().parents[1]


async def _admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def database(server: str) -> Iterator[str]:
    """A fresh PostgreSQL database on ``server``; its URL. Dropped afterwards."""
    name = f"optgate_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def per_second(times_ms: list[float]) -> float:
    """Lookups per second from the time of each."""
    return 1000 / statistics.mean(times_ms)


def store_figures(work: Path, rows: int, server: str) -> None:
    """Import on both backends, the copy's time and memory, then lookups on both.

    The copies run before this process's own lookups: a child's peak RSS
    counts what it shared with this process when it was forked.
    """
    source, small = work / "in.csv", work / "small.csv"
    write_csv(source, rows)
    write_csv(small, rows // 4)
    sqlite_url, small_url = f"sqlite:///{work / 'import.db'}", f"sqlite:///{work / 'small.db'}"
    with database(server) as pg_url:
        urls = backends(sqlite_url, pg_url)
        imports = {name: rows / store_import(url, source).wall for name, url in urls}
        store_import(small_url, small)
        for label, url, count, csv in (
            ("small", small_url, rows // 4, small),
            ("large", sqlite_url, rows, source),
        ):
            # the source's state directory (store_import's): its audit key keys the copy
            env = {**os.environ, "OPTGATE_STORE_STATE_DIR": str(csv.with_name(f"{csv.stem}-state"))}
            with database(server) as destination:
                started = time.perf_counter()
                rss = run_child([str(OPTGATE), "store", "copy", url, destination], env).rss
                seconds = time.perf_counter() - started
            print(
                f"store copy sqlite -> postgresql, {count:,} suppressions ({label}): "
                f"{seconds:.1f} s, peak RSS {rss / 2**20:.0f} MB"
            )
        found = {
            name: per_second(asyncio.run(lookups(url, rows)))
            for name, url in backends(sqlite_url, pg_url)
        }
    for name in imports:
        print(f"{name}: import {imports[name]:,.0f} rows/s, lookup_many(100) {found[name]:,.0f}/s")
    print(
        f"postgresql / sqlite: import {imports['postgresql'] / imports['sqlite']:.2f}, "
        f"lookups {found['postgresql'] / found['sqlite']:.2f}"
    )


def backends(sqlite_url: str, pg_url: str) -> tuple[tuple[str, str], ...]:
    """The two stores compared, by name."""
    return (("sqlite", sqlite_url), ("postgresql", pg_url))


def relay_figures(n: int, runs: int, server: str) -> None:
    """The relay on PostgreSQL with one node and with two (scripts/bench_relay.sh)."""
    with database(server) as url:
        subprocess.run(  # noqa: S603 - our own script
            [
                str(REPO / "scripts" / "bench_relay.sh"),
                "--store",
                url,
                "--nodes",
                "1,2",
                "-n",
                str(n),
                "--runs",
                str(runs),
            ],
            check=True,
        )


def main() -> None:
    """Run the parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--relay-n", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="optgate-bench-") as tmp:
        if args.rows:
            store_figures(Path(tmp), args.rows, args.postgres)
    if args.relay_n:
        relay_figures(args.relay_n, args.runs, args.postgres)


if __name__ == "__main__":
    main()
