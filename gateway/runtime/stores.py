"""The configured store, opened with its audit key and its anchor (files outside the
database): the head of every committed transaction that appends audit events is
recorded in ``[store] audit_anchor_file`` as it commits, so that ``store verify``
finds any of the newest events cut off, however recent."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from gateway.config import Config
from gateway.keys import make_key_file
from suppression.audit import Head, head_text, parse_head
from suppression.errors import ConfigError
from suppression.opening import open_store, require_store
from suppression.store import Store

log = structlog.get_logger("optgate.audit")


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
    anchor = functools.partial(anchor_head, Path(config.store.audit_anchor_file))
    store = await open_store(url, audit_key=key, create=create, on_head=anchor)
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


def read_anchor(path: Path) -> Head | None:
    """The head recorded last (None if none was)."""
    try:
        return parse_head(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[store] audit_anchor_file {path}: {exc}") from None


def _holds(path: Path, seq: int) -> bool:
    """Whether the anchor holds a head of ``seq`` events or more."""
    anchored = read_anchor(path)
    return anchored is not None and anchored[0] >= seq


def write_anchor(path: Path, head: Head) -> None:
    """Record a head outside the store, atomically, never over a longer one.

    Several processes (nodes, too, if they share the file) write it: the anchor is
    read again just before the rename, and a race between that read and the rename
    may leave the slightly older head, which is still in the chain. No fsync: the
    rename is atomic, and a power cut may only keep an older head, still valid.
    """
    if _holds(path, head[0]):
        return
    spare = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        spare.write_text(head_text(head) + "\n")
        if not _holds(path, head[0]):
            spare.replace(path)
    finally:
        spare.unlink(missing_ok=True)


def anchor_head(path: Path, head: Head) -> None:
    """The store's hook: anchor the head a transaction just committed (a few syscalls on
    a small file, inline). A failure is logged, never raised: the change is committed."""
    try:
        write_anchor(path, head)
    except (OSError, ConfigError) as exc:
        log.warning("audit_unanchored", anchor=str(path), head=head_text(head), problem=str(exc))
