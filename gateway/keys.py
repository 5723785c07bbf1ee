"""Token signing keys: a file of hex keys, one per line, the first signs; made on first start."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import structlog

from suppression.errors import ConfigError

log = structlog.get_logger("optgate.keys")


def load_keys(path: Path) -> list[bytes]:
    """Token keys from a file (hex, one per line, first signs); created (0600) if missing."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        log.info("token_key_created", path=str(path))
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
        keys = [bytes.fromhex(line) for line in lines if line and not line.startswith("#")]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[unsubscribe] key_file {path}: {exc}") from None
    if not keys or any(len(k) < 16 for k in keys):
        raise ConfigError(f"[unsubscribe] key_file {path}: needs hex keys of 16 bytes or more")
    return keys
