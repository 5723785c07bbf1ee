"""DKIM keys: generate one, write it 0600, and say what to publish (RFC 6376, RFC 8463)."""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from suppression.errors import OptgateError

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

ALGORITHMS = ("rsa", "ed25519")
DEFAULT_RSA_BITS = 2048
MIN_RSA_BITS = 2048  # Gmail and Yahoo ask for 1024 at least; 2048 is the floor we sign with
MAX_RSA_BITS = 8192
ZONE_STRING = 255  # longest character-string in a TXT record
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


@dataclass(frozen=True)
class NewKey:
    """A generated key: where its private half is, and what to publish and configure."""

    path: Path
    record: str  # the zone-file line of the selector's TXT record
    entry: str  # the [dkim] keys entry DOMAIN:SELECTOR:ALGORITHM:KEYFILE


def dns_name(text: str, what: str) -> str:
    """A domain or selector, lower-cased, without a trailing dot; OptgateError if not a name."""
    name = text.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise OptgateError(f"{what} {text!r} is not a DNS name")
    return name


def generate(algorithm: str, bits: int | None = None) -> PrivateKey:
    """A new private key: RSA (2048 bits unless told) or Ed25519."""
    if algorithm == "ed25519":
        if bits is not None:
            raise OptgateError("--bits is for rsa keys; ed25519 keys have one size")
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm != "rsa":
        raise OptgateError(f"algorithm {algorithm!r} is not one of {ALGORITHMS}")
    size = DEFAULT_RSA_BITS if bits is None else bits
    if size < MIN_RSA_BITS:
        raise OptgateError(f"RSA keys need {MIN_RSA_BITS} bits or more, not {size}")
    if size > MAX_RSA_BITS:
        raise OptgateError(f"RSA keys of more than {MAX_RSA_BITS} bits do not fit DNS well")
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def algorithm_of(key: PrivateKey) -> str:
    """The k= tag value (and the [dkim] keys ALGORITHM) of a key."""
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"


def private_pem(key: PrivateKey) -> bytes:
    """PEM of the private key: PKCS#1 for RSA (as opendkim-genkey writes), PKCS#8 for Ed25519."""
    fmt = (
        serialization.PrivateFormat.PKCS8
        if isinstance(key, ed25519.Ed25519PrivateKey)
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_key_bytes(key: PrivateKey) -> bytes:
    """What p= carries, decoded: DER SubjectPublicKeyInfo (RSA) or the raw 32 bytes (Ed25519)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def record_value(key: PrivateKey) -> str:
    """The selector's TXT record text: v=DKIM1; k=...; p=..."""
    p = base64.b64encode(public_key_bytes(key)).decode("ascii")
    return f"v=DKIM1; k={algorithm_of(key)}; p={p}"


def zone_strings(value: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 characters each."""
    chunks = [value[i : i + ZONE_STRING] for i in range(0, len(value), ZONE_STRING)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def zone_line(domain: str, selector: str, key: PrivateKey) -> str:
    """The zone-file line to publish for a key."""
    return f"{selector}._domainkey.{domain}. IN TXT {zone_strings(record_value(key))}"


def key_entry(domain: str, selector: str, algorithm: str, path: Path) -> str:
    """The [dkim] keys entry for a key file."""
    return f"{domain}:{selector}:{algorithm}:{path}"


def config_line(entry: str) -> str:
    """The TOML line for one key (a JSON string is a valid TOML basic string)."""
    return f"keys = [{json.dumps(entry)}]"


def write_private(path: Path, pem: bytes) -> None:
    """Create the key file 0600; never overwrite one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OptgateError(f"{path} exists: refusing to overwrite a key; choose --out") from None
    except OSError as exc:
        raise OptgateError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise OptgateError(f"cannot write {path}: {exc.strerror}") from None


def keygen(
    domain: str, selector: str, algorithm: str, bits: int | None = None, out: Path | None = None
) -> NewKey:
    """Generate a key, write it (default SELECTOR._domainkey.DOMAIN.pem here), describe it."""
    domain, selector = dns_name(domain, "domain"), dns_name(selector, "selector")
    key = generate(algorithm, bits)
    path = (out or Path(f"{selector}._domainkey.{domain}.pem")).absolute()
    write_private(path, private_pem(key))
    return NewKey(
        path, zone_line(domain, selector, key), key_entry(domain, selector, algorithm, path)
    )
