#!/usr/bin/env python3
"""Store benchmark: CSV import against the sqlite3 shell, memory at two sizes, lookup latency.

    .venv/bin/python scripts/bench_store.py [--rows 1000000] [--flat-rows 3000000]
                                            [--runs 3] [--lookup-rows 10000000]

1. ``optgate suppress import`` of ``--rows`` addresses from CSV into an empty
   SQLite store, and, in the same run, the baseline: the sqlite3 shell's
   ``.import`` of the very same file into a table keyed on the address. The
   two alternate ``--runs`` times; the medians and their ratio are printed
   (bar: <= 4.0), and each run's ratio.
2. Peak RSS of the import at ``--rows`` and at ``--flat-rows`` (bar: < 100 MB
   at both: memory is flat in the number of rows).
3. ``lookup_many`` of 100 recipients against ``--lookup-rows`` suppressions:
   median and p99 in ms (bar: median < 2 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from suppression.address import normalize
from suppression.opening import open_store
from suppression.sql.tables import MIGRATIONS, TABLES

OPTGATE = Path(sys.executable).with_name("optgate")
CREATED = "2026-01-01T00:00:00.000000Z"
AUDIT_KEY = bytes(range(32))  # of the lookup store, which this script builds and opens itself


def address(n: int) -> str:
    """A distinct, valid, realistic-looking address."""
    return f"user.{n:08d}@example{n % 997}.com"


def write_csv(path: Path, rows: int) -> None:
    """The input file: a header and one address per row."""
    with path.open("w", encoding="utf-8") as out:
        out.write("email,first_name\n")
        for n in range(rows):
            out.write(f"{address(n)},Name{n % 100}\n")


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run a command; (wall seconds, peak RSS in bytes of that child)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    _, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {err.decode()}")
    return elapsed, usage.ru_maxrss * 1024


def store_import(url: str, source: Path) -> tuple[float, int]:
    """`optgate suppress import` of a CSV into the (migrated) store at ``url``: the
    import's own seconds and peak RSS (the migration is not timed). The store's key
    files go in a state directory beside the CSV."""
    state = source.with_name(f"{source.stem}-state")
    state.mkdir(exist_ok=True)
    env = {**os.environ, "OPTGATE_STORE_URL": url, "OPTGATE_STORE_STATE_DIR": str(state)}
    run_child([str(OPTGATE), "store", "migrate"], env)
    return run_child([str(OPTGATE), "suppress", "import", str(source), "--format", "csv"], env)


def optgate_import(work: Path, source: Path) -> tuple[float, int]:
    """optgate's import of a CSV into a new, empty store."""
    db = work / "optgate.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return store_import(f"sqlite:///{db}", source)


def shell_import(work: Path, source: Path) -> float:
    """The sqlite3 shell importing the same file into a table keyed on the address."""
    db = work / "shell.db"
    db.unlink(missing_ok=True)
    script = (
        "CREATE TABLE address (email TEXT PRIMARY KEY, first_name TEXT);\n"
        f".import --csv --skip 1 {source} address\n"
    )
    start = time.perf_counter()
    subprocess.run(["sqlite3", str(db)], input=script.encode(), check=True)  # noqa: S603, S607
    return time.perf_counter() - start


def build_lookup_store(path: Path, rows: int) -> None:
    """A store with `rows` suppressions (addresses kept), written directly in key order:
    this measures lookups, not imports."""
    keyed = sorted((hashlib.sha256(address(n).encode()).hexdigest(), n) for n in range(rows))
    with sqlite3.connect(path) as db:
        scripts = [table.ddl("sqlite") for table in TABLES]
        db.executescript(";".join(scripts) + f"; PRAGMA user_version = {len(MIGRATIONS)};")
        db.execute("PRAGMA journal_mode = WAL")
        db.executemany(
            "INSERT INTO suppression VALUES (?, 'global', 'sha256', ?, 'imported', "
            "'import', NULL, ?, 1)",
            ((key, address(n), CREATED) for key, n in keyed),
        )


async def lookups(url: str, rows: int, rounds: int = 300) -> list[float]:
    """Milliseconds per lookup_many of 100 recipients, half of them suppressed."""
    store = await open_store(url, audit_key=AUDIT_KEY)
    rng = random.Random(7)
    times = []
    try:
        for _ in range(rounds):
            batch = [normalize(address(n)) for n in rng.sample(range(rows), 50)]
            batch += [normalize(f"absent{rng.randrange(10**9)}@example.net") for _ in range(50)]
            start = time.perf_counter()
            facts = await store.lookup_many(batch, ("global", "topic:marketing"), "marketing")
            times.append((time.perf_counter() - start) * 1000)
            assert sum(bool(f.suppressions) for f in facts.values()) == 50
    finally:
        await store.close()
    return times


def import_figures(work: Path, rows: int, flat_rows: int, runs: int) -> None:
    """Import time against the sqlite3 shell, and peak memory at two file sizes."""
    source = work / "in.csv"
    write_csv(source, rows)
    shell, ours, peaks = [], [], []
    for _ in range(runs):
        shell.append(shell_import(work, source))
        seconds, rss = optgate_import(work, source)
        ours.append(seconds)
        peaks.append(rss)
    ratio = statistics.median(ours) / statistics.median(shell)
    each = ", ".join(f"{o / s:.2f}" for o, s in zip(ours, shell, strict=True))
    print(
        f"import {rows:,} rows: optgate {statistics.median(ours):.2f} s, sqlite3 shell .import "
        f"{statistics.median(shell):.2f} s (medians of {runs}), ratio {ratio:.2f} "
        f"(bar <= 4.0; runs {each})"
    )
    print(f"peak RSS at {rows:,} rows: {max(peaks) / 2**20:.0f} MB (bar < 100 MB)")
    source.unlink()
    if flat_rows:
        big = work / "big.csv"
        write_csv(big, flat_rows)
        seconds, big_rss = optgate_import(work, big)
        big.unlink()
        print(
            f"peak RSS at {flat_rows:,} rows: {big_rss / 2**20:.0f} MB "
            f"({big_rss / max(peaks):.2f}x the smaller file; bar < 100 MB), {seconds:.1f} s"
        )


def main() -> None:
    """Run the three measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--flat-rows", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lookup-rows", type=int, default=10_000_000)
    args = parser.parse_args()
    if shutil.which("sqlite3") is None:
        raise SystemExit("the sqlite3 shell is needed: apt-get install sqlite3")
    with tempfile.TemporaryDirectory(prefix="optgate-bench-") as tmp:
        work = Path(tmp)
        if args.rows:
            import_figures(work, args.rows, args.flat_rows, args.runs)
        if not args.lookup_rows:
            return
        store = work / "lookup.db"
        build_lookup_store(store, args.lookup_rows)
        times = asyncio.run(lookups(f"sqlite:///{store}", args.lookup_rows))
        times.sort()
        print(
            f"lookup_many(100) over {args.lookup_rows:,} suppressions: median "
            f"{statistics.median(times):.3f} ms, p99 {times[int(len(times) * 0.99)]:.3f} ms "
            f"(bar: median < 2 ms)"
        )


if __name__ == "__main__":
    main()
