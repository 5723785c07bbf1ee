"""Signed, opaque unsubscribe tokens: only the key opens them.

A token names a recipient by the SHA-256 identity hash of the address, sealed
with the token key, so neither the address nor its hash can be read from a
link or an ``unsubscribe+TOKEN@`` address (an unsealed hash is re-identified
by hashing a list of candidate addresses). Layout of the binary payload,
before URL-safe base64 without padding::

    version   1 byte   (2)
    key id    4 bytes  first bytes of sha256(key): finds the key without trying all
    siv       16 bytes HMAC-SHA256(mac key, version, key id, plaintext), truncated
    sealed    rest     the plaintext XOR a keystream drawn from the siv:
                       kind 1 byte (0 global, 1 topic, 2 partner, 3 confirm: a double
                       opt-in), recipient 32 bytes (raw identity hash), issued 4 bytes
                       (unix seconds, big-endian unsigned, good until 2106), name (utf-8
                       topic or partner name; empty for global)

That is SIV, deterministic authenticated encryption (Rogaway and Shrimpton; the
construction of RFC 5297) with HMAC-SHA256 as its PRF: the siv authenticates
everything and is the IV of the keystream (HMAC-SHA256(encryption key, header,
siv, counter) blocks). The mac and encryption keys are derived from each token
key. Keys rotate by prepending: ``keys[0]`` issues, every key in the list verifies.

Short tokens go where an address's local part must hold them
(``unsubscribe+T@``, the VERP sender ``bounce+T@``): RFC 5321 allows 64
octets there and MTAs may lower-case it. 25 bytes as lower-case base32, 40
characters, sealed the same way with an 8-byte siv::

    version   1 byte   0x30 | kind (0 global, 1 topic, 2 partner)
    key id    2 bytes  first bytes of sha256(key)
    sealed    14 bytes recipient: prefix 8 bytes of the identity hash; scope: prefix
                       4 bytes of sha256(scope); issued: 2 bytes, unix days, big-endian
    siv       8 bytes

The recipient is found through the send ledger, which holds the full hash of
everyone mailed: the ledger's hashes with this prefix, and of those the ones
mailed in a topic matching the scope digest. Forging needs the key (a blind
guess passes with odds 2^-64, and every guess costs a mail); another recipient
shares a 64-bit prefix with odds n/2^64 (5e-13 for ten million addresses),
and if two ever did the token would be ambiguous and honoured for neither.

Tokens mailed before sealing (long version 1, short 0x20: the same fields, the
recipient in the clear, an HMAC tag with the key itself) keep verifying; none is
issued any more.
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

from gateway.errors import InvalidToken
from suppression.errors import OptgateError
from suppression.model import check_name
from suppression.scope import GLOBAL, Scope, ScopeKind

VERSION = 2
LEGACY_VERSION = 1  # the recipient in the clear: verified, never issued
MIN_KEY_BYTES = 16
KEY_ID_BYTES = 4
TAG_BYTES = 16
MAX_TOKEN_CHARS = 512  # far above any real token; refuse to decode more

_SEALED = struct.Struct(">B32sI")  # kind, recipient, issued; the name follows
_SEALED_HEAD = 1 + KEY_ID_BYTES  # version, key id
_LEGACY = struct.Struct(">B4s32sIB")  # version, key id, recipient, issued, kind
_MIN_PAYLOAD = _SEALED_HEAD + TAG_BYTES + _SEALED.size  # the legacy layout's minimum too
# "confirm:PURPOSE" is not an opt-out: it confirms a double opt-in request
_KINDS = {"global": 0, "topic": 1, "partner": 2, "confirm": 3}
_KIND_NAMES = {number: name for name, number in _KINDS.items()}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


SHORT_VERSION = 0x30
SHORT_LEGACY_VERSION = 0x20
SHORT_KEY_ID_BYTES = 2
SHORT_RECIPIENT_BYTES = 8
SHORT_TAG_BYTES = 8
SHORT_TOKEN_CHARS = 40
_SHORT_HEAD = 1 + SHORT_KEY_ID_BYTES
_SHORT_SEALED = struct.Struct(">8s4sH")  # recipient prefix, scope digest, day
_SHORT_LEGACY = struct.Struct(">B2s8s4sH")  # version|kind, key id, prefix, scope, day
_SHORT_KINDS: dict[ScopeKind, int] = {"global": 0, "topic": 1, "partner": 2}
_SHORT_KIND_NAMES = {number: name for name, number in _SHORT_KINDS.items()}
_BASE32 = re.compile(r"[a-z2-7]{40}")
DAY = 86400


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What a double opt-in request's link confirms: consent to a purpose (no opt-out)."""

    purpose: str

    def __post_init__(self) -> None:
        check_name(self.purpose, "purpose")


@dataclass(frozen=True, slots=True)
class Claims:
    """What a token asserts: this recipient opts out of this scope (or confirms a consent)."""

    recipient: str  # 64-char lowercase hex sha256 identity of the address
    scope: Scope | Confirmation
    issued: int  # unix seconds


@dataclass(frozen=True, slots=True)
class ShortClaims:
    """What a short token asserts; the recipient is known by a hash prefix only."""

    prefix: str  # 16-char lowercase hex: the identity hash's first 8 bytes
    kind: ScopeKind
    scope_digest: bytes  # sha256(scope)[:4]
    issued: int  # unix seconds at the start of the issue day

    def scope_for(self, topic: str) -> Scope | None:
        """The scope to honour if a copy mailed in ``topic`` could have carried the token.

        A partner's name is not in the ledger, so a partner token matches any copy and
        its opt-out by mail is honoured globally (more than asked, never less).
        """
        if self.kind != "topic":
            return GLOBAL if self.kind == "partner" or _digest_of(GLOBAL, self) else None
        try:
            scope = Scope.topic(topic)
        except OptgateError:  # not a topic optgate mails in
            return None
        return scope if _digest_of(scope, self) else None


def _digest_of(scope: Scope, claims: ShortClaims) -> bool:
    return scope_digest(scope) == claims.scope_digest


def scope_digest(scope: Scope) -> bytes:
    """The 4 bytes a short token keeps of its scope."""
    return hashlib.sha256(str(scope).encode("utf-8")).digest()[:4]


def key_id(key: bytes) -> bytes:
    """The public 4-byte name of a key, stored in every token it signs."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


@dataclass(frozen=True, slots=True)
class _Key:
    """One token key, ready to use: its id, the sealing keys derived from it, its legacy mac."""

    full_id: bytes
    mac: hmac.HMAC  # the siv
    cipher: hmac.HMAC  # the keystream
    legacy: hmac.HMAC  # the tag of tokens mailed before sealing

    @classmethod
    def of(cls, key: bytes) -> _Key:
        def derived(label: bytes) -> hmac.HMAC:
            sub = hmac.new(key, label, hashlib.sha256).digest()
            return hmac.new(sub, digestmod=hashlib.sha256)

        return cls(
            key_id(key),
            derived(b"optgate token siv"),
            derived(b"optgate token keystream"),
            hmac.new(key, digestmod=hashlib.sha256),
        )

    def seal(self, head: bytes, plain: bytes, siv_bytes: int) -> bytes:
        """``siv || sealed`` for a plaintext under this header."""
        siv = _mac(self.mac, head + plain)[:siv_bytes]
        return siv + _xor(plain, self._keystream(head, siv, len(plain)))

    def open(self, head: bytes, siv: bytes, sealed: bytes) -> bytes | None:
        """The plaintext, or None when the siv does not authenticate it under this key."""
        plain = _xor(sealed, self._keystream(head, siv, len(sealed)))
        return plain if _tag_matches(self.mac, head + plain, siv) else None

    def _keystream(self, head: bytes, siv: bytes, length: int) -> bytes:
        blocks = (_mac(self.cipher, head + siv + bytes([n])) for n in range(-(-length // 32)))
        return b"".join(blocks)[:length]


class TokenSigner:
    """Issues and verifies tokens; ``keys[0]`` issues, all keys verify."""

    __slots__ = ("_keys", "_signing")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one token key is required")
        by_id: dict[bytes, list[_Key]] = {}
        for position, key in enumerate(keys):
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"token key #{position} is shorter than {MIN_KEY_BYTES} bytes")
            ready = _Key.of(key)
            by_id.setdefault(ready.full_id, []).append(ready)
        self._keys = by_id
        self._signing = by_id[key_id(keys[0])][0]

    def issue(self, claims: Claims) -> str:
        """Return the URL- and local-part-safe token for ``claims``."""
        recipient = _recipient_bytes(claims.recipient)
        kind, name = _split_scope(claims.scope)
        if not 0 <= claims.issued <= 0xFFFFFFFF:
            raise ValueError("issued must be unix seconds between 1970 and 2106")
        head = bytes([VERSION]) + self._signing.full_id
        plain = _SEALED.pack(kind, recipient, claims.issued) + name
        payload = head + self._signing.seal(head, plain, TAG_BYTES)
        return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")

    def verify(self, token: str, *, max_age: int | None = None, now: int | None = None) -> Claims:
        """Return the claims of a genuine token or raise :class:`InvalidToken`."""
        payload = _decode(token)
        version, kid = payload[0], payload[1:_SEALED_HEAD]
        if version not in (VERSION, LEGACY_VERSION):
            raise InvalidToken(f"unsupported token version {version}")
        candidates = self._keys.get(kid)
        if candidates is None:
            raise InvalidToken("token signed with an unknown or retired key")
        if version == LEGACY_VERSION:
            claims = _legacy_claims(payload, candidates)
        else:
            head, siv = payload[:_SEALED_HEAD], payload[_SEALED_HEAD : _SEALED_HEAD + TAG_BYTES]
            sealed = payload[_SEALED_HEAD + TAG_BYTES :]
            plain = _open(candidates, head, siv, sealed)
            kind, recipient, issued = _SEALED.unpack_from(plain)
            claims = Claims(recipient.hex(), _join_scope(kind, plain[_SEALED.size :]), issued)
        if max_age is not None:
            current = int(time.time()) if now is None else now
            if current - claims.issued > max_age:
                raise InvalidToken("token expired")
        return claims

    def issue_short(self, claims: Claims) -> str:
        """The 40-character, case-insensitive token for a local part (not for confirm: scopes)."""
        recipient = _recipient_bytes(claims.recipient)
        scope = claims.scope
        if not isinstance(scope, Scope):
            raise ValueError(f"a short token's scope is a suppression scope, not {scope!r}")
        head = bytes([SHORT_VERSION | _SHORT_KINDS[scope.kind]]) + self._signing.full_id[:2]
        plain = _SHORT_SEALED.pack(
            recipient[:SHORT_RECIPIENT_BYTES],
            scope_digest(scope),
            min(claims.issued // DAY, 0xFFFF),
        )
        sealed = self._signing.seal(head, plain, SHORT_TAG_BYTES)
        payload = head + sealed[SHORT_TAG_BYTES:] + sealed[:SHORT_TAG_BYTES]  # siv last
        return base64.b32encode(payload).decode("ascii").lower()

    def verify_short(self, token: str) -> ShortClaims:
        """Return the claims of a genuine short token (any letter case) or raise InvalidToken."""
        text = token.lower()
        if not _BASE32.fullmatch(text):
            raise InvalidToken("malformed short token: expected 40 base32 characters")
        payload = base64.b32decode(text.upper())
        head, kid = payload[0], payload[1:_SHORT_HEAD]
        version, kind = head & 0xF0, head & 0x0F
        if version not in (SHORT_VERSION, SHORT_LEGACY_VERSION) or kind not in _SHORT_KIND_NAMES:
            raise InvalidToken(f"unsupported short token version {head:#04x}")
        candidates = [
            key
            for full, keys in self._keys.items()
            if full[:SHORT_KEY_ID_BYTES] == kid
            for key in keys
        ]
        if not candidates:
            raise InvalidToken("token signed with an unknown or retired key")
        body, siv = payload[:-SHORT_TAG_BYTES], payload[-SHORT_TAG_BYTES:]
        if version == SHORT_LEGACY_VERSION:
            if not any(_tag_matches(key.legacy, body, siv) for key in candidates):
                raise InvalidToken("bad token signature")
            plain = body[_SHORT_HEAD:]
        else:
            plain = _open(candidates, body[:_SHORT_HEAD], siv, body[_SHORT_HEAD:])
        prefix, digest, day = _SHORT_SEALED.unpack(plain)
        return ShortClaims(prefix.hex(), _SHORT_KIND_NAMES[kind], digest, day * DAY)


def _open(candidates: Sequence[_Key], head: bytes, siv: bytes, sealed: bytes) -> bytes:
    """The plaintext under the first key that authenticates it, or InvalidToken."""
    for key in candidates:
        plain = key.open(head, siv, sealed)
        if plain is not None:
            return plain
    raise InvalidToken("bad token signature")


def _legacy_claims(payload: bytes, candidates: Sequence[_Key]) -> Claims:
    """The claims of a token mailed before sealing (its tag made with the key itself)."""
    body, tag = payload[:-TAG_BYTES], payload[-TAG_BYTES:]
    _, _, recipient, issued, kind = _LEGACY.unpack_from(body)
    if not any(_tag_matches(key.legacy, body, tag) for key in candidates):
        raise InvalidToken("bad token signature")
    return Claims(recipient.hex(), _join_scope(kind, body[_LEGACY.size :]), issued)


def _tag_matches(mac: hmac.HMAC, body: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(_mac(mac, body)[: len(tag)], tag)


def _mac(mac: hmac.HMAC, data: bytes) -> bytes:
    copy = mac.copy()
    copy.update(data)
    return copy.digest()


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data) ^ int.from_bytes(stream)).to_bytes(len(data))


def is_short(token: str) -> bool:
    """Whether a token has the short form (it may still be forged)."""
    return len(token) == SHORT_TOKEN_CHARS and _BASE32.fullmatch(token.lower()) is not None


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


def _split_scope(scope: Scope | Confirmation) -> tuple[int, bytes]:
    if isinstance(scope, Confirmation):
        return _KINDS["confirm"], scope.purpose.encode("utf-8")
    return _KINDS[scope.kind], scope.name.encode("utf-8")


def _join_scope(kind: int, name: bytes) -> Scope | Confirmation:
    kind_name = _KIND_NAMES.get(kind)
    if kind_name is None:
        raise InvalidToken("malformed token: unknown scope kind")
    if kind_name == "global":
        if name:
            raise InvalidToken("malformed token: extra bytes after a global scope")
        return GLOBAL
    if not name:
        raise InvalidToken("malformed token: empty scope name")
    try:
        text = name.decode("utf-8")
        if kind_name == "confirm":
            return Confirmation(text)
        return Scope.topic(text) if kind_name == "topic" else Scope.partner(text)
    except UnicodeDecodeError as exc:
        raise InvalidToken("malformed token: scope is not utf-8") from exc
    except OptgateError as exc:
        raise InvalidToken("malformed token: the scope's name is not valid") from exc
