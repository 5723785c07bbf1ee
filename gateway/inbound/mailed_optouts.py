"""Opt-outs by mail without a genuine token: counted at once for an authenticated author,
else held until the address confirms them by a mailed link.

    already suppressed globally              nothing to do
    the author (From) asks for itself, its
    From domain authenticated for this mail  suppress (within optout_rate_authenticated
                                             per From domain an hour)
    anyone else, or not authenticated        hold (gateway/web/held.py) and mail the address a
                                             link, within the per-client, per-From-domain
                                             and per-address limits; only for an address
                                             optgate knows (a consent, a suppression or
                                             mail sent), and for one a third party names
                                             (an ARF opt-out) only if optgate mailed it

A limit used up, or a next hop that fails for now, raises ``Deferred``: the live
listener answers 451 (the sender tries again later), ``optgate ingest`` leaves the
message unmarked for its next run. Nothing here ever suppresses on the word of the
envelope sender or of an unauthenticated From.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.config import Config
from gateway.errors import Deferred
from gateway.inbound.alignment import domain_of, organisational
from gateway.inbound.authentication import Authentication, Authenticator, Origin
from gateway.inbound.mailboxes import Mailboxes
from gateway.keys import load_keys
from gateway.optouts import InboundNote
from gateway.web.held import Action, Held, Mailed, inbound_secret
from suppression.address import Address
from suppression.store import Mailbox

log = structlog.get_logger("optgate.inbound")


@dataclass(frozen=True, slots=True)
class OptOuts:
    """What an opt-out by mail without a genuine token needs: the author's authentication,
    and a way to ask the address itself."""

    config: Config
    store: Mailbox
    authenticator: Authenticator
    held: Held
    mailboxes: Mailboxes | None  # None: no [inbound] domains (a mailbox read by ingest)
    key: bytes  # the token key: secrets of inbound requests, digests of rate-limit sources

    @classmethod
    def from_config(cls, config: Config, store: Mailbox, mailboxes: Mailboxes | None) -> OptOuts:
        """Wired from the configuration."""
        key = load_keys(Path(config.unsubscribe.key_file))[0]
        held = Held.from_config(config, store)
        return cls(config, store, Authenticator(config.inbound), held, mailboxes, key)

    async def authenticate(self, origin: Origin, *, check: bool) -> Authentication:
        """Who wrote the message and from where; with ``check``, whether its From domain is
        authenticated (DNS lookups), else only who claims to have written it."""
        if not check:
            return self.authenticator.identify(origin)
        auth = await self.authenticator.check(origin, self.ours)
        log.info("inbound_auth", method=auth.method, authenticated=auth.authenticated)
        return auth

    def ours(self, address: str) -> bool:
        """Whether an address is one of optgate's inbound addresses (without [inbound]
        domains: at any domain, by its local part)."""
        if self.mailboxes is not None:
            return self.mailboxes.role(address) is not None
        inbound = self.config.inbound
        local = address.rpartition("@")[0].partition("+")[0].lower()
        return local in (inbound.unsubscribe_local, inbound.bounce_local, inbound.feedback_local)

    async def may_count(self, auth: Authentication) -> None:
        """Charge an authenticated opt-out to its From domain; Deferred when that is used up."""
        domain = domain_of(auth.author or "")
        limit = self.config.inbound.optout_rate_authenticated
        source = ("authenticated", organisational(domain) if domain else None, limit)
        if not await self.held.limiter.take([source]):
            log.warning("inbound_rate_limited", kind="authenticated")
            raise Deferred("authenticated opt-outs of this domain are over the hourly limit")

    async def known(self, address: Address, third_party: bool) -> bool:
        """Whether optgate may mail the address a link: it knows the address (for a third
        party's report: it mailed it)."""
        if await self.store.sent_to(address.sha256):
            return True
        if third_party:
            return False
        holder = await self.store.holder(address.sha256)
        return bool(holder.suppressions or holder.consents)

    async def hold(
        self, address: Address, auth: Authentication, message_digest: str, note: InboundNote
    ) -> Mailed:
        """Hold the opt-out and mail its link; Deferred when that must wait."""
        inbound = self.config.inbound
        domain = domain_of(auth.author or "")
        sources = [
            ("client", auth.client.ip if auth.client else None, inbound.optout_rate_client),
            ("domain", organisational(domain) if domain else None, inbound.optout_rate_domain),
            ("address", address.sha256, inbound.optout_rate_address),
        ]
        secret = inbound_secret(self.key, message_digest, address.sha256)
        mailed = await self.held.hold(address, Action.UNSUBSCRIBE, secret, note, sources)
        if mailed in (Mailed.LIMITED, Mailed.DEFERRED):
            raise Deferred(f"confirmation link {mailed}")
        return mailed
