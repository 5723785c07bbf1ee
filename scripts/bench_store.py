#!/usr/bin/env python3
"""Store benchmark: CSV import against the sqlite3 shell, memory at two sizes, lookup latency.

    .venv/bin/python scripts/bench_store.py [--rows 1000000] [--flat-rows 3000000]
                                            [--runs 3] [--lookup-rows 10000000]

1. ``optgate suppress import`` of ``--rows`` addresses from CSV into an empty
   SQLite store, and, in the same run, the baseline: the sqlite3 shell's
   ``.import`` of the very same file into a table keyed on the address. The
   two alternate ``--runs`` times; the medians and their ratio are printed
   (bar: <= 4.0), and each run's ratio; and the ratio of their CPU seconds (user and
   system, all threads), which other work on the machine moves less.
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
from typing import NamedTuple

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


class Child(NamedTuple):
    """What a command took: wall seconds, CPU seconds (user and system, every thread),
    peak RSS in bytes."""

    wall: float
    cpu: float
    rss: int


def run_child(
    cmd: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None
) -> Child:
    """Run a command (with ``stdin``) and measure it."""
    start = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin or b"")
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate must not flush it
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    _, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {err.decode()}")
    return Child(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def store_import(url: str, source: Path) -> Child:
    """`optgate suppress import` of a CSV into the (migrated) store at ``url``, measured
    (the migration is not). The store's key files go in a state directory beside the
    CSV."""
    state = source.with_name(f"{source.stem}-state")
    state.mkdir(exist_ok=True)
    env = {**os.environ, "OPTGATE_STORE_URL": url, "OPTGATE_STORE_STATE_DIR": str(state)}
    run_child([str(OPTGATE), "store", "migrate"], env)
    return run_child([str(OPTGATE), "suppress", "import", str(source), "--format", "csv"], env)


def optgate_import(work: Path, source: Path) -> Child:
    """optgate's import of a CSV into a new, empty store."""
    db = work / "optgate.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return store_import(f"sqlite:///{db}", source)


def shell_import(work: Path, source: Path) -> Child:
    """The sqlite3 shell importing the same file into a table keyed on the address."""
    db = work / "shell.db"
    db.unlink(missing_ok=True)
    script = (
        "CREATE TABLE address (email TEXT PRIMARY KEY, first_name TEXT);\n"
        f".import --csv --skip 1 {source} address\n"
    )
    sqlite3_shell = shutil.which("sqlite3") or "sqlite3"
    return run_child([sqlite3_shell, str(db)], stdin=script.encode())


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
    shell: list[Child] = []
    ours: list[Child] = []
    for _ in range(runs):
        shell.append(shell_import(work, source))
        ours.append(optgate_import(work, source))
    wall = statistics.median(o.wall for o in ours) / statistics.median(s.wall for s in shell)
    cpu = statistics.median(o.cpu for o in ours) / statistics.median(s.cpu for s in shell)
    each = ", ".join(f"{o.wall / s.wall:.2f}" for o, s in zip(ours, shell, strict=True))
    peaks = [o.rss for o in ours]
    print(
        f"import {rows:,} rows: optgate {statistics.median(o.wall for o in ours):.2f} s, "
        f"sqlite3 shell .import {statistics.median(s.wall for s in shell):.2f} s "
        f"(medians of {runs}), ratio {wall:.2f} (bar <= 4.0; runs {each}); CPU seconds "
        f"{statistics.median(o.cpu for o in ours):.2f} against "
        f"{statistics.median(s.cpu for s in shell):.2f}, ratio {cpu:.2f} (steadier than wall "
        "time when other work shares the cores)"
    )
    print(f"peak RSS at {rows:,} rows: {max(peaks) / 2**20:.0f} MB (bar < 100 MB)")
    source.unlink()
    if flat_rows:
        big = work / "big.csv"
        write_csv(big, flat_rows)
        measured = optgate_import(work, big)
        big.unlink()
        print(
            f"peak RSS at {flat_rows:,} rows: {measured.rss / 2**20:.0f} MB "
            f"({measured.rss / max(peaks):.2f}x the smaller file; bar < 100 MB), "
            f"{measured.wall:.1f} s"
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
