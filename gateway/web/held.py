"""Changes held until the address confirms them by a link mailed to it.

Two kinds, one table (``held_request``) and one page (``/r/SECRET`` in gateway/web/endpoint.py):

    unsubscribe   an opt-out by mail whose writer nobody authenticated (a forged From is
                  easy): the address gets a link; only pressing the page's button (a POST,
                  never the GET a link scanner makes) suppresses it
    lift          a suppression caused by a bounce or complaint no token vouched for
                  (``unverified-*`` sources): the person asks for a link on ``/lift``
                  and lifts it by pressing the button; whoever asks, only the mailbox's
                  owner gets the link

The link carries a 256-bit secret; the store keeps its SHA-256 only. An inbound
request's secret is an HMAC of the message digest and the recipient under the
token key, so the same message retried finds its request again (and is not mailed
twice). Links work for 7 days and once. Confirmation mails count against the
per-source limits (gateway/runtime/ratelimit.py ``SharedLimiter``), shared by all workers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from enum import StrEnum
from pathlib import Path

import structlog

from gateway import optouts
from gateway.config import Config
from gateway.keys import load_keys
from gateway.optouts import HeldEvidence, InboundNote, Recipient, link_may_lift
from gateway.runtime.ratelimit import SharedLimiter
from gateway.smtp.relay import Outcome
from gateway.web.optin import send_mail
from suppression.address import Address
from suppression.model import HeldRequest, Reason, Source, Suppression, now
from suppression.scope import GLOBAL, Scope
from suppression.store import Confirmations

log = structlog.get_logger("optgate.held")
MAX_AGE = timedelta(days=7)
SECRET_BYTES = 32

Mailer = Callable[[str, bytes], Awaitable[Outcome]]  # (to, message) -> the next hop's answer
Sources = Sequence[tuple[str, str | None, int]]  # (kind, value, limit) for SharedLimiter


class Action(StrEnum):
    """What a held request does once confirmed."""

    UNSUBSCRIBE = "unsubscribe"
    LIFT = "lift"


class Mailed(StrEnum):
    """What became of a request's link."""

    SENT = "sent"  # the next hop took the mail
    ALREADY = "already"  # mailed before (the same inbound message again)
    LIMITED = "limited"  # a per-source limit is used up this hour: try again later
    DEFERRED = "deferred"  # the next hop failed for now: try again later
    REFUSED = "refused"  # the next hop refused the address


def digest(secret: str) -> str:
    """What the store keeps of a link's secret."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def inbound_secret(key: bytes, message_digest: str, sha256: str) -> str:
    """The secret of an inbound message's request: the same for the same message."""
    mac = hmac.new(key, f"held\0{message_digest}\0{sha256}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def lifts(suppressions: Sequence[Suppression]) -> bool:
    """Whether a lift link may lift a global suppression (gateway/optouts.py's rule)."""
    found = optouts.in_scope(suppressions, GLOBAL)
    return found is not None and link_may_lift(found)


@dataclass(frozen=True, slots=True)
class Held:
    """Holding requests, mailing their links and carrying them out on confirmation."""

    config: Config
    store: Confirmations
    mailer: Mailer
    limiter: SharedLimiter

    @classmethod
    def from_config(cls, config: Config, store: Confirmations) -> Held:
        """Links mailed through the next hop; limits keyed with the token key."""
        key = load_keys(Path(config.unsubscribe.key_file))[0]
        mailer = functools.partial(send_mail, config)
        return cls(config, store, mailer, SharedLimiter(store, key))

    def link(self, secret: str) -> str:
        """The page a request's link opens."""
        return f"{self.config.unsubscribe.base_url.rstrip('/')}/r/{secret}"

    async def hold(
        self,
        address: Address,
        action: Action,
        secret: str,
        inbound: InboundNote | None,
        sources: Sources,
    ) -> Mailed:
        """Keep the request (an opt-out's inbound message, or None: a lift asked for on
        the web) and mail its link to the address, within the source limits."""
        detail = inbound.as_dict() if inbound else {"channel": "web"}
        request = HeldRequest(
            digest(secret),
            address.sha256,
            action,
            str(GLOBAL),
            now(),
            json.dumps(detail, sort_keys=True),
        )
        known = await self.store.held_request(request.secret)
        if known is not None and known.mailed is not None:
            return Mailed.ALREADY
        if not await self.limiter.take(sources):  # before storing: a flood stores nothing
            log.warning("held_rate_limited", action=action, rcpt=address.sha256[:16])
            return Mailed.LIMITED
        stored = await self.store.hold_request(request, actor=f"held-{action}")
        message = self._message(address, action, self.link(secret))
        outcome = await self.mailer(address.normalized, message)
        log.info("held_mailed", action=action, code=outcome.code, rcpt=address.sha256[:16])
        if outcome.delivered:
            await self.store.mark_mailed(stored.secret, at=now())
            return Mailed.SENT
        return Mailed.DEFERRED if outcome.temporary else Mailed.REFUSED

    async def request_lift(self, address: Address, client: str) -> Mailed | None:
        """Mail a lift link if an unverified bounce or complaint stops mail to the address
        (None: nothing to lift); the asker learns nothing either way."""
        holder = await self.store.holder(address.sha256)
        if not lifts(holder.suppressions):
            return None
        limit = self.config.inbound.optout_rate_address
        sources = [("lift-client", client, self.config.inbound.optout_rate_client)]
        sources.append(("address", address.sha256, limit))
        return await self.hold(
            address, Action.LIFT, secrets.token_urlsafe(SECRET_BYTES), None, sources
        )

    async def find(self, secret: str) -> HeldRequest | None:
        """The request a link names, while it may still be used (done ones too)."""
        if not 20 <= len(secret) <= 100 or not secret.isascii():
            return None
        request = await self.store.held_request(digest(secret))
        if request is None or request.created < now() - MAX_AGE:
            return None
        return request

    async def confirm(self, request: HeldRequest, ip: str) -> bool:
        """Carry a request out (the page's POST); False when it was done already."""
        if request.done is not None:
            return False
        scope = Scope.parse(request.scope)
        if request.action == Action.UNSUBSCRIBE:
            evidence = HeldEvidence(InboundNote.parse(request.detail), ip)
            event = optouts.SuppressionEvent(
                Recipient.hashed(request.sha256),
                scope,
                Reason.UNSUBSCRIBED,
                Source.MAILBOX,
                evidence,
            )
            await optouts.opt_out(self.store, [event], actor="web")
        else:
            await optouts.lift_report(self.store, request.sha256, scope, actor="web")
        done = await self.store.finish_request(
            request.secret, at=now(), actor="web", detail={"channel": "link"}
        )
        log.info("held_confirmed", action=request.action, rcpt=request.sha256[:16])
        return done

    def _message(self, address: Address, action: Action, link: str) -> bytes:
        u = self.config.unsubscribe
        msg = EmailMessage()
        msg["From"] = f"{u.company} <{u.confirm_from}>"
        msg["To"] = address.normalized
        msg["Date"] = format_datetime(now())
        msg["Message-ID"] = make_msgid(domain=u.confirm_from.rpartition("@")[2])
        msg["Auto-Submitted"] = "auto-generated"
        if action is Action.UNSUBSCRIBE:
            msg["Subject"] = f"Confirm: no more marketing e-mail from {u.company}"
            text = (
                f"We received an e-mail asking {u.company} to stop sending marketing e-mail "
                "to this address. We could not tell that it came from you, so nothing has "
                "changed yet.\n\n"
                f"To stop it, open this link and press the button:\n{link}\n\n"
                "If you did not ask, ignore this message: you keep receiving what you "
                "subscribed to.\n"
            )
        else:
            msg["Subject"] = f"Receive {u.company}'s e-mail again"
            text = (
                f"Someone, hopefully you, asked for this link. A report that mail to this "
                f"address could not be delivered, or a complaint about it, stopped {u.company}'s "
                "marketing e-mail to it.\n\n"
                f"To receive it again, open this link and press the button:\n{link}\n\n"
                "If it was not you, ignore this message: nothing changes.\n"
            )
        msg.set_content(f"{text}\nThe link works for 7 days.\n\n{u.postal_address}\n")
        return msg.as_bytes()
