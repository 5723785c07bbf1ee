"""The URL that picks a store: open (and migrate) the backend it names. Apart from
store.py, so that the backends can import the interface they implement without a circle."""

from __future__ import annotations

import asyncio
from pathlib import Path

from suppression.audit import OnHead
from suppression.errors import StoreError, StoreMissing
from suppression.store import Store


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:///PATH`` URL names."""
    path = url.removeprefix("sqlite://").removeprefix("/")
    if not path or path == ":memory:":
        raise StoreError("sqlite store url needs a file: sqlite:///PATH")
    return path


def sqlite_file(url: str, *, create: bool) -> str:
    """The file of a ``sqlite:///PATH`` store: its directory made (0700) with ``create``,
    else known to exist (``StoreMissing``)."""
    path = Path(sqlite_path(url))
    if create:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot make directory {path.parent}: {exc.strerror}") from None
    elif not path.exists():
        raise StoreMissing(str(path))
    return str(path)


async def require_store(url: str) -> None:
    """StoreMissing unless the store a URL names exists with optgate's schema (reads only)."""
    if url.startswith("sqlite://"):
        await asyncio.to_thread(sqlite_file, url, create=False)
    elif url.startswith(("postgresql://", "postgres://")):
        from suppression.postgres import require_schema

        await require_schema(url)


async def open_store(
    url: str, *, audit_key: bytes, create: bool = True, on_head: OnHead | None = None
) -> Store:
    """Open (and migrate) the store a URL names; ``audit_key`` keys its audit chain.

    ``create``: make a missing store (and a SQLite file's directory, 0700); without
    it a missing store, or a database without optgate's schema, is ``StoreMissing``.
    ``on_head``: told the chain's head (seq, digest) after each committed transaction
    that appended audit events (the gateway anchors it outside the store).
    """
    if url.startswith("sqlite://"):
        from suppression.sqlite import SQLiteStore

        path = await asyncio.to_thread(sqlite_file, url, create=create)
        return await SQLiteStore.open(path, audit_key, create=create, on_head=on_head)
    if url.startswith(("postgresql://", "postgres://")):
        from suppression.postgres import PostgresStore

        return await PostgresStore.open(url, audit_key, create=create, on_head=on_head)
    raise StoreError(
        f"store url {url!r} is not supported: use sqlite:///PATH or postgresql://HOST/DATABASE"
    )
