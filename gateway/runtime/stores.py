"""The configured store, opened with its audit key (a file outside the database)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.config import Config
from gateway.keys import make_key_file
from suppression.audit import parse_head
from suppression.errors import ConfigError
from suppression.opening import open_store, require_store
from suppression.statecheck import ChainReport
from suppression.store import Store


def load_audit_key(path: Path, *, create: bool) -> tuple[bytes, bool]:
    """The audit chain's key (hex in a 0600 file) and whether it was made just now."""
    made = create and make_key_file(path, "[store] audit_key_file")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        raise ConfigError(
            f"[store] audit_key_file {path} does not exist: it is made by 'optgate serve' or "
            "'optgate store migrate'; restore it from a backup if the store has one"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[store] audit_key_file {path}: {exc}") from None
    if len(key) < 16:
        raise ConfigError(f"[store] audit_key_file {path}: needs a hex key of 16 bytes or more")
    return key, made


async def open_configured(config: Config, *, create: bool = False) -> Store:
    """The configured store; ``create`` (serve, store migrate) may make it and the audit key,
    else a missing store is StoreMissing.

    A key made now for a store that already has a chain (keyed with a key since
    lost) is taken back, and the store refused: a new key would make every
    event look forged.
    """
    url, path = config.store.url, Path(config.store.audit_key_file)
    try:
        key, made = load_audit_key(path, create=create)
    except ConfigError:
        if not create:
            await require_store(url)  # a missing store is the clearer error
        raise
    store = await open_store(url, audit_key=key, create=create)
    try:
        lost = made and (await store.verify_chain()).broken_at is not None
    except BaseException:
        await store.close()
        raise
    if lost:
        await store.close()
        await asyncio.to_thread(path.unlink)
        raise ConfigError(
            f"[store] audit_key_file {path} was missing, and the store's audit log was "
            "chained with another key: restore the key file from a backup"
        )
    return store


@contextlib.asynccontextmanager
async def opened(config: Config, *, create: bool = False) -> AsyncIterator[Store]:
    """The configured store, closed on the way out."""
    store = await open_configured(config, create=create)
    try:
        yield store
    finally:
        await store.close()


def read_anchor(path: Path) -> tuple[int, str] | None:
    """The head a verification recorded last (None if none was)."""
    try:
        return parse_head(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[store] audit_anchor_file {path}: {exc}") from None


def write_anchor(path: Path, report: ChainReport) -> None:
    """Record a verified head outside the store (atomically; never a shorter one)."""
    anchored = read_anchor(path)
    if anchored is not None and anchored[0] > report.events:
        return
    spare = path.with_name(f".{path.name}.{os.getpid()}")
    spare.write_text(report.head_text + "\n")
    spare.replace(path)
