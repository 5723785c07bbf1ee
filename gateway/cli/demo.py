"""``optgate demo``: the gateway on a temporary store in front of a local sink, five messages."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import tempfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway import optouts
from gateway.config import Config, load
from gateway.optouts import Recipient, SuppressionEvent
from gateway.outbound.pipeline import verdict
from gateway.outbound.policy import MessageClass, Rules
from gateway.runtime import logs
from gateway.runtime.service import running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Consent, Reason, Source, now
from suppression.scope import GLOBAL
from suppression.store import Lookups, OptOuts

SENDER = "news@shop.example"
PEOPLE = {
    "fan@example.com": "consented to 'marketing'",
    "gone@example.com": "consented, then unsubscribed",
    "stranger@example.com": "never consented",
    "bounced@example.com": "consented, then hard-bounced",
}


@dataclass
class _Sink:
    """The next hop: keeps what arrives."""

    received: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 OK"


def _message(subject: str, kind: str | None = None, attachment: bool = False) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Shop <{SENDER}>"
    msg["To"] = "customers@shop.example"
    msg["Subject"] = subject
    if kind:
        msg["X-Optgate-Class"] = kind
    msg.set_content("Hello,\n\nour autumn collection is here.\n")
    if attachment:
        msg.add_alternative(
            "<html><body><p>Our <b>autumn</b> collection.</p></body></html>", subtype="html"
        )
        msg.add_attachment(
            b"%PDF-1.4 demo", maintype="application", subtype="pdf", filename="catalogue.pdf"
        )
    return msg


SCENARIOS = (
    ("marketing to everyone", _message("Autumn sale"), list(PEOPLE)),
    (
        "transactional receipt (opt-outs do not apply, hard bounces do)",
        _message("Your receipt", "transactional"),
        ["gone@example.com", "bounced@example.com"],
    ),
    (
        "multipart/alternative with a PDF attachment",
        _message("Catalogue", attachment=True),
        ["fan@example.com"],
    ),
)


async def _seed(store: OptOuts) -> None:
    everyone = ("fan@example.com", "gone@example.com", "bounced@example.com")
    await store.record_consents(
        [Consent(normalize(a).sha256, "marketing", True, "demo", now()) for a in everyone],
        actor="demo",
    )
    for address, reason, source in (
        ("gone@example.com", Reason.UNSUBSCRIBED, Source.WEB),
        ("bounced@example.com", Reason.BOUNCED, Source.BOUNCE),
    ):
        a = normalize(address)
        recipient = Recipient.hashed(a.sha256, a.normalized)
        event = SuppressionEvent(recipient, GLOBAL, reason, source)
        await optouts.opt_out(store, [event], actor="demo")


def _added_lines(original: bytes, copy: bytes) -> list[str]:
    """Header fields and decoded body lines the copy has and the original had not."""
    before = email.message_from_bytes(original, policy=email.policy.default)
    after = email.message_from_bytes(copy, policy=email.policy.default)
    lines = [f"{k}: {v}" for k, v in after.items() if k not in before]
    seen = {
        line
        for part in before.walk()
        if part.get_content_maintype() == "text"
        for line in str(part.get_content()).splitlines()
    }
    for part in after.walk():
        if part.get_content_maintype() == "text":
            kind = part.get_content_subtype()
            lines += [
                f"[{kind} footer] {line.strip()}"
                for line in str(part.get_content()).splitlines()
                if line.strip() and line not in seen
            ]
    return lines


async def _scenario(
    config: Config,
    port: int,
    sink: _Sink,
    store: Lookups,
    title: str,
    msg: EmailMessage,
    rcpts: list[str],
) -> None:
    print(f"\n== {title}")
    kind = MessageClass(str(msg.get("X-Optgate-Class", "marketing")))
    rules = Rules(config.policy.require_consent, config.policy.consent_versions)
    start = len(sink.received)
    response = await aiosmtplib.send(
        msg, hostname="127.0.0.1", port=port, sender=SENDER, recipients=rcpts
    )
    print(f"   optgate answered: {response[1]}")
    copies = {r: data for rs, data in sink.received[start:] for r in rs}
    for rcpt in rcpts:
        decided = await verdict(store, normalize(rcpt), kind, "marketing", rules)
        state = "RELAYED" if rcpt in copies else "dropped"
        print(f" - {rcpt} ({PEOPLE[rcpt]}): {state}: {decided.explanation}")
        if rcpt in copies:
            for line in _added_lines(msg.as_bytes(), copies[rcpt]):
                print(f"     + {line}")


async def run_demo() -> None:
    """Run every scenario and print, per recipient, the verdict and what was added."""
    logs.configure(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="optgate-demo-") as tmp:
        sink = _Sink()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(sink), "127.0.0.1", 0)
        config = load(
            None,
            {
                "OPTGATE_SMTP_LISTEN": "127.0.0.1:0",
                "OPTGATE_WEB_LISTEN": "127.0.0.1:0",
                "OPTGATE_API_LISTEN": "",  # no admin listener for a demo
                "OPTGATE_RELAY_NEXT_HOP": f"127.0.0.1:{server.sockets[0].getsockname()[1]}",
                "OPTGATE_STORE_URL": f"sqlite:///{Path(tmp) / 'demo.db'}",
                "OPTGATE_UNSUBSCRIBE_KEY_FILE": str(Path(tmp) / "demo.key"),
                "OPTGATE_STORE_AUDIT_KEY_FILE": str(Path(tmp) / "demo-audit.key"),
                "OPTGATE_STORE_AUDIT_ANCHOR_FILE": str(Path(tmp) / "demo-audit.head"),
                "OPTGATE_UNSUBSCRIBE_BASE_URL": "https://unsubscribe.shop.example",
                "OPTGATE_UNSUBSCRIBE_MAILTO": "unsubscribe@shop.example",
            },
        )
        store = await open_configured(config, create=True)
        try:
            await _seed(store)
            print(f"store {config.store.url} (temporary), next hop: a local recording sink")
            async with running(config) as gate:
                for title, msg, rcpts in SCENARIOS:
                    await _scenario(config, gate.smtp_port, sink, store, title, msg, rcpts)
        finally:
            await store.close()
            server.close()
