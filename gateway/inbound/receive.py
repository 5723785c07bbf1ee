"""A message for optgate's own addresses, live: classify, keep if configured, apply.

Nothing that arrives here is relayed, and nothing is ever sent back: a bounce
about an inbound message would be answered by another bounce (a loop), so
every outcome is a reply in the SMTP/LMTP session and a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from gateway.config import Config
from gateway.errors import Deferred, Phase, smtp_reply
from gateway.inbound.apply import apply
from gateway.inbound.authentication import Origin
from gateway.inbound.classify import classify
from gateway.inbound.mailboxes import Mailboxes, Role
from gateway.inbound.mailed_optouts import OptOuts
from gateway.inbound.trace import Client
from gateway.runtime.metrics import Metrics
from gateway.tokens import TokenSigner
from suppression.store import Mailbox

log = structlog.get_logger("optgate.inbound")

ACCEPTED = "250 2.0.0 OK: processed, nothing is relayed"
MIXED = "452 4.5.3 Inbound and outbound recipients go in separate transactions: send this one later"
NOT_INBOUND = "550 5.7.1 This listener only takes mail for optgate's inbound addresses"
TOO_BIG = "552 5.3.4 Message too big for an inbound address"


class Receiver:
    """Takes messages for the inbound addresses; one reply per envelope recipient."""

    def __init__(
        self,
        *,
        store: Mailbox,
        config: Config,
        signer: TokenSigner,
        mailboxes: Mailboxes,
        metrics: Metrics,
    ) -> None:
        self._store, self._config, self._signer = store, config, signer
        self._mailboxes, self._metrics = mailboxes, metrics
        self._keep = Path(config.inbound.keep_raw) if config.inbound.keep_raw else None
        self._optouts = OptOuts.from_config(config, store, mailboxes)

    def takes(self, address: str) -> bool:
        """Whether an envelope recipient is one of the inbound addresses."""
        return self._mailboxes.role(address) is not None

    async def receive(
        self,
        raw: bytes,
        mail_from: str,
        rcpt_tos: Sequence[str],
        client: Client | None = None,
    ) -> list[str]:
        """Classify and apply once per recipient; never relays, never answers by mail
        (a confirmation link goes to the address an opt-out names, never to the sender).
        ``client`` is the connecting peer: its address and HELO name."""
        if len(raw) > self._config.inbound.max_message_size:
            log.warning("inbound_refused", problem="too big", size=len(raw))
            return [TOO_BIG] * len(rcpt_tos)
        try:
            await self._kept(raw)
        except OSError as exc:
            log.error("inbound_keep_failed", error=exc.strerror)
            return [smtp_reply(exc, Phase.DATA)] * len(rcpt_tos)
        origin = Origin(raw, mail_from, client)
        return [await self._one(origin, rcpt) for rcpt in rcpt_tos]

    async def _one(self, origin: Origin, rcpt: str) -> str:
        raw, mail_from = origin.raw, origin.mail_from
        boxes = self._mailboxes
        try:
            classification = await asyncio.to_thread(
                classify,
                raw,
                mail_from=mail_from,
                rcpt_to=rcpt,
                unsubscribe_local=boxes.local(Role.UNSUBSCRIBE),
                bounce_local=boxes.local(Role.BOUNCE),
            )
            applied = await apply(
                classification,
                store=self._store,
                config=self._config,
                signer=self._signer,
                origin=origin,
                optouts=self._optouts,
            )
        except Deferred as exc:
            log.warning("inbound_deferred", problem=str(exc), role=boxes.role(rcpt))
            return smtp_reply(exc, Phase.DATA)
        except Exception as exc:  # the store failed: the sender retries, nothing is lost
            log.error("inbound_failed", error=type(exc).__name__, role=boxes.role(rcpt))
            return smtp_reply(exc, Phase.DATA)
        counts = {name: count for name, count in applied.counts().items() if count}
        for name, count in counts.items():
            self._metrics.inbound.labels(name).inc(count)
        log.info(
            "inbound_message",
            role=boxes.role(rcpt),
            message_id=classification.message_id,
            digest=classification.digest[:16],
            null_sender=not mail_from,
            **counts,
        )
        return ACCEPTED

    async def _kept(self, raw: bytes) -> None:
        """Keep the raw message as DIGEST.eml (0600) when [inbound] keep_raw names a directory."""
        if self._keep is not None:
            await asyncio.to_thread(keep, self._keep, raw)


def keep(directory: Path, raw: bytes) -> Path:
    """Write a message under its digest, readable by its owner only (whole, or not at all)."""
    path = directory / f"{hashlib.sha256(raw).hexdigest()}.eml"
    if path.exists():
        return path  # the same message again
    partial = directory / f".{path.name}.{os.getpid()}.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    os.replace(partial, path)
    return path


def one_reply(replies: Sequence[str]) -> str:
    """One SMTP reply for many recipients: any temporary failure asks for a retry of all."""
    for first in ("4", "5"):
        found = [r for r in replies if r.startswith(first)]
        if found:
            return found[0]
    return ACCEPTED
