"""Token signing keys: a file of hex keys, one per line, the first signs.

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
        keys = [bytes.fromhex(line) for line in lines if line and not line.startswith("#")]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[unsubscribe] key_file {path}: {exc}") from None
    if not keys or any(len(k) < 16 for k in keys):
        raise ConfigError(f"[unsubscribe] key_file {path}: needs hex keys of 16 bytes or more")
    return keys


def make_key_file(path: Path) -> bool:
    """Make a key file with one new key (0600, its directory 0700) unless one exists.

    True if this call made it. The file appears complete or not at all.
    """
    if path.exists():
        return False
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise ConfigError(f"[unsubscribe] key_file {path}: cannot create: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600
            out.write(secrets.token_hex(32) + "\n")
        os.link(temporary, path)  # fails if another process made it meanwhile: use that one
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(f"[unsubscribe] key_file {path}: cannot create: {exc.strerror}") from None
    finally:
        os.unlink(temporary)
    return True
