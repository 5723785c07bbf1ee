"""Amazon SNS over HTTP: message signatures (versions 1 and 2), certificates, confirmation.

Per https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
and .../http-notification-json.html: the signature is SHA1withRSA (version 1) or
SHA256withRSA (version 2) over "Key\\nvalue\\n" for the signed keys of the message
type, in that order (Subject only when present). The certificate comes from
``SigningCertURL``, which optgate fetches only over HTTPS, only from
``sns.<region>.amazonaws.com`` (``.com.cn`` in the China regions: the AWS SDKs' pattern)
and only a ``.pem`` path; anything else is refused unfetched. A
``SubscriptionConfirmation`` is confirmed by GETting its ``SubscribeURL`` (the same host
rule) after its signature verified.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from yarl import URL

from gateway.errors import Forged, Malformed, Stale, Unauthenticated, Unavailable
from gateway.esp.common import (
    text,
)

log = structlog.get_logger("optgate.esp")

# the AWS SDKs' SigningCertURL host pattern, ^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$
# (matched in full against the lower-cased host)
HOST = re.compile(r"sns\.[a-z0-9-]{3,}\.amazonaws\.com(\.cn)?")
# SNS retries an HTTP/S delivery for at most 3,600 s (a hard limit: sns-message-delivery-
# retries.html), so a genuine message is never older than that, plus clock drift
MAX_AGE = 3600 + 300
SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED["UnsubscribeConfirmation"] = SIGNED["SubscriptionConfirmation"]
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERTIFICATE = 64 * 1024  # bytes of a PEM; SNS's are about 2 KB
CACHED = 32  # certificates kept (SNS uses one or two at a time)
FETCHES_PER_MINUTE = 10  # new certificate URLs fetched; a forger cannot make optgate a crawler
REFUSED_SECONDS = 300  # a URL that gave no certificate is not asked again for this long
TIMEOUT = 10.0


def sns_url(value: str) -> URL | None:
    """The URL if it is https on an SNS host (no port, no user), else None."""
    try:
        url = URL(value)
    except (ValueError, TypeError):
        return None
    if url.scheme != "https" or url.user is not None or url.password is not None:
        return None
    if url.explicit_port is not None or url.host is None:
        return None
    return url if HOST.fullmatch(url.host.lower()) else None


@dataclass(frozen=True)
class Message:
    """An SNS message whose signature verified."""

    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: datetime
    subscribe_url: str


def string_to_sign(fields: Mapping[str, Any], kind: str) -> bytes:
    """The bytes SNS signed: each signed key present, and its value, a line each."""
    lines = []
    for key in SIGNED[kind]:
        if key == "Subject" and fields.get(key) is None:
            continue
        lines.append(f"{key}\n{text(fields, key)}\n")
    return "".join(lines).encode()


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Malformed("Timestamp is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise Malformed("Timestamp has no time zone")
    return parsed


class SnsClient:
    """What optgate asks of SNS hosts: signing certificates (cached) and confirmations.

    ``connector`` makes the HTTP connector; the default verifies TLS against the system's
    CAs. Tests pass one that resolves SNS names to a local HTTPS server signed by a test
    CA: code only, never configuration, so the production host rule always holds.
    """

    def __init__(self, connector: Callable[[], aiohttp.BaseConnector] | None = None) -> None:
        self._connector = connector or aiohttp.TCPConnector
        self._session: aiohttp.ClientSession | None = None
        self._keys: OrderedDict[str, tuple[rsa.RSAPublicKey, datetime]] = OrderedDict()
        self._refused: dict[str, float] = {}
        self._fetches: list[float] = []
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._connector(), timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            )
        return self._session

    async def verify(self, fields: Mapping[str, Any], topics: frozenset[str]) -> Message:
        """Check a message's topic, certificate URL and signature; the message if all hold."""
        kind = text(fields, "Type")
        if kind not in SIGNED:
            raise Malformed("Type is not an SNS message type")
        signed = string_to_sign(fields, kind)
        version = text(fields, "SignatureVersion", required=False)
        signature = fields.get("Signature")
        if not isinstance(signature, str) or version not in HASHES:
            raise Unauthenticated("no SNS signature of version 1 or 2")
        topic = text(fields, "TopicArn")
        if topic not in topics:
            raise Forged("the topic is not one of [esp] ses_topics")
        cert_url = text(fields, "SigningCertURL")
        if sns_url(cert_url) is None or not URL(cert_url).path.endswith(".pem"):
            raise Forged("SigningCertURL is not a .pem on an SNS host over https")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise Forged("the signature is not base64") from None
        key = await self.key(cert_url)
        try:
            key.verify(raw, signed, padding.PKCS1v15(), HASHES[version]())
        except InvalidSignature:
            raise Forged("the SNS signature does not verify") from None
        timestamp = _timestamp(text(fields, "Timestamp"))
        if abs(time.time() - timestamp.timestamp()) > MAX_AGE:
            raise Stale(f"the SNS message is more than {MAX_AGE} s old")
        return Message(
            kind,
            text(fields, "MessageId"),
            topic,
            text(fields, "Message"),
            timestamp,
            text(fields, "SubscribeURL", required=False),
        )

    async def key(self, url: str) -> rsa.RSAPublicKey:
        """The public key of the certificate at an SNS URL (checked by the caller)."""
        now = datetime.now(UTC)
        cached = self._keys.get(url)
        if cached is not None and cached[1] > now:
            self._keys.move_to_end(url)
            return cached[0]
        async with self._lock:  # one fetch at a time: the first caller fills the cache
            cached = self._keys.get(url)
            if cached is not None and cached[1] > now:
                return cached[0]
            if self._refused.get(url, 0.0) > time.monotonic():
                raise Forged("SigningCertURL gave no certificate")
            self._budget()
            key, until = await self._fetch(url, now)
            self._keys[url] = (key, until)
            while len(self._keys) > CACHED:
                self._keys.popitem(last=False)
            return key

    def _budget(self) -> None:
        """At most FETCHES_PER_MINUTE new certificates a minute."""
        at = time.monotonic()
        self._refused = {url: until for url, until in self._refused.items() if until > at}
        self._fetches = [t for t in self._fetches if at - t < 60]
        if len(self._fetches) >= FETCHES_PER_MINUTE:
            raise Unavailable("too many new SNS certificates this minute")
        self._fetches.append(at)

    async def _fetch(self, url: str, now: datetime) -> tuple[rsa.RSAPublicKey, datetime]:
        try:
            async with self._http().get(url, allow_redirects=False) as response:
                if response.status >= 500:
                    raise Unavailable(f"the SNS host answered {response.status}")
                pem = await response.content.read(MAX_CERTIFICATE + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("esp_sns_certificate_unreachable", error=type(exc).__name__)
            raise Unavailable("the SNS certificate could not be fetched") from None
        try:
            if status != 200 or len(pem) > MAX_CERTIFICATE:
                raise ValueError(f"HTTP {status}")
            certificate = x509.load_pem_x509_certificate(pem)
            key = certificate.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError("not an RSA key")
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise ValueError("not valid now")
        except ValueError as exc:
            self._refused[url] = time.monotonic() + REFUSED_SECONDS
            log.warning("esp_sns_certificate_refused", problem=str(exc)[:80])
            raise Forged("SigningCertURL gave no valid certificate") from None
        log.info("esp_sns_certificate", url=url, until=certificate.not_valid_after_utc.isoformat())
        return key, certificate.not_valid_after_utc

    async def confirm(self, url: str) -> None:
        """GET a SubscribeURL (an SNS host only): SNS then delivers to this endpoint."""
        if sns_url(url) is None:
            raise Forged("SubscribeURL is not on an SNS host over https")
        try:
            async with self._http().get(url, allow_redirects=False) as response:
                with contextlib.suppress(aiohttp.ClientError):
                    await response.content.read(MAX_CERTIFICATE)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("esp_sns_confirm_unreachable", error=type(exc).__name__)
            raise Unavailable("the SubscribeURL could not be reached") from None
        if status != 200:
            raise Unavailable(f"the SubscribeURL answered {status}")
