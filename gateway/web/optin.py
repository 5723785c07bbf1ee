"""Double opt-in: a confirmation request mailed through the relay with a signed link.

Nothing is recorded as consent until the recipient confirms on the web page
(``POST /c/TOKEN``); the request itself is only an audit event.
"""

from __future__ import annotations

import socket
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from gateway.config import Config
from gateway.keys import load_keys
from gateway.outbound.pipeline import verdict
from gateway.outbound.policy import MessageClass, Rules
from gateway.smtp.relay import Outcome, Relay
from gateway.smtp.tls import client_context
from gateway.tokens import Claims, Confirmation, TokenSigner
from suppression.address import Address
from suppression.model import now
from suppression.store import ConsentRequests


def confirmation(config: Config, address: Address, purpose: str, link: str) -> bytes:
    """The request message: who asks, for what, and the link to confirm."""
    u = config.unsubscribe
    msg = EmailMessage()
    msg["From"] = f"{u.company} <{u.confirm_from}>"
    msg["To"] = address.normalized
    msg["Subject"] = f"Please confirm your subscription to {purpose}"
    msg["Date"] = format_datetime(now())
    msg["Message-ID"] = make_msgid(domain=u.confirm_from.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"Someone, hopefully you, asked {u.company} to send you {purpose} e-mail.\n\n"
        f"To confirm, open this link and press the button:\n{link}\n\n"
        "If it was not you, ignore this message: nothing will be sent.\n\n"
        f"{u.postal_address}\n"
    )
    return msg.as_bytes()


async def request_consent(
    config: Config, store: ConsentRequests, address: Address, purpose: str, actor: str
) -> Outcome:
    """Mail a confirmation link to the address (via the next hop) and audit the request.

    The request is transactional: it goes to anyone who may get transactional
    mail, and not to addresses that bounced, complained or are invalid.
    """
    rules = Rules(config.policy.require_consent, config.policy.consent_versions)
    allowed = await verdict(store, address, MessageClass.TRANSACTIONAL, purpose, rules)
    if not allowed.keep:
        return Outcome(550, f"5.7.1 not sent: {allowed.explanation}")
    signer = TokenSigner(load_keys(Path(config.unsubscribe.key_file)))
    token = signer.issue(Claims(address.sha256, Confirmation(purpose), int(time.time())))
    link = f"{config.unsubscribe.base_url.rstrip('/')}/c/{token}"
    outcome = await send_mail(
        config, address.normalized, confirmation(config, address, purpose, link)
    )
    detail = {"purpose": purpose, "relayed": outcome.code}
    await store.audit(
        actor=actor, action="consent-requested", subject=address.sha256, detail=detail
    )
    return outcome


async def send_mail(config: Config, to: str, message: bytes) -> Outcome:
    """Mail one message of optgate's own (a confirmation link) through the next hop,
    from ``[unsubscribe] confirm_from``, on a connection of its own."""
    host, port = config.relay.next_hop
    relay = Relay(
        host,
        port,
        size=1,
        timeout=config.relay.timeout,
        starttls=config.relay.starttls,
        local_hostname=config.smtp.hostname or socket.getfqdn(),
        idle_seconds=config.relay.idle_seconds,
        busy_seconds=config.relay.busy_seconds,
        tls=client_context(config.relay),
    )
    try:
        return await relay.send(config.unsubscribe.confirm_from, to, message)
    finally:
        await relay.close()
