"""The aiosmtpd side: admission, envelope rules, limits, a thin handler calling the pipeline."""

from __future__ import annotations

import asyncio
import ipaddress
import mmap
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr, cast

import structlog
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import Networks
from gateway.errors import PathError, Phase, smtp_reply
from gateway.inbound.receive import MIXED, NOT_INBOUND, Receiver, one_reply
from gateway.inbound.trace import Client
from gateway.outbound.message import Envelope as Message
from gateway.outbound.pipeline import Pipeline
from gateway.smtp.paths import NULL, POSTMASTER, parse_path
from gateway.smtp.relay import Relay
from gateway.smtp.xforward import EHLO_LINE, BadXforward, Forwarded, parse_xforward
from suppression.address import normalize
from suppression.errors import InvalidAddress

log = structlog.get_logger("optgate.smtp")

# the replies of policy and envelope rules; every error's reply is gateway/errors.py's
OK = "250 OK"
DENIED_CONNECT = "554 5.7.1 Access denied: this client may not relay through optgate"
BUSY = "421 4.7.0 Too many sessions, try again later"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
OPTED_OUT = "550 5.7.1 Recipient has opted out"
NO_DOMAIN_SENDER = "501 5.1.7 A sender address needs a domain (<Postmaster> is a recipient only)"
NULL_RECIPIENT = "501 5.1.3 The null path <> is a sender only"
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII addresses need MAIL FROM with SMTPUTF8 (RFC 6531)"
CANNOT_VRFY = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
XFORWARD_IN_MAIL = "503 5.5.1 Error: MAIL transaction in progress"
XFORWARD_UNKNOWN = '500 Error: command "XFORWARD" not recognized'
XFORWARD_NO_EHLO = "503 5.5.1 Error: send EHLO first"
# aiosmtpd's words for a message over the limit (at MAIL FROM SIZE=, after DATA), restated
# with the enhanced status code (RFC 3463) a sending MTA bounces on
_RESTATED = {
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "552 Error: Too much mail data": TOO_BIG,
}

# bytes the rewrite may add to a message: footer parts, List-* and Feedback-ID fields,
# DKIM signatures; a copy that still outgrows the next hop's SIZE is refused (552 5.3.4)
REWRITE_MARGIN = 65536
LEARN_SECONDS = 5.0  # an EHLO waits this long at most for the next hop's SIZE

ANYONE: Networks = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def null_to_empty(mail_from: str | None) -> str:
    """The envelope sender, with the null sender ``<>`` as an empty string."""
    return mail_from if mail_from and mail_from != "<>" else ""


class Sessions:
    """The sessions of one listener in this process."""

    def __init__(self) -> None:
        self._count = 0

    def total(self) -> int:
        """Sessions open now."""
        return self._count

    def add(self, delta: int) -> None:
        """A session started (+1) or ended (-1)."""
        self._count += delta


class SharedSessions(Sessions):
    """The sessions of one listener in every worker: each worker counts in its own slot of
    memory the supervisor shares with all of them, and reads the sum.

    A slot has one writer (its worker's event loop), so no lock is needed; two workers
    admitting at the same instant may each see the other's count one short, so the
    limit may be passed by up to workers - 1. A worker that replaces a dead one starts
    its slot at 0 (the dead one's connections died with it).
    """

    def __init__(self, slots: memoryview, slot: int) -> None:
        super().__init__()
        self._slots, self._slot = slots, slot
        slots[slot] = 0

    def total(self) -> int:
        """Sessions open now, in all workers."""
        return sum(self._slots)

    def add(self, delta: int) -> None:
        """A session of this worker started (+1) or ended (-1)."""
        self._slots[self._slot] += delta


LISTENERS = ("smtp", "inbound", "partners")


class SessionBoard:
    """Memory for every worker's session counts, made by the supervisor before it forks."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._memory = mmap.mmap(-1, 4 * workers * len(LISTENERS))  # shared with children
        self._view = memoryview(self._memory).cast("i")

    def sessions(self, listener: str, worker: int) -> SharedSessions:
        """One worker's counter for one listener."""
        start = LISTENERS.index(listener) * self.workers
        return SharedSessions(self._view[start : start + self.workers], worker)


def advertised_size(own: int, next_hop: int | None) -> int:
    """The SIZE the main listener offers and holds to: ``[smtp] max_message_size`` (0: none),
    or the next hop's SIZE less the rewrite's margin when that is smaller."""
    if next_hop is None:
        return own
    room = max(1, next_hop - REWRITE_MARGIN)
    return min(own, room) if own else room


class SizeLimit:
    """The main listener's size limit, agreed with the next hop's SIZE on every EHLO (the
    pool learns it from each connection it opens; the first EHLO may open one)."""

    def __init__(self, own: int, relay: Relay) -> None:
        self._own, self._relay = own, relay

    async def __call__(self) -> int:
        """The limit now; the own one while the next hop cannot be reached."""
        try:
            async with asyncio.timeout(LEARN_SECONDS):
                hop = await self._relay.size_limit()
        except TimeoutError:
            hop = None
        return advertised_size(self._own, hop)


class GateEnvelope(Envelope):
    """aiosmtpd's envelope with the transaction's XFORWARD attributes (reset with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.xforward: Forwarded | None = None


def forwarded(session: Session, envelope: Envelope) -> Forwarded | None:
    """The message's original client: as XFORWARD said, else the connecting client."""
    given = getattr(envelope, "xforward", None)
    if isinstance(given, Forwarded):
        return given
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[0], str):
        try:
            port = int(peer[1])
            return Forwarded.of_session(
                peer[0], port, session.host_name or "", session.extended_smtp
            )
        except ValueError:
            return None
    return None


def peer_client(session: Session) -> Client | None:
    """The connecting client's address and HELO name (for SPF and per-client limits)."""
    peer = session.peer
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    return Client(peer[0], session.host_name or "")


class Admission:
    """Who may connect, and how many at once."""

    def __init__(
        self, networks: Networks, max_sessions: int, sessions: Sessions | None = None
    ) -> None:
        self.networks = networks  # parsed by the configuration
        self.max_sessions = max_sessions
        self.sessions = sessions or Sessions()

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
        if self.sessions.total() >= self.max_sessions:
            return BUSY
        return None


class GateSMTP(SMTP):
    """aiosmtpd's SMTP behind an Admission, with RFC 5321's path grammar.

    Clients outside the allowed networks get 554 at connect, clients over the
    session limit 421; malformed paths in MAIL and RCPT get 501 (aiosmtpd's own
    parser is the e-mail header parser, see gateway/smtp/paths.py). ``size``: the
    limit agreed with the next hop, asked for on every HELO / EHLO / LHLO (else
    ``data_size_limit`` as given). XFORWARD is taken when the handler offers it.
    """

    def __init__(
        self,
        handler: Any,
        admission: Admission,
        *,
        size: Callable[[], Awaitable[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._admission = admission
        self._admitted = False
        self._size = size

    def _create_envelope(self) -> Envelope:
        return GateEnvelope()

    async def push(self, status: AnyStr) -> bool:
        """Send a reply; aiosmtpd's size refusals with their enhanced status code."""
        if isinstance(status, str) and status in _RESTATED:
            log.info("message_too_big", limit=self.data_size_limit)
            return bool(await super().push(_RESTATED[status]))
        return bool(await super().push(status))

    async def _agree_size(self) -> None:
        if self._size is not None:
            self.data_size_limit = await self._size()

    async def smtp_HELO(self, hostname: str) -> None:
        """HELO, under the size limit agreed now."""
        await self._agree_size()
        await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        """EHLO, offering (and holding to) the size limit agreed now."""
        await self._agree_size()
        await super().smtp_EHLO(hostname)

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD (the original client, for the next hop's log), where offered:
        501 for a malformed command, 503 inside a transaction; reset with the transaction."""
        envelope = self.envelope
        assert self.session is not None
        assert envelope is not None
        if not getattr(self.event_handler, "xforward", False):
            await self.push(XFORWARD_UNKNOWN)
        elif not self.session.extended_smtp:
            await self.push(XFORWARD_NO_EHLO)
        elif envelope.mail_from is not None:
            await self.push(XFORWARD_IN_MAIL)
        else:
            try:
                given = parse_xforward(arg or "")
            except BadXforward as exc:
                await self.push(f"501 5.5.4 Bad XFORWARD command: {exc}")
                return
            assert isinstance(envelope, GateEnvelope)
            before = envelope.xforward
            envelope.xforward = Forwarded.start(given) if before is None else before.update(given)
            await self.push(OK)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Greet admitted clients; refuse the others with one line and close."""
        refusal = self._admission.refusal(transport.get_extra_info("peername"))
        if refusal is not None:
            log.warning("connection_refused", reply=refusal[:3])
            # uvloop's transports write like asyncio's but are not its WriteTransport
            cast(asyncio.WriteTransport, transport).write(f"{refusal}\r\n".encode())
            transport.close()
            return
        self._admitted = True
        self._admission.sessions.add(1)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Forget the session (refused connections were never started)."""
        if self._admitted:
            self._admitted = False
            self._admission.sessions.add(-1)
            super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path by RFC 5321's grammar (aiosmtpd's parser hook); PathError if malformed."""
        return parse_path(arg) if arg else ("", "")

    async def smtp_MAIL(self, arg: str | None) -> None:
        """MAIL FROM, with 501 for a malformed path."""
        try:
            await super().smtp_MAIL(arg)
        except PathError as exc:
            await self.push(smtp_reply(exc, Phase.MAIL))

    async def smtp_RCPT(self, arg: str | None) -> None:
        """RCPT TO, with 501 for a malformed path."""
        try:
            await super().smtp_RCPT(arg)
        except PathError as exc:
            await self.push(smtp_reply(exc, Phase.RCPT))

    async def smtp_VRFY(self, arg: str | None) -> None:
        """VRFY confirms nothing (RFC 5321 3.5.3), so it needs no parsing."""
        if await self.check_auth_needed("VRFY"):
            return
        await self.push(CANNOT_VRFY if arg else "501 5.5.4 Syntax: VRFY <address>")


class GateLMTP(GateSMTP, LMTP):
    """The same admission in front of LMTP (LHLO, one reply per recipient after DATA)."""

    async def smtp_LHLO(self, arg: str) -> None:
        """LHLO, offering (and holding to) the size limit agreed now."""
        await self._agree_size()
        await super().smtp_LHLO(arg)


def session_error(error: Exception) -> str:
    """Log an unexpected error (type and place, never its message) and ask for a retry."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    # the message itself may quote an address: log the type and place only
    log.error("session_error", error=type(error).__name__, where=where)
    return smtp_reply(error, Phase.SESSION)


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


class EnvelopeRules:
    """What MAIL FROM and RCPT TO may carry beyond the path grammar, for every listener that
    takes mail (the handlers below): SMTPUTF8 for non-ASCII, ``<>`` for senders only,
    ``<Postmaster>`` for recipients only."""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept a sender the rules allow (aiosmtpd checked the parameters)."""
        if address.lower() == POSTMASTER:
            return NO_DOMAIN_SENDER
        if not address.isascii() and not envelope.smtp_utf8:
            return NEEDS_SMTPUTF8
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return OK

    @staticmethod
    def recipient_problem(envelope: Envelope, address: str) -> str | None:
        """The refusal of a recipient path the rules do not allow, or None."""
        if address == NULL:
            return NULL_RECIPIENT
        if not address.isascii() and not envelope.smtp_utf8:
            return NEEDS_SMTPUTF8
        return None


class Handler(Pipelining, EnvelopeRules):
    """SMTP events in, pipeline call (or the inbound receiver for its addresses), reply out.

    It offers XFORWARD (every client the listener admits is in ``[smtp]
    allowed_clients``): a content filter's Postfix names the original client, which
    classifies by client network and is passed on to the next hop's log.
    """

    xforward = True

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """The EHLO (LHLO) reply with PIPELINING and XFORWARD."""
        lines = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [*lines[:-1], f"250-{EHLO_LINE}", lines[-1]]

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_recipients: int,
        reject: bool,
        receiver: Receiver | None = None,
        lmtp: bool = False,
    ) -> None:
        self._pipeline = pipeline
        self._lmtp = lmtp
        self._max_recipients = max_recipients
        self._reject = reject
        self._receiver = receiver
        self.in_flight: set[asyncio.Task[Any]] = set()

    def _inbound(self, address: str) -> bool:
        return self._receiver is not None and self._receiver.takes(address)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse what cannot be relayed; count recipients; keep inbound and outbound apart;
        in reject mode, refuse opt-outs."""
        problem = self.recipient_problem(envelope, address)
        if problem is not None:
            return problem
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return TOO_MANY_RCPTS
        inbound = self._inbound(address)
        if not inbound:
            try:
                normalize(address)
            except InvalidAddress as exc:
                # every 250 here ends in a relayed copy or a policy's drop, never in an
                # "invalid" drop after DATA
                return smtp_reply(exc, Phase.RCPT)
        if envelope.rcpt_tos and inbound != self._inbound(envelope.rcpt_tos[0]):
            return MIXED
        if self._reject and not inbound:
            mail_from = envelope.mail_from or ""
            client = forwarded(session, envelope)
            topic = self._pipeline.sender_topic(mail_from)
            kind, by = self._pipeline.envelope_class(
                mail_from, client.client_ip if client else None
            )
            [decision] = await self._pipeline.verdicts([address], kind, topic)
            if not decision.verdict.keep:
                log.info(
                    "recipient",
                    verdict="reject",
                    reason=decision.verdict.reason,
                    topic=topic,
                    kind=kind.value,
                    class_by=by,
                    rcpt=decision.sha256[:16] or None,
                )
                return OPTED_OUT
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Run the pipeline (or the receiver, for inbound addresses); the reply is theirs."""
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            return await self._data(server, session, envelope)
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def _data(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        mail_from = null_to_empty(envelope.mail_from)
        if self._receiver is not None and self._inbound(envelope.rcpt_tos[0]):
            replies = await self._receiver.receive(
                content, mail_from, envelope.rcpt_tos, peer_client(session)
            )
            return "\r\n".join(replies) if self._lmtp else one_reply(replies)
        message = Message(
            mail_from,
            tuple(envelope.rcpt_tos),
            content,
            tuple(o for o in envelope.mail_options if o.upper().startswith(("SMTPUTF8", "BODY="))),
            forwarded(session, envelope),
        )
        result = await self._pipeline.process(message)
        if self._lmtp:  # one reply per recipient (RFC 2033)
            return "\r\n".join(str(r) for r in result.replies)
        return str(await self._pipeline.report(message, result, server.hostname))

    async def handle_exception(self, error: Exception) -> str:
        """Log and ask the client to retry; never crash the server."""
        return session_error(error)


class InboundHandler(Pipelining, EnvelopeRules):
    """The listener of [inbound] listen: inbound addresses only, SMTP or LMTP, never relays."""

    def __init__(self, receiver: Receiver, *, max_recipients: int, lmtp: bool) -> None:
        self._receiver = receiver
        self._max_recipients = max_recipients
        self._lmtp = lmtp

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept the inbound addresses, refuse everything else (no relaying here)."""
        problem = self.recipient_problem(envelope, address)
        if problem is not None:
            return problem
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
