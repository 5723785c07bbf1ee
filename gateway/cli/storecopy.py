"""optgate store copy: what it prints, and its exit status."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.config import Config
from gateway.runtime.stores import load_audit_key
from suppression.copying import Copied, Mismatch, copy_store
from suppression.opening import open_store


def _line(copied: Copied) -> str:
    state = "match" if copied.matches else "MISMATCH"
    return (
        f"{copied.table}: {copied.source_rows:,} rows sha256 {copied.source_digest} -> "
        f"{copied.destination_rows:,} rows sha256 {copied.destination_digest}: {state}"
    )


async def store_copy(args: argparse.Namespace, config: Config) -> int:
    """optgate store copy SRC_URL DST_URL: 0 when every table matches and the chain verifies."""
    try:
        key, _ = load_audit_key(Path(config.store.audit_key_file), create=False)
        done = await copy_store(
            args.source, args.destination, lambda c: print(_line(c)), audit_key=key
        )
    except Mismatch as exc:
        print(f"optgate: {exc}")
        return 1
    store = await open_store(args.destination, audit_key=key)
    try:
        chain = await store.verify_chain()
    finally:
        await store.close()
    if chain.broken_at is not None:
        print(f"audit log at the destination BROKEN at event {chain.broken_at}: {chain.problem}")
        return 1
    rows = sum(c.destination_rows for c in done)
    print(f"audit log at the destination intact: {chain.events} events, head {chain.head}")
    print(f"copied {len(done)} tables, {rows:,} rows")
    return 0
