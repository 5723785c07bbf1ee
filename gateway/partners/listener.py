"""The partner submission listener: SMTP AUTH over TLS, audience addresses only, offers stored.

A partner never names a recipient: RCPT is only ``offer@DOMAIN`` or
``offer+TOPIC@DOMAIN`` (or ``offer@`` with ``X-Optgate-Audience: TOPIC``),
anything else is 550. The 250 after DATA comes only once the offer is
committed to the store; the fan-out (gateway/partners/fanout.py) does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import ssl
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway import keygen
from gateway.config import Partners
from gateway.errors import BadControlHeader, Phase, smtp_reply
from gateway.outbound.message import header_values
from gateway.runtime.ratelimit import SharedLimiter
from gateway.smtp.server import Admission, GateSMTP, session_error
from suppression.errors import ConfigError, OptgateError
from suppression.model import check_name, now
from suppression.partners import Partner, check_credential, hash_credential
from suppression.store import OfferQueue

log = structlog.get_logger("optgate.partners")

AUDIENCE_HEADER = "x-optgate-audience"
NOT_AUDIENCE = "550 5.7.1 Partners send to offer@{domain} or offer+TOPIC@{domain} only"
ONE_AUDIENCE = "452 4.5.3 One audience per offer"
BAD_CREDENTIALS = "535 5.7.8 Authentication credentials invalid"
AUTH_THROTTLED = "454 4.7.0 Too many authentication attempts, try again later"
MAX_TRUSTED = 64  # client addresses remembered per partner as having logged in
DISABLED = "550 5.7.1 This partner may not submit offers"
# a timing equaliser: unknown names cost as much as wrong passwords
_DUMMY = hash_credential("optgate-no-such-partner")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one partner may send."""

    max_size: int
    rate_per_hour: int


def self_signed(hostname: str) -> ssl.SSLContext:
    """A server context with a throw-away self-signed certificate (for tests and trials)."""
    key = keygen.generate("rsa")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(keygen.private_pem(key))
        return _server_context(cert_file, key_file)


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def tls_context(settings: Partners, hostname: str) -> ssl.SSLContext:
    """The configured certificate and key, or a self-signed certificate when none is set."""
    if not settings.tls_cert and not settings.tls_key:
        log.warning("partners_self_signed", reason="no [partners] tls_cert / tls_key set")
        return self_signed(hostname)
    if not settings.tls_cert or not settings.tls_key:
        raise ConfigError("[partners] tls_cert and tls_key go together: set both or neither")
    try:
        return _server_context(Path(settings.tls_cert), Path(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[partners] tls_cert / tls_key: {exc}") from None


def audience_topic(address: str, domain: str) -> str | None:
    """'' for offer@DOMAIN, TOPIC for offer+TOPIC@DOMAIN, None for any other address."""
    local, at, host = address.strip().strip("<>").lower().rpartition("@")
    if not at or host != domain.lower():
        return None
    base, plus, topic = local.partition("+")
    if base != "offer":
        return None
    if not plus:
        return ""
    try:
        return check_name(topic, "topic")
    except OptgateError:
        return None


def audience(header: str, topic: str | None) -> str | None:
    """The offer's topic: its X-Optgate-Audience (lower-cased; none: ""), which must agree
    with the recipient's (``topic``); BadControlHeader otherwise."""
    if not header:
        return topic
    name = "X-Optgate-Audience"
    try:
        check_name(header, name)
    except OptgateError as exc:
        raise BadControlHeader(str(exc), name, header) from None
    if topic and header != topic:
        raise BadControlHeader(f"{name} names another topic than the recipient", name, header)
    return header


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _client(server: SMTP) -> str:
    peer = server.session.peer if server.session else None
    return str(peer[0]) if isinstance(peer, tuple) else "?"


def _pass_credentials(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """aiosmtpd's PLAIN/LOGIN parsers hand the credentials over; Intake checks them."""
    return AuthResult(success=True, auth_data=data)


class Intake:
    """The handler: authenticates partners, admits audience recipients, stores offers."""

    def __init__(
        self,
        store: OfferQueue,
        settings: Partners,
        accepted: Callable[[], None],
        limiter: SharedLimiter,
    ) -> None:
        self._store, self._settings, self._accepted = store, settings, accepted
        self.in_flight: set[asyncio.Task[Any]] = set()
        # AUTH attempts a minute per client address, and (guesses spread over many client
        # addresses) per partner name, all unknown names sharing one, except from an address
        # that name logged in from before (remembered by this worker); counted in the store
        self._limit = settings.auth_per_minute
        self._limiter = limiter
        self._trusted: dict[str, set[str]] = {}

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH PLAIN, parsed by aiosmtpd, checked against the store."""
        if await self._throttled(server):
            return AuthResult(success=False, handled=False, message=AUTH_THROTTLED)
        return await self._check(server, await SMTP.auth_PLAIN(server, server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH LOGIN, parsed by aiosmtpd, checked against the store."""
        if await self._throttled(server):
            return AuthResult(success=False, handled=False, message=AUTH_THROTTLED)
        return await self._check(server, await SMTP.auth_LOGIN(server, server, args))

    async def _throttled(self, server: SMTP) -> bool:
        """Whether this client address is over its AUTH attempts a minute (logged); a store
        that cannot count says no (its error is the login's to report)."""
        try:
            if await self._limiter.take([("auth-client", _client(server), self._limit)]):
                return False
        except OptgateError:
            return False
        log.warning("partner_auth_throttled", by="client")
        return True

    async def _check(self, server: SMTP, parsed: AuthResult) -> AuthResult:
        if not parsed.success or not isinstance(parsed.auth_data, LoginPassword):
            return parsed
        name, secret = _text(parsed.auth_data.login), _text(parsed.auth_data.password)
        try:
            partner = await self._store.partner(name)
        except OptgateError as exc:
            return AuthResult(success=False, handled=False, message=smtp_reply(exc, Phase.AUTH))
        client = _client(server)
        known = partner is not None and client in self._trusted.get(partner.name, ())
        if not known and not await self._limiter.take(
            [("auth-partner", partner.name if partner else "?", self._limit)]
        ):
            log.warning("partner_auth_throttled", by="partner")
            return AuthResult(success=False, handled=False, message=AUTH_THROTTLED)
        stored = partner.credential if partner else _DUMMY
        ok = await asyncio.to_thread(check_credential, secret, stored)
        ok = ok and partner is not None and not partner.disabled
        log.info("partner_auth", partner=name if partner else None, ok=ok)
        if not ok or partner is None:
            return AuthResult(success=False, handled=False, message=BAD_CREDENTIALS)
        trusted = self._trusted.setdefault(partner.name, set())
        if len(trusted) < MAX_TRUSTED:
            trusted.add(client)
        return AuthResult(success=True, auth_data=name)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Only the audience address; one per offer."""
        if audience_topic(address, self._settings.audience_domain) is None:
            log.info("partner_rcpt_refused", partner=session.auth_data)
            return NOT_AUDIENCE.format(domain=self._settings.audience_domain)
        if envelope.rcpt_tos:
            return ONE_AUDIENCE
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Audience OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Check the partner's limits, store the offer, then answer 250."""
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            return await self._accept(str(session.auth_data), envelope)
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def _accept(self, name: str, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        partner = await self._store.partner(name)
        if partner is None or partner.disabled:
            return DISABLED
        limits = self.limits(partner)
        if len(content) > limits.max_size:
            return f"552 5.3.4 Offer too big: at most {limits.max_size} bytes"
        since = now() - dt.timedelta(hours=1)
        if await self._store.offers_since(name, since) >= limits.rate_per_hour:
            log.warning("partner_rate_limited", partner=name)
            return f"450 4.7.0 Rate limit: {limits.rate_per_hour} offers per hour"
        topic = audience_topic(envelope.rcpt_tos[0], self._settings.audience_domain) or None
        header = header_values(content, (AUDIENCE_HEADER,)).get(AUDIENCE_HEADER, "").lower()
        try:
            topic = audience(header, topic)
        except BadControlHeader as exc:
            return smtp_reply(exc, Phase.DATA)
        offer = await self._store.add_offer(name, topic, content, actor=f"partner:{name}")
        log.info("offer_accepted", partner=name, offer=offer, topic=topic, size=len(content))
        self._accepted()
        return f"250 2.0.0 Offer {offer} accepted"

    def limits(self, partner: Partner) -> Limits:
        """The partner's own limits, else the configured ones."""
        return Limits(
            partner.max_size or self._settings.max_message_size,
            partner.rate_per_hour or self._settings.rate_per_hour,
        )

    async def handle_exception(self, error: Exception) -> str:
        """Log the type and place, answer 451 (the gateway's rule)."""
        return session_error(error)


def _session(
    intake: Intake,
    admission: Admission,
    settings: Partners,
    context: ssl.SSLContext,
    hostname: str,
    idle: int,
) -> SMTP:
    """One partner connection's SMTP protocol (421 at connect beyond the session limit)."""
    implicit = settings.tls == "implicit"
    with warnings.catch_warnings():
        # aiosmtpd cannot see TLS that began at connect, and warns of AUTH without it
        warnings.simplefilter("ignore", UserWarning)
        return GateSMTP(
            intake,
            admission,
            hostname=hostname,
            ident="optgate partners",
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            timeout=idle,
            tls_context=None if implicit else context,
            require_starttls=not implicit,
            auth_required=True,
            auth_require_tls=not implicit,
            authenticator=_pass_credentials,
            auth_exclude_mechanism=["CRAM-MD5"],
        )


@contextlib.asynccontextmanager
async def listening(
    settings: Partners,
    store: OfferQueue,
    hostname: str,
    idle_seconds: int,
    accepted: Callable[[], None],
    reuse_port: bool,
    admission: Admission,
    limiter: SharedLimiter,
) -> AsyncIterator[int]:
    """The submission listener (``accepted()`` after each stored offer, ``admission`` at
    connect, ``limiter`` a minute's window for AUTH attempts); yields the bound port; on
    exit drains offers in flight."""
    assert settings.listen is not None  # started only when [partners] listen is set
    host, port = settings.listen
    context = tls_context(settings, hostname)
    intake = Intake(store, settings, accepted, limiter)
    implicit = settings.tls == "implicit"
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            functools.partial(
                _session, intake, admission, settings, context, hostname, idle_seconds
            ),
            host,
            port,
            ssl=context if implicit else None,
            reuse_address=True,
            reuse_port=reuse_port,  # beside the other workers of `serve --workers`
        )
    except OSError as exc:
        raise ConfigError(f"[partners] listen {settings.listen}: {exc.strerror}") from None
    bound = server.sockets[0].getsockname()[1]
    log.info("partners_listening", host=host, port=bound, tls=settings.tls)
    try:
        yield bound
    finally:
        server.close()
        if intake.in_flight:
            await asyncio.wait(intake.in_flight, timeout=30)
