"""Is an inbound message's From domain authenticated? (DMARC-aligned DKIM or SPF, RFC 7489)

An opt-out by mail without a genuine token counts at once only for its author, and
only when the From domain is authenticated for this very message, by any of:

    own MTA   the topmost Authentication-Results field whose authserv-id is in
              ``[inbound] authserv_ids`` (gateway/inbound/trace.py): dmarc=pass for the
              From domain, or dkim=pass / spf=pass for an aligned domain
    DKIM      a signature dkimpy verifies, covering From and To, whose d= aligns
    SPF       pyspf's "pass" for the sending MTA and the envelope sender, whose domain
              aligns; the sending MTA is the peer, or behind ``[inbound] trusted_relays``
              the client their Received fields name

and only when it has exactly one From and one To field, the To naming one of
optgate's inbound addresses: a message someone once signed for another recipient,
replayed to unsubscribe@, does not count. Alignment: gateway/inbound/alignment.py.
DNS goes through ``[inbound] dns_servers`` (else the system's resolvers): DKIM keys
and DMARC records with dnspython's async resolver, SPF's lookups (pyspf, blocking) on
a thread, bounded in time.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dkim
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import spf
import structlog

from gateway.config import Inbound
from gateway.inbound import parsing
from gateway.inbound.alignment import Modes, aligned, domain_of, modes, organisational
from gateway.inbound.trace import Client, inside, received_client, trusted_passes

log = structlog.get_logger("optgate.inbound")

MAX_SIGNATURES = 4  # DKIM signatures tried per message (each costs a DNS lookup)
DNS_SECONDS = 3.0  # one lookup
SPF_SECONDS = 8.0  # all of one SPF evaluation's lookups together (RFC 7208 allows 20)


@dataclass(frozen=True, slots=True)
class Origin:
    """An inbound message and where it came from."""

    raw: bytes
    mail_from: str | None  # the envelope sender; None: unknown (read from a mailbox)
    peer: Client | None = None  # the connecting client; None: read from a mailbox


@dataclass(frozen=True, slots=True)
class Authentication:
    """Who wrote the message as far as can be told, and whether that is authenticated."""

    author: str | None  # the From address, when the message has exactly one
    client: Client | None  # the sending MTA, when known (rate limits count per client IP)
    method: str | None = None  # "authserv", "dkim" or "spf"; None: not authenticated
    domain: str | None = None  # the aligned domain that passed

    @property
    def authenticated(self) -> bool:
        """The From domain is authenticated for this message."""
        return self.method is not None


class Authenticator:
    """Checks inbound messages against the own MTA's verdict, DKIM and SPF."""

    def __init__(self, inbound: Inbound) -> None:
        self._relays = inbound.trusted_relays
        self._authserv_ids = tuple(inbound.authserv_ids)
        servers = [dns.nameserver.Do53Nameserver(*server) for server in inbound.dns_servers]
        self._resolver = dns.asyncresolver.Resolver(configure=not servers)
        self._blocking = dns.resolver.Resolver(configure=not servers)
        for resolver in (self._resolver, self._blocking):
            if servers:
                resolver.nameservers = list(servers)
            resolver.timeout = resolver.lifetime = DNS_SECONDS

    def client(self, origin: Origin, message: Any) -> Client | None:
        """The sending MTA: the peer, or behind the own relays the one they received from."""
        peer = origin.peer
        if peer is not None and not inside(peer.ip, self._relays):
            return peer
        return received_client(parsing.headers(message, "Received"), self._relays)

    def identify(self, origin: Origin) -> Authentication:
        """The author and the sending MTA, unchecked (no DNS)."""
        return self._identified(origin, parsing.parse(origin.raw))

    def _identified(self, origin: Origin, message: Any) -> Authentication:
        authors = parsing.headers(message, "From")
        named = parsing.addresses(authors)
        author = named[0] if len(authors) == 1 and len(named) == 1 else None
        return Authentication(author, self.client(origin, message))

    async def check(self, origin: Origin, ours: Callable[[str], bool]) -> Authentication:
        """Authenticate one message; ``ours`` tells optgate's inbound addresses."""
        message = parsing.parse(origin.raw)
        identified = self._identified(origin, message)
        author, client = identified.author, identified.client
        to = parsing.headers(message, "To")
        domain = domain_of(author) if author else None
        if author is None or domain is None:
            return Authentication(author, client)
        if len(to) != 1 or not any(map(ours, parsing.addresses(to))):
            log.info("inbound_auth", outcome="not-addressed-to-us")
            return Authentication(author, client)
        policy = _Policy(self, domain)
        passed = await self._authserv(message, policy)
        if passed is not None:
            return Authentication(author, client, "authserv", passed)
        passed = await self._dkim(origin.raw, policy)
        if passed is not None:
            return Authentication(author, client, "dkim", passed)
        passed = await self._spf(origin, message, client, policy)
        if passed is not None:
            return Authentication(author, client, "spf", passed)
        return Authentication(author, client)

    async def _authserv(self, message: Any, policy: _Policy) -> str | None:
        fields = parsing.headers(message, "Authentication-Results")
        for found in trusted_passes(fields, self._authserv_ids):
            if found.method == "dmarc":
                if found.domain == policy.domain:
                    return found.domain
            elif await policy.aligned(found.domain, spf=found.method == "spf"):
                return found.domain
        return None

    async def _dkim(self, raw: bytes, policy: _Policy) -> str | None:
        """The d= of the first aligned signature that verifies and covers From and To."""
        verifier, keys = await asyncio.to_thread(_signatures, raw)
        for index, (name, signer) in enumerate(keys):
            if not signer or not await policy.aligned(signer, spf=False):
                continue
            record = await self._txt(name)
            if record is None:
                continue
            if await asyncio.to_thread(_verify, verifier, index, name, record):
                return signer
        return None

    async def _spf(
        self, origin: Origin, message: Any, client: Client | None, policy: _Policy
    ) -> str | None:
        """The envelope sender's domain when SPF passes for the sending MTA and it aligns."""
        sender = origin.mail_from
        if sender is None:
            paths = parsing.addresses(parsing.headers(message, "Return-Path"))
            sender = paths[0] if paths else ""
        envelope = domain_of(sender) if sender else None
        if client is None or envelope is None or not await policy.aligned(envelope, spf=True):
            return None
        result = await asyncio.to_thread(_spf_result, self._blocking, client, sender)
        return envelope if result == "pass" else None

    async def modes(self, domain: str) -> Modes:
        """The From domain's DMARC alignment modes (its own record, else its organisation's)."""
        for name in dict.fromkeys((domain, organisational(domain))):
            record = await self._txt(f"_dmarc.{name}")
            if record is not None and record.lower().startswith("v=dmarc1"):
                return modes(record)
        return Modes()

    async def _txt(self, name: str) -> str | None:
        """The first TXT record of a name, its strings joined; None if there is none."""
        try:
            answer = await self._resolver.resolve(name, "TXT")
        except (dns.exception.DNSException, ValueError):
            return None
        for rdata in answer:
            return b"".join(rdata.strings).decode("utf-8", "replace")
        return None


class _Policy:
    """The From domain and its DMARC alignment modes, looked up only when they matter (an
    authenticated domain that is the From domain's relative, not the domain itself)."""

    def __init__(self, authenticator: Authenticator, domain: str) -> None:
        self._authenticator, self.domain = authenticator, domain
        self._modes: Modes | None = None

    async def aligned(self, authenticated: str, *, spf: bool) -> bool:
        if authenticated == self.domain:
            return True
        if not aligned(authenticated, self.domain, strict=False):
            return False
        if self._modes is None:
            self._modes = await self._authenticator.modes(self.domain)
        strict = self._modes.spf_strict if spf else self._modes.dkim_strict
        return aligned(authenticated, self.domain, strict)


def _signatures(raw: bytes) -> tuple[Any, list[tuple[str, str | None]]]:
    """dkimpy's view of the message and, per signature (at most MAX_SIGNATURES), the name of
    its key record and its d= (None when the signature cannot be read)."""
    verifier = dkim.DKIM(raw, minkey=1024, timeout=int(DNS_SECONDS))
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    found: list[tuple[str, str | None]] = []
    for index in range(min(count, MAX_SIGNATURES)):
        try:
            sig, _, _ = verifier.verify_headerprep(index)
            selector, signer = sig[b"s"].decode("ascii"), sig[b"d"].decode("ascii")
        except (dkim.DKIMException, KeyError, UnicodeDecodeError, TypeError, ValueError):
            found.append(("", None))
            continue
        found.append((f"{selector}._domainkey.{signer}", domain_of(signer)))
    return verifier, found


def _verify(verifier: Any, index: int, name: str, record: str) -> bool:
    """Verify one signature against its key record, fetched already."""

    def answer(queried: bytes, timeout: int = 5) -> bytes:
        return record.encode() if queried.decode("ascii", "replace").rstrip(".") == name else b""

    try:
        ok = bool(verifier.verify(idx=index, dnsfunc=answer))
    except dkim.DKIMException:
        return False
    return ok and {b"from", b"to"} <= set(verifier.include_headers)


_SPF_RESOLVER: contextvars.ContextVar[dns.resolver.Resolver] = contextvars.ContextVar(
    "optgate_spf_resolver"
)


def _spf_result(resolver: dns.resolver.Resolver, client: Client, sender: str) -> str:
    """pyspf's check_host result ("pass", "fail", "softfail", "neutral", "none", ...)."""
    token = _SPF_RESOLVER.set(resolver)
    try:
        result, _ = spf.check2(
            i=client.ip, s=sender, h=client.helo, timeout=SPF_SECONDS, querytime=SPF_SECONDS
        )
    except Exception as exc:  # pyspf raises for broken records and DNS trouble alike
        log.info("inbound_spf_error", error=type(exc).__name__)
        return "temperror"
    finally:
        _SPF_RESOLVER.reset(token)
    return str(result)


def _spf_lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list[Any]:
    """pyspf's DNS hook (its module-level ``DNSLookup``), through the configured resolver."""
    resolver = _SPF_RESOLVER.get(None) or dns.resolver.get_default_resolver()
    found: list[Any] = []
    try:
        answers = resolver.resolve(name, qtype, lifetime=min(timeout, DNS_SECONDS))
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return found
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {type(exc).__name__}") from None
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _spf_lookup  # pyspf asks this module-level function for every record
