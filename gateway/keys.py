"""The key file: token keys (hex, one per line, the first signs) and the log key (one
``log:HEX`` line, added the first time optgate runs with a file that lacks it).

Only ``optgate serve`` and ``optgate store migrate`` make the file (``create``):
a key made anywhere else would sign links the server refuses.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import structlog

from suppression.errors import ConfigError

log = structlog.get_logger("optgate.keys")

LOG_KEY = "log:"  # the line of the log key
_SKIPPED = ("#", LOG_KEY)  # lines that are no token key


def load_keys(path: Path, *, create: bool = False) -> list[bytes]:
    """Token keys from a file (hex, one per line, first signs).

    A missing file is a ConfigError naming it, or with ``create`` is made (0600,
    its directory 0700) with one new key.
    """
    if not path.exists():
        if not create:
            raise ConfigError(
                f"[unsubscribe] key_file {path} does not exist: `optgate store migrate` "
                "(or `optgate serve`) makes it; or set [unsubscribe] key_file to the file "
                "the server uses"
            )
        if make_key_file(path):
            log.info("token_key_created", path=str(path))
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
        keys = [bytes.fromhex(line) for line in lines if line and not line.startswith(_SKIPPED)]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[unsubscribe] key_file {path}: {exc}") from None
    if not keys or any(len(k) < 16 for k in keys):
        raise ConfigError(f"[unsubscribe] key_file {path}: needs hex keys of 16 bytes or more")
    return keys


def make_key_file(path: Path, option: str = "[unsubscribe] key_file") -> bool:
    """Make a key file with one new key (0600, its directory 0700) unless one exists.

    True if this call made it. The file appears complete or not at all, so a
    second process never reads it half written. ``option`` names it in errors.
    """
    if path.exists():
        return False
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600
            out.write(secrets.token_hex(32) + "\n")
        os.link(temporary, path)  # fails if another process made it meanwhile: use that one
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create: {exc.strerror}") from None
    finally:
        os.unlink(temporary)
    return True


def load_log_key(path: Path, *, create: bool = False) -> bytes:
    """The key of the digests in log lines (gateway/runtime/logs.py): the key file's ``log:`` line.

    ``create`` (``optgate serve``): a file without one gets one appended. When several
    nodes share the file, the first line in it wins: each node appends, then reads, so
    all see the same first line. Without ``create`` a missing line is an error.
    """
    name = f"[unsubscribe] key_file {path}"
    try:
        text = path.read_text()
        key = _log_key(text)
        if key is None and create:
            with path.open("a") as out:
                newline = "\n" if text and not text.endswith("\n") else ""
                out.write(f"{newline}{LOG_KEY}{secrets.token_hex(32)}\n")
            log.info("log_key_created", path=str(path))
            key = _log_key(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{name}: no log key ({exc}); add a line '{LOG_KEY}' and 64 hex digits"
        ) from None
    if key is None:
        raise ConfigError(f"{name} has no log key yet: optgate serve adds it on its first start")
    if len(key) < 16:
        raise ConfigError(f"{name}: the log key needs 16 bytes or more")
    return key


def _log_key(text: str) -> bytes | None:
    lines = [line.strip() for line in text.splitlines()]
    found = [line[len(LOG_KEY) :] for line in lines if line.startswith(LOG_KEY)]
    return bytes.fromhex(found[0]) if found else None
