"""Mail a person's domain signed (DKIM) or not, and the DNS zone that publishes its key,
SPF and DMARC records (served by tests/support/dns.py), for the sender-authentication tests."""

from __future__ import annotations

import base64
import functools

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.people import FAN

INBOUND_DOMAIN = "in.example.com"  # optgate's inbound domain in these tests
UNSUBSCRIBE = f"unsubscribe@{INBOUND_DOMAIN}"
AUTHOR_DOMAIN = "example.com"  # FAN's: its DKIM key, SPF and DMARC records are published
ATTACKER = "attacker.example"  # signs with a key of its own, for its own domain


@functools.cache
def key(domain: str) -> tuple[bytes, str]:
    """A private key (PEM) and its DKIM TXT rdata, one per domain for the whole run."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    return pem, " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))


def zone() -> dict[tuple[str, str], list[str]]:
    return {
        (f"s1._domainkey.{AUTHOR_DOMAIN}", "TXT"): [key(AUTHOR_DOMAIN)[1]],
        (f"s1._domainkey.{ATTACKER}", "TXT"): [key(ATTACKER)[1]],
        (f"_dmarc.{AUTHOR_DOMAIN}", "TXT"): ['"v=DMARC1; p=reject"'],
        (AUTHOR_DOMAIN, "TXT"): ['"v=spf1 ip4:192.0.2.25 -all"'],
    }


def request(
    author: str = FAN, to: str = UNSUBSCRIBE, headers: tuple[str, ...] = (), body: str = "stop"
) -> bytes:
    lines = [
        *headers,
        f"From: A Person <{author}>",
        f"To: {to}",
        "Subject: unsubscribe",
        f"Message-ID: <{abs(hash((author, to, headers, body)))}@mail.example>",
        "Date: Sun, 29 Nov 2026 02:00:00 +0000",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode()


def signed(raw: bytes, domain: str = AUTHOR_DOMAIN) -> bytes:
    """The message with a DKIM signature of ``domain`` (covering From and To) on top."""
    header = dkim.sign(
        raw,
        b"s1",
        domain.encode(),
        key(domain)[0],
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return bytes(header) + raw
