"""The aiosmtpd side: admission, limits, and a thin handler that calls the pipeline."""

from __future__ import annotations

import asyncio
import ipaddress
import traceback
from collections.abc import Sequence
from typing import Any

import structlog
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.inbound.receive import MIXED, NOT_INBOUND, Receiver, one_reply
from gateway.inbound.trace import Client
from gateway.pipeline import Envelope as Message
from gateway.pipeline import Pipeline
from gateway.policy import MessageClass

log = structlog.get_logger("optgate.smtp")

OK = "250 OK"
DENIED_CONNECT = "554 5.7.1 Access denied: this client may not relay through optgate"
BUSY = "421 4.7.0 Too many sessions, try again later"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
OPTED_OUT = "550 5.7.1 Recipient has opted out"
BAD_ADDRESS = "550 5.1.3 Recipient address is not valid"
INTERNAL = "451 4.3.0 Temporary local problem, try again later"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def null_to_empty(mail_from: str | None) -> str:
    """The envelope sender, with the null sender ``<>`` as an empty string."""
    return mail_from if mail_from and mail_from != "<>" else ""


def peer_client(session: Session) -> Client | None:
    """The connecting client's address and HELO name (for SPF and per-client limits)."""
    peer = session.peer
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    return Client(peer[0], session.host_name or "")


class Admission:
    """Who may connect, and how many at once."""

    def __init__(self, networks: Sequence[str], max_sessions: int) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )
        self.max_sessions = max_sessions
        self.sessions = 0

    def refusal(self, peer: Any) -> str | None:
        """The reply that refuses a new connection, or None to admit it."""
        try:
            ip = ipaddress.ip_address(peer[0]) if peer else None
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip is None or not any(ip in net for net in self.networks):
            return DENIED_CONNECT
        if self.sessions >= self.max_sessions:
            return BUSY
        return None


class GateSMTP(SMTP):
    """aiosmtpd's SMTP that refuses clients outside the allowed networks at connect."""

    def __init__(
        self, handler: Handler | InboundHandler, admission: Admission, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self._admission = admission
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Greet admitted clients; refuse the others with one line and close."""
        refusal = self._admission.refusal(transport.get_extra_info("peername"))
        if refusal is not None:
            log.warning("connection_refused", reply=refusal[:3])
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(f"{refusal}\r\n".encode())
            transport.close()
            return
        self._admitted = True
        self._admission.sessions += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Forget the session (refused connections were never started)."""
        if self._admitted:
            self._admitted = False
            self._admission.sessions -= 1
            super().connection_lost(error)


class GateLMTP(GateSMTP, LMTP):
    """The same admission in front of LMTP (LHLO, one reply per recipient after DATA)."""


def session_error(error: Exception) -> str:
    """Log an unexpected error (type and place, never its message) and ask for a retry."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    # the message itself may quote an address: log the type and place only
    log.error("session_error", error=type(error).__name__, where=where)
    return INTERNAL


class Pipelining:
    """Handlers whose EHLO (and LMTP's LHLO) reply offers PIPELINING (RFC 2920).

    aiosmtpd reads pipelined commands in turn and answers each in order; it just
    does not say so. Offered, Postfix sends MAIL, RCPT and DATA in one write: two
    round trips per message instead of four. RFC 2033 requires it of LMTP servers.
    """

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd's reply, with PIPELINING after the greeting line."""
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", *responses[1:]]


class Handler(Pipelining):
    """SMTP events in, pipeline call (or the inbound receiver for its addresses), reply out."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_recipients: int,
        reject: bool,
        receiver: Receiver | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._max_recipients = max_recipients
        self._reject = reject
        self._receiver = receiver
        self.in_flight: set[asyncio.Task[Any]] = set()

    def _inbound(self, address: str) -> bool:
        return self._receiver is not None and self._receiver.takes(address)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Count recipients; keep inbound and outbound apart; in reject mode, refuse opt-outs."""
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return TOO_MANY_RCPTS
        inbound = self._inbound(address)
        if envelope.rcpt_tos and inbound != self._inbound(envelope.rcpt_tos[0]):
            return MIXED
        if self._reject and not inbound:
            topic = self._pipeline.sender_topic(envelope.mail_from or "")
            [decision] = await self._pipeline.verdicts([address], MessageClass.MARKETING, topic)
            if not decision.verdict.keep:
                log.info(
                    "recipient",
                    verdict="reject",
                    reason=decision.verdict.reason,
                    topic=topic,
                    rcpt=decision.sha256[:16] or None,
                )
                return BAD_ADDRESS if decision.address is None else OPTED_OUT
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Run the pipeline (or the receiver, for inbound addresses); the reply is theirs."""
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            return await self._data(session, envelope)
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def _data(self, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        mail_from = null_to_empty(envelope.mail_from)
        if self._receiver is not None and self._inbound(envelope.rcpt_tos[0]):
            replies = await self._receiver.receive(
                content, mail_from, envelope.rcpt_tos, peer_client(session)
            )
            return one_reply(replies)
        message = Message(
            mail_from,
            tuple(envelope.rcpt_tos),
            content,
            tuple(o for o in envelope.mail_options if o.upper().startswith(("SMTPUTF8", "BODY="))),
        )
        return str(await self._pipeline.process(message))

    async def handle_exception(self, error: Exception) -> str:
        """Log and ask the client to retry; never crash the server."""
        return session_error(error)


class InboundHandler(Pipelining):
    """The listener of [inbound] listen: inbound addresses only, SMTP or LMTP, never relays."""

    def __init__(self, receiver: Receiver, *, max_recipients: int, lmtp: bool) -> None:
        self._receiver = receiver
        self._max_recipients = max_recipients
        self._lmtp = lmtp

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept the inbound addresses, refuse everything else (no relaying here)."""
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return TOO_MANY_RCPTS
        if not self._receiver.takes(address):
            return NOT_INBOUND
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Receive; LMTP answers once per recipient (RFC 2033), SMTP once."""
        replies = await self._receiver.receive(
            envelope.original_content or b"",
            null_to_empty(envelope.mail_from),
            envelope.rcpt_tos,
            peer_client(session),
        )
        return "\r\n".join(replies) if self._lmtp else one_reply(replies)

    async def handle_exception(self, error: Exception) -> str:
        """Log and ask the client to retry; never crash the server."""
        return session_error(error)
