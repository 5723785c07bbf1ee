"""DKIM signing of every relayed copy, after the rewrite (RFC 6376; Ed25519: RFC 8463).

The keys whose domain is the From domain or a parent of it sign, all of them
(RSA and Ed25519 dual signing), in configured order, top to bottom. Signed:
the standard set below that is present plus ``extra_headers``; From,
List-Unsubscribe and List-Unsubscribe-Post are listed once more than they
occur (even when absent), so none can be added later (RFC 6376 §8.15).

dkimpy does the DKIM work: parsing, canonicalisation, header selection, the
tag list and its folding (``dkim.DKIM.sign`` step by step). Only the
private-key operation is ``cryptography``'s (OpenSSL; dkimpy's RSA is pure
Python, about 12 ms per RSA-2048 signature), and relaxed body
canonicalisation is an equal but faster expression than dkimpy's. RSA
PKCS#1 v1.5 and Ed25519 are deterministic, so each field is byte for byte
what ``dkim.sign`` returns for the same key, headers, canonicalisation and
time. The private-key operation releases the GIL: run ``sign`` in a thread.

The message is signed as it goes on the wire: line ends become CRLF (a lone
CR or LF too) and the last line gets one, as the SMTP client sends it, and
the result is returned in that form (OpenDKIM mis-canonicalises a body whose
last line has no line end).

Earlier ``DKIM-Signature`` fields stay where they are: a copy that passes
unchanged (transactional mail) keeps a signature that still verifies, and
one the rewrite broke counts as no signature at all (RFC 6376 §6.1).

:meth:`Signer.sign` never raises: a message it cannot or need not sign (no
From, several From domains, no key for the domain, a header block dkimpy
cannot parse) comes back as the very same object, for the caller to log.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import correct_empty_body, strip_trailing_lines

from gateway.outbound.downgrade import to_seven_bit
from suppression.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import Dkim

Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_ALGORITHMS: dict[str, Algorithm] = {"rsa": "rsa", "ed25519": "ed25519"}

SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
OVERSIGNED_HEADERS = ("from", "list-unsubscribe", "list-unsubscribe-post")
OVERSIGNED = tuple(name.encode("ascii") for name in OVERSIGNED_HEADERS)
MIN_RSA_BITS = 2048
_FIELD_NAME = b"DKIM-Signature"
_CRLF = b"\r\n"
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
_CACHED_FIELD = 1000  # longest header field value whose results are remembered
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")  # WSP runs, except a lone space
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_SHA256 = utils.Prehashed(hashes.SHA256())
_PKCS1V15 = padding.PKCS1v15()


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One ``[dkim] keys`` entry with its private key."""

    domain: str  # d=, lower-case ASCII (IDNA)
    selector: str  # s=
    algorithm: Algorithm
    private_key: bytes  # PEM (RSA); PEM, base64 seed or raw 32-byte seed (Ed25519)


def parse_key_entry(entry: str) -> DkimKey:
    """``DOMAIN:SELECTOR:ALGORITHM:KEYFILE`` -> a checked key; ConfigError naming the entry."""
    parts = entry.split(":", 3)
    if len(parts) != 4 or not all(part.strip() for part in parts):
        raise ConfigError(f"[dkim] keys: {entry!r} is not DOMAIN:SELECTOR:ALGORITHM:KEYFILE")
    domain, selector, name, path = (part.strip() for part in parts)
    algorithm = _ALGORITHMS.get(name)
    if algorithm is None:
        raise ConfigError(f"[dkim] keys: {entry!r}: algorithm must be rsa or ed25519")
    try:
        key = DkimKey(
            _ascii_domain(domain), _checked_selector(selector), algorithm, Path(path).read_bytes()
        )
        load_private_key(key)
    except OSError as exc:
        raise ConfigError(f"[dkim] keys: {entry!r}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"[dkim] keys: {entry!r}: {exc}") from None
    return key


def load_private_key(key: DkimKey) -> PrivateKey:
    """The key's private key, loaded once per file content; ValueError says what is wrong."""
    return _private_key(key.algorithm, key.private_key)


def for_next_hop(data: bytes, signer: Signer | None, *, seven_bit: bool) -> tuple[bytes, bool]:
    """A copy as it goes out: 7bit when the next hop lacks 8BITMIME (RFC 6152), so that
    no later hop converts the body under the signature, then signed; whether it was."""
    ready = to_seven_bit(data) if seven_bit else data
    if signer is None:
        return ready, False
    signed = signer.sign(ready)
    return signed, signed is not ready


def sender_domain(message: bytes) -> str | None:
    """The From domain keys are chosen by (lower-case ASCII); None if none or several."""
    try:
        headers, _ = _split(_wire(message))
        return _from_domain(headers)
    except Exception:  # any bytes at all: no domain
        return None


@dataclass(frozen=True, slots=True)
class _Key:
    """A loaded key: its tags and the private-key operation on a SHA-256 digest."""

    domain: str
    selector: bytes
    algorithm: bytes  # a=
    sign: Callable[[bytes], bytes]

    def covers(self, domain: str) -> bool:
        return domain == self.domain or domain.endswith("." + self.domain)


class Signer:
    """Signs each copy with the keys for its From domain."""

    def __init__(
        self,
        keys: Sequence[DkimKey],
        *,
        canonicalization: str = "relaxed/relaxed",
        extra_headers: Sequence[str] = (),
    ) -> None:
        try:
            self._canon = dkim.CanonicalizationPolicy.from_c_value(canonicalization.encode())
        except (dkim.InvalidCanonicalizationPolicyError, UnicodeEncodeError):
            raise ConfigError(
                f"[dkim] canonicalization: {canonicalization!r} is not header/body "
                "with relaxed or simple each"
            ) from None
        self._keys = tuple(_loaded(key) for key in keys)
        names = frozenset(SIGNED_HEADERS) | _checked_headers(extra_headers)
        self._signed = frozenset(name.encode("ascii") for name in names)

    @classmethod
    def from_config(cls, dkim: Dkim) -> Signer | None:
        """The signer ``[dkim]`` describes; None when it lists no keys."""
        if not dkim.keys:
            return None
        return cls(
            [parse_key_entry(entry) for entry in dkim.keys],
            canonicalization=dkim.canonicalization,
            extra_headers=dkim.extra_headers,
        )

    def sign(self, message: bytes) -> bytes:
        """The message (line ends CRLF) with DKIM-Signature fields on top, or ``message``."""
        try:
            return self._sign(message)
        except Exception:  # a message we cannot sign still goes out, unsigned
            return message

    def _sign(self, message: bytes) -> bytes:
        wire = _wire(message)
        headers, body = _split(wire)
        domain = _from_domain(headers)
        keys = [key for key in self._keys if domain and key.covers(domain)]
        if not keys:
            return message
        # only fields h= names matter to dkimpy's selection: canonicalise just those
        signed = [field for field in headers if field[0].lower() in self._signed]
        include = [name.lower() for name, _ in signed] + list(OVERSIGNED)
        canonical = [_canonical_field(self._canon.header_algorithm, *field) for field in signed]
        body_hash = base64.b64encode(hashlib.sha256(self._canonical_body(body)).digest())
        now = str(int(time.time())).encode("ascii")
        fields = [self._field(key, include, canonical, body_hash, now) for key in keys]
        return b"".join(fields) + wire

    def _canonical_body(self, body: bytes) -> bytes:
        """dkimpy's body canonicalisation; relaxed by a faster, equal expression."""
        if self._canon.body_algorithm is not dkim.RelaxedCanonicalization:
            return bytes(self._canon.canonicalize_body(body))
        # dkimpy strips trailing WSP, then replaces every run of WSP (each single space
        # too: 0.3 ms for 4 KB) by one space; here: runs other than one space, then " CRLF"
        compressed = _WSP_RUN.sub(b" ", body).replace(b" \r\n", _CRLF)
        return bytes(correct_empty_body(strip_trailing_lines(compressed)))

    def _field(
        self,
        key: _Key,
        include: list[bytes],
        canonical: list[tuple[bytes, bytes]],
        body_hash: bytes,
        now: bytes,
    ) -> bytes:
        """One DKIM-Signature field, as ``dkim.DKIM.sign`` and ``gen_header`` build it."""
        domain = key.domain.encode("ascii")
        tags = [
            (b"v", b"1"),
            (b"a", key.algorithm),
            (b"c", self._canon.to_c_value()),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", key.selector),
            (b"t", now),
            (b"h", b" : ".join(include)),
            (b"bh", body_hash),
            (b"b", b"0" * 60),  # a placeholder, so that b= folds onto a line of its own
        ]
        unsigned = dkim.RE_BTAG.sub(rb"\1", _folded(tags, _CRLF))
        hasher = hashlib.sha256()
        dkim.hash_headers(
            hasher, self._canon, canonical, include, (_FIELD_NAME, b" " + unsigned), {}
        )
        tags[-1] = (b"b", base64.b64encode(key.sign(hasher.digest())))
        return _FIELD_NAME + b": " + _folded(tags, _CRLF, end=_CRLF)


def _folded(tags: list[tuple[bytes, bytes]], linesep: bytes, end: bytes = b"") -> bytes:
    value = b"; ".join(b"=".join(tag) for tag in tags) + end
    return bytes(dkim.fold(value, namelen=len(_FIELD_NAME), linesep=linesep))


def _wire(message: bytes) -> bytes:
    """The message as an SMTP client sends it: CRLF line ends, a CRLF at the end."""
    if b"\r" not in message:
        wire = message.replace(b"\n", _CRLF)
    elif message.count(b"\r") == message.count(_CRLF) == message.count(b"\n"):
        wire = message
    else:
        wire = _LINE_END.sub(_CRLF, message)
    return wire if wire.endswith(_CRLF) else wire + _CRLF


def _canonical_field(algorithm: Any, name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """dkimpy's canonical form of one header field (remembered, if short)."""
    if len(value) > _CACHED_FIELD:
        return _canonical(algorithm, name, value)
    return _canonical_cached(algorithm, name, value)


def _canonical(algorithm: Any, name: bytes, value: bytes) -> tuple[bytes, bytes]:
    ((canonical_name, canonical_value),) = algorithm.canonicalize_headers([(name, value)])
    return canonical_name, canonical_value


# the copies of one message share all signed fields but List-Unsubscribe
_canonical_cached = functools.lru_cache(maxsize=2048)(_canonical)


def _split(wire: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse`` of a wire-form message, without splitting the body into lines."""
    end = wire.find(b"\r\n\r\n")
    if wire.startswith(_CRLF) or end < 0:
        headers, body = dkim.rfc822_parse(wire)
        return headers, bytes(body)
    headers, _ = dkim.rfc822_parse(wire[: end + 2])
    return headers, wire[end + 4 :]


def _from_domain(headers: list[list[bytes]]) -> str | None:
    """The one domain of the one From field's addresses, or None."""
    values = [value for name, value in headers if name.lower() == b"from"]
    if len(values) != 1:
        return None
    return _domain_of(values[0]) if len(values[0]) > _CACHED_FIELD else _domain_cached(values[0])


def _domain_of(value: bytes) -> str | None:
    text = value.decode("utf-8", "replace")
    addresses = [address for _, address in getaddresses([text])]
    domains = {address.rpartition("@")[2] for address in addresses}
    if len(domains) != 1 or not all("@" in address for address in addresses):
        return None
    try:
        return _ascii_domain(domains.pop())
    except ValueError:
        return None


_domain_cached = functools.lru_cache(maxsize=1024)(_domain_of)  # copies share their From


def _ascii_domain(domain: str) -> str:
    """Lower-case ASCII form of a domain name; ValueError if it is not one."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{domain!r} is not a domain name") from None
    if len(name) > 253 or not _DOMAIN.fullmatch(name):
        raise ValueError(f"{domain!r} is not a domain name")
    return name


def _checked_selector(selector: str) -> str:
    if not selector.isascii() or not _DOMAIN.fullmatch(selector):
        raise ValueError(f"selector {selector!r} is not dot-separated labels")
    return selector


def _checked_headers(names: Sequence[str]) -> frozenset[str]:
    """Extra header names, lower-cased; ConfigError for a malformed or unsignable one."""
    checked = set()
    for name in names:
        lower = name.strip().lower()
        if not _HEADER_NAME.fullmatch(lower):
            raise ConfigError(f"[dkim] extra_headers: {name!r} is not a header field name")
        if lower.encode() in dkim.DKIM.SHOULD_NOT:
            raise ConfigError(f"[dkim] extra_headers: {name} must not be signed (RFC 6376 §5.4)")
        checked.add(lower)
    return frozenset(checked)


def _loaded(key: DkimKey) -> _Key:
    """A key ready to sign; ConfigError if it does not parse."""
    try:
        domain = _ascii_domain(key.domain)
        selector = _checked_selector(key.selector).encode("ascii")
        private = load_private_key(key)
    except ValueError as exc:
        raise ConfigError(f"[dkim] key {key.domain}:{key.selector}: {exc}") from None
    if isinstance(private, rsa.RSAPrivateKey):
        return _Key(domain, selector, b"rsa-sha256", functools.partial(_rsa_sign, private))
    return _Key(domain, selector, b"ed25519-sha256", private.sign)


def _rsa_sign(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    return key.sign(digest, _PKCS1V15, _SHA256)


@functools.lru_cache(maxsize=64)  # one key file often serves several domains
def _private_key(algorithm: str, data: bytes) -> PrivateKey:
    """Load and check a private key; ValueError says what is wrong."""
    if algorithm == "rsa":
        return _rsa_key(data)
    if algorithm == "ed25519":
        return _ed25519_key(data)
    raise ValueError(f"algorithm must be rsa or ed25519, not {algorithm!r}")


def _rsa_key(data: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed")
    return key


def _ed25519_key(data: bytes) -> ed25519.Ed25519PrivateKey:
    """PEM (PKCS#8), base64 of the 32-byte seed (dkimpy's format) or the raw seed."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("not an unencrypted PEM private key") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("not an Ed25519 key")
        return key
    seed = data
    if len(data) != 32:
        try:
            seed = base64.b64decode(b"".join(data.split()), validate=True)
        except ValueError:
            seed = b""
    if len(seed) != 32:
        raise ValueError("not an Ed25519 key (PEM, or the 32-byte seed raw or in base64)")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
