"""Signed, opaque unsubscribe tokens.

A token names a recipient only by the SHA-256 identity hash of the address,
so it can travel in URLs and in ``unsubscribe+TOKEN@domain`` without revealing
the address. Layout of the binary payload, before URL-safe base64 without
padding::

    version   1 byte   (1)
    key id    4 bytes  first bytes of sha256(key): finds the key without trying all
    recipient 32 bytes raw identity hash
    issued    4 bytes  unix seconds, big-endian unsigned (good until 2106)
    kind      1 byte   0 global, 1 topic, 2 partner, 3 confirm (a double opt-in)
    name      rest     utf-8 topic or partner name (empty for global)
    tag       16 bytes HMAC-SHA256 over everything before it, truncated

Keys rotate by prepending: ``keys[0]`` signs, every key in the list verifies.

Short tokens go where an address's local part must hold them
(``unsubscribe+T@``, the VERP sender ``bounce+T@``): RFC 5321 allows 64
octets there and MTAs may lower-case it. 25 bytes as lower-case base32, 40
characters::

    version   1 byte   0x20 | kind (0 global, 1 topic, 2 partner)
    key id    2 bytes  first bytes of sha256(key)
    recipient 8 bytes  prefix of the identity hash
    scope     4 bytes  prefix of sha256(scope)
    issued    2 bytes  unix days, big-endian
    tag       8 bytes  HMAC-SHA256 over everything before it, truncated

The recipient is found through the send ledger, which holds the full hash of
everyone mailed: the ledger's hashes with this prefix, and of those the ones
mailed in a topic matching the scope digest. Forging needs the key (a blind
guess passes with odds 2^-64, and every guess costs a mail); another recipient
shares a 64-bit prefix with odds n/2^64 (5e-13 for ten million addresses),
and if two ever did the token would be ambiguous and honoured for neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = 1
MIN_KEY_BYTES = 16
KEY_ID_BYTES = 4
TAG_BYTES = 16
MAX_TOKEN_CHARS = 512  # far above any real token; refuse to decode more

_HEAD = struct.Struct(">B4s32sIB")  # version, key id, recipient, issued, kind
_MIN_PAYLOAD = _HEAD.size + TAG_BYTES
# "confirm:PURPOSE" is not an opt-out: it confirms a double opt-in request
_KINDS = {"global": 0, "topic": 1, "partner": 2, "confirm": 3}
_KIND_NAMES = {number: name for name, number in _KINDS.items()}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


SHORT_VERSION = 0x20
SHORT_KEY_ID_BYTES = 2
SHORT_RECIPIENT_BYTES = 8
SHORT_TAG_BYTES = 8
SHORT_TOKEN_CHARS = 40
_SHORT = struct.Struct(">B2s8s4sH")  # version|kind, key id, recipient prefix, scope, day
_SHORT_KINDS = {"global": 0, "topic": 1, "partner": 2}
_SHORT_KIND_NAMES = {number: name for name, number in _SHORT_KINDS.items()}
_BASE32 = re.compile(r"[a-z2-7]{40}")
DAY = 86400


class InvalidToken(Exception):
    """A token that must not be honoured; the message says why, never which key."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a token asserts: this recipient opted out of this scope."""

    recipient: str  # 64-char lowercase hex sha256 identity of the address
    scope: str  # "global", "topic:NAME" or "partner:NAME"
    issued: int  # unix seconds


@dataclass(frozen=True, slots=True)
class ShortClaims:
    """What a short token asserts; the recipient is known by a hash prefix only."""

    prefix: str  # 16-char lowercase hex: the identity hash's first 8 bytes
    kind: str  # "global", "topic" or "partner"
    scope_digest: bytes  # sha256(scope)[:4]
    issued: int  # unix seconds at the start of the issue day

    def scope_for(self, topic: str) -> str | None:
        """The scope to honour if a copy mailed in ``topic`` could have carried the token.

        A partner's name is not in the ledger, so a partner token matches any copy and
        its opt-out by mail is honoured globally (more than asked, never less).
        """
        if self.kind == "partner":
            return "global"
        scope = "global" if self.kind == "global" else f"topic:{topic}"
        return scope if scope_digest(scope) == self.scope_digest else None


def scope_digest(scope: str) -> bytes:
    """The 4 bytes a short token keeps of its scope."""
    return hashlib.sha256(scope.encode("utf-8")).digest()[:4]


def key_id(key: bytes) -> bytes:
    """The public 4-byte name of a key, stored in every token it signs."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


class TokenSigner:
    """Issues and verifies tokens; ``keys[0]`` signs, all keys verify."""

    __slots__ = ("_macs", "_signing_id", "_signing_mac")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one token key is required")
        macs: dict[bytes, list[hmac.HMAC]] = {}
        for position, key in enumerate(keys):
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"token key #{position} is shorter than {MIN_KEY_BYTES} bytes")
            macs.setdefault(key_id(key), []).append(hmac.new(key, digestmod=hashlib.sha256))
        self._macs = macs
        self._signing_id = key_id(keys[0])
        self._signing_mac = hmac.new(keys[0], digestmod=hashlib.sha256)

    def issue(self, claims: Claims) -> str:
        """Return the URL- and local-part-safe token for ``claims``."""
        recipient = _recipient_bytes(claims.recipient)
        kind, name = _split_scope(claims.scope)
        if not 0 <= claims.issued <= 0xFFFFFFFF:
            raise ValueError("issued must be unix seconds between 1970 and 2106")
        body = _HEAD.pack(VERSION, self._signing_id, recipient, claims.issued, kind) + name
        mac = self._signing_mac.copy()
        mac.update(body)
        payload = body + mac.digest()[:TAG_BYTES]
        return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")

    def verify(self, token: str, *, max_age: int | None = None, now: int | None = None) -> Claims:
        """Return the claims of a genuine token or raise :class:`InvalidToken`."""
        payload = _decode(token)
        body, tag = payload[:-TAG_BYTES], payload[-TAG_BYTES:]
        version, kid, recipient, issued, kind = _HEAD.unpack_from(body)
        if version != VERSION:
            raise InvalidToken(f"unsupported token version {version}")
        candidates = self._macs.get(kid)
        if candidates is None:
            raise InvalidToken("token signed with an unknown or retired key")
        if not any(_tag_matches(mac, body, tag) for mac in candidates):
            raise InvalidToken("bad token signature")
        claims = Claims(recipient.hex(), _join_scope(kind, body[_HEAD.size :]), issued)
        if max_age is not None:
            current = int(time.time()) if now is None else now
            if current - issued > max_age:
                raise InvalidToken("token expired")
        return claims

    def issue_short(self, claims: Claims) -> str:
        """The 40-character, case-insensitive token for a local part (not for confirm: scopes)."""
        recipient = _recipient_bytes(claims.recipient)
        kind, _, name = claims.scope.partition(":")
        if kind not in _SHORT_KINDS or (kind == "global") == bool(name):
            raise ValueError(
                f"a short token's scope is global, topic:NAME or partner:NAME, not {claims.scope!r}"
            )
        body = _SHORT.pack(
            SHORT_VERSION | _SHORT_KINDS[kind],
            self._signing_id[:SHORT_KEY_ID_BYTES],
            recipient[:SHORT_RECIPIENT_BYTES],
            scope_digest(claims.scope),
            min(claims.issued // DAY, 0xFFFF),
        )
        mac = self._signing_mac.copy()
        mac.update(body)
        payload = body + mac.digest()[:SHORT_TAG_BYTES]
        return base64.b32encode(payload).decode("ascii").lower()

    def verify_short(self, token: str) -> ShortClaims:
        """Return the claims of a genuine short token (any letter case) or raise InvalidToken."""
        text = token.lower()
        if not _BASE32.fullmatch(text):
            raise InvalidToken("malformed short token: expected 40 base32 characters")
        payload = base64.b32decode(text.upper())
        body, tag = payload[:-SHORT_TAG_BYTES], payload[-SHORT_TAG_BYTES:]
        head, kid, prefix, digest, day = _SHORT.unpack(body)
        if head & 0xF0 != SHORT_VERSION or head & 0x0F not in _SHORT_KIND_NAMES:
            raise InvalidToken(f"unsupported short token version {head:#04x}")
        candidates = [
            mac
            for full, macs in self._macs.items()
            if full[:SHORT_KEY_ID_BYTES] == kid
            for mac in macs
        ]
        if not candidates:
            raise InvalidToken("token signed with an unknown or retired key")
        if not any(_tag_matches(mac, body, tag, SHORT_TAG_BYTES) for mac in candidates):
            raise InvalidToken("bad token signature")
        return ShortClaims(prefix.hex(), _SHORT_KIND_NAMES[head & 0x0F], digest, day * DAY)


def is_short(token: str) -> bool:
    """Whether a token has the short form (it may still be forged)."""
    return len(token) == SHORT_TOKEN_CHARS and _BASE32.fullmatch(token.lower()) is not None


def _tag_matches(mac: hmac.HMAC, body: bytes, tag: bytes, size: int = TAG_BYTES) -> bool:
    copy = mac.copy()
    copy.update(body)
    return hmac.compare_digest(copy.digest()[:size], tag)


def _decode(token: str) -> bytes:
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(token):
        raise InvalidToken("malformed token: unexpected characters or length")
    try:
        payload = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("malformed token: not base64") from exc
    # One token, one spelling: reject strings whose unused bits were altered.
    if base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii") != token:
        raise InvalidToken("malformed token: non-canonical base64")
    if len(payload) < _MIN_PAYLOAD:
        raise InvalidToken("malformed token: truncated")
    return payload


def _recipient_bytes(recipient: str) -> bytes:
    if not _HEX64.fullmatch(recipient):
        raise ValueError("recipient must be a 64-character lowercase hex sha256 digest")
    return bytes.fromhex(recipient)


def _split_scope(scope: str) -> tuple[int, bytes]:
    if scope == "global":
        return _KINDS["global"], b""
    kind, sep, name = scope.partition(":")
    if not sep or kind not in ("topic", "partner", "confirm") or not name:
        raise ValueError(
            f"scope must be 'global', 'topic:NAME', 'partner:NAME' or 'confirm:PURPOSE', "
            f"not {scope!r}"
        )
    return _KINDS[kind], name.encode("utf-8")


def _join_scope(kind: int, name: bytes) -> str:
    kind_name = _KIND_NAMES.get(kind)
    if kind_name is None:
        raise InvalidToken("malformed token: unknown scope kind")
    if kind_name == "global":
        if name:
            raise InvalidToken("malformed token: extra bytes after a global scope")
        return "global"
    if not name:
        raise InvalidToken("malformed token: empty scope name")
    try:
        return f"{kind_name}:{name.decode('utf-8')}"
    except UnicodeDecodeError as exc:
        raise InvalidToken("malformed token: scope is not utf-8") from exc
