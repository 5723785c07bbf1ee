"""API keys: random secrets shown once, kept as an HMAC-SHA256 under a salt of their own.

A key reads ``ogk_<id>_<secret>``: the id finds its row, the secret (32 random bytes)
is checked against the digest. The secret is random, so a fast keyed hash is enough:
nobody can guess one from the digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from suppression.errors import OptgateError
from suppression.model import check_name, now

SCOPES = ("read", "write", "erase")  # read: GET; write: changes; erase: subject erasure
PREFIX = "ogk_"
_KEY = re.compile(r"ogk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as the store keeps it (never the secret)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    salt: str
    digest: str
    created: datetime
    revoked: datetime | None = None

    def matches(self, secret: str) -> bool:
        """Whether a presented secret is this key's (constant time)."""
        return hmac.compare_digest(_digest(self.salt, secret), self.digest)

    def allows(self, scope: str) -> bool:
        """Whether the key holds a scope."""
        return scope in self.scopes


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def check_scopes(given: list[str]) -> tuple[str, ...]:
    """Scopes from the command line (``read,write`` or repeated), checked, in SCOPES order."""
    wanted = {part.strip() for text in given for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown or not wanted:
        raise OptgateError(
            f"scope {', '.join(unknown) or '(none)'} is not valid: use {', '.join(SCOPES)}"
        )
    return tuple(s for s in SCOPES if s in wanted)


def new_key(name: str, scopes: tuple[str, ...]) -> tuple[str, ApiKey]:
    """A fresh key: the text to hand over (once) and the record to store."""
    secret = secrets.token_urlsafe(32)
    key_id, salt = secrets.token_hex(6), secrets.token_hex(32)
    record = ApiKey(
        key_id, check_name(name, "API key name"), scopes, salt, _digest(salt, secret), now()
    )
    return f"{PREFIX}{key_id}_{secret}", record


def split_key(text: str) -> tuple[str, str] | None:
    """(id, secret) of a presented key, or None when it is not one optgate makes."""
    found = _KEY.fullmatch(text.strip())
    return (found.group(1), found.group(2)) if found else None
