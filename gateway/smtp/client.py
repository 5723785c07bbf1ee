"""One connection to the next hop, with RFC 2920 command pipelining.

aiosmtplib, used elsewhere, waits for each reply before the next command, so a
copy costs four round trips (MAIL, RCPT, DATA, the content). When the next hop
offers PIPELINING, as Postfix does, MAIL, RCPT and DATA go out in one write
here and a copy costs two: half the wake-ups of both sides per message.
Replies are read in order, each within the timeout; a connection that ends
or answers out of turn is never used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple, cast

import structlog
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from gateway.smtp.xforward import Forwarded

log = structlog.get_logger("optgate.relay")
# the replies that let MAIL, RCPT and DATA go on
_GO_AHEAD = ((250,), (250, 251), (354,))
MAX_REPLY = 65536  # bytes of one reply (RFC 5321 allows 512 per line; some send many lines)


class Reply(NamedTuple):
    """An SMTP reply: its code and its text (lines joined by newlines)."""

    code: int
    message: str


class Refused(Exception):
    """The next hop answered a command with something other than what goes on."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.message}")
        self.reply = reply


class Broken(Exception):
    """The connection ended, or the next hop spoke something that is not SMTP."""


class TlsFailed(Broken):
    """STARTTLS to the next hop failed: its certificate did not verify, or the handshake."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"TLS to the next hop failed: {reason}")
        self.reason = reason


def unverified_tls() -> ssl.SSLContext:
    """TLS without checking the next hop's certificate (a loopback next hop, or opted out)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Busy(Broken):
    """The next hop has no room for this session now: it refused the connection, or
    answered 421 (RFC 5321 3.8) to the greeting, EHLO, MAIL, RCPT or DATA."""


BUSY = 421


class _Replies(asyncio.Protocol):
    """Reads replies off the connection and hands them out in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except Broken as exc:
            self._break(exc)
            return
        if len(self._buffer) > MAX_REPLY:
            self._break(Broken("reply too long"))
        self._wake()

    def _break(self, exc: Broken) -> None:
        """The next hop spoke something other than SMTP: fail the waiter, drop the line."""
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> Reply | None:
        """The first complete reply in the buffer (removed from it), if there is one."""
        lines: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise Broken("next hop sent a line that is not an SMTP reply")
            if lines and line[:3] != lines[0][:3]:
                raise Broken("next hop changed the reply code within one reply")
            lines.append(line)
            if line[3:4] != b"-":
                del self._buffer[:start]
                text = "\n".join(part[4:].decode("utf-8", "replace") for part in lines)
                return Reply(int(line[:3]), text)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(Broken(f"connection lost ({type(exc).__name__})" if exc else "connection lost"))

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def ready(self) -> Reply | None:
        """The next reply if it has come in already (None: not yet)."""
        return self._replies.popleft() if self._replies else None

    async def reply(self) -> Reply:
        """The next reply; Broken when the connection ended before it."""
        while not self._replies:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._replies.popleft()

    @property
    def idle(self) -> bool:
        """Nothing unread and nothing pending: safe to start a transaction."""
        return not self._replies and not self._buffer and self.error is None


def _address(address: str, encoding: str) -> bytes:
    if "\r" in address or "\n" in address or "<" in address or ">" in address:
        raise Refused(Reply(501, "5.1.3 address not usable in an SMTP command"))
    try:
        return b"<" + address.encode(encoding) + b">"
    except UnicodeEncodeError:
        raise Refused(Reply(553, "5.6.7 non-ASCII address without SMTPUTF8")) from None


def _wire(data: bytes) -> bytes:
    """The content as DATA sends it: CRLF line ends, dot-stuffed, ending in CRLF.

    Both steps are regular expressions over the whole message; the counts that
    show a copy needs neither (the rewrite writes CRLF) cost a fraction of that.
    """
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r"):
        data = normalize_message_line_endings(data)
    if data.startswith(b".") or b"\n." in data:
        data = PERIOD_REGEX.sub(b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _forwarded(reply: Reply) -> None:
    """An XFORWARD reply: the copy goes on whatever it says (as Postfix's client does), a
    refusal is logged."""
    if reply.code != 250:
        log.warning("xforward_refused", code=reply.code)


class Connection:
    """An open, greeted SMTP connection, STARTTLS done where wanted."""

    def __init__(self, protocol: _Replies, seconds: float) -> None:
        self._protocol, self._seconds = protocol, seconds
        self.extensions: frozenset[str] = frozenset()  # EHLO keywords, upper case
        self.parameters: dict[str, str] = {}  # EHLO keyword -> the rest of its line
        self.forwards: frozenset[str] = frozenset()  # the XFORWARD attributes it takes

    async def _reply(self) -> Reply:
        """The next reply, within the timeout (TimeoutError). One that came in already (the
        rest of a pipelined group's, as a next hop sends them in one write) is taken
        without a timer: up to three of the five replies of a copy."""
        reply = self._protocol.ready()
        if reply is not None:
            return reply
        async with asyncio.timeout(self._seconds):
            return await self._protocol.reply()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        seconds: float,
        local_hostname: str,
        starttls: str,
        tls: ssl.SSLContext | None = None,
    ) -> Connection:
        """Connect, read the greeting, EHLO; STARTTLS when offered, unless ``starttls`` is
        ``never``; Broken when it is ``required`` and not offered, or when the next hop
        refuses the session; Busy when it refuses the connection or answers 421. ``tls``
        checks the next hop's certificate as it says (None: not at all); a failed check
        or handshake is TlsFailed, and nothing is sent.
        ``seconds`` bounds the connect and each reply."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                _, protocol = await loop.create_connection(_Replies, host, port)
        except ConnectionRefusedError:
            raise Busy("next hop refused the connection") from None
        connection = cls(protocol, seconds)
        try:
            await connection._expect(220)
            await connection._hello(local_hostname)
            if starttls != "never" and "STARTTLS" in connection.extensions:
                await connection._command(b"STARTTLS", 220)
                if not protocol.idle:  # replies sent ahead in plain text: injected
                    raise Broken("next hop sent data ahead of the TLS handshake")
                assert protocol.transport is not None
                try:
                    protocol.transport = await loop.start_tls(
                        protocol.transport,
                        protocol,
                        tls or unverified_tls(),
                        server_hostname=host,
                        ssl_handshake_timeout=seconds,
                    )
                except ssl.SSLCertVerificationError as exc:
                    raise TlsFailed(f"certificate not verified ({exc.verify_message})") from None
                except ssl.SSLError as exc:
                    raise TlsFailed(f"handshake failed ({exc.reason or exc})") from None
                await connection._hello(local_hostname)
            elif starttls == "required":
                raise Broken("next hop does not offer STARTTLS, which [relay] starttls requires")
        except Refused as exc:  # the session, not this copy: try again later
            connection.close()
            if exc.reply.code == BUSY:
                raise Busy(f"next hop is busy: {exc}") from None
            raise Broken(f"next hop refused the session: {exc}") from None
        except BaseException:
            connection.close()
            raise
        return connection

    async def _hello(self, name: str) -> None:
        self._write(b"EHLO " + name.encode("idna") + b"\r\n")
        reply = await self._reply()
        if reply.code == 250:
            words = [line.split(None, 1) for line in reply.message.split("\n")[1:] if line.strip()]
            self.parameters = {w[0].upper(): w[1] if len(w) > 1 else "" for w in words}
            self.extensions = frozenset(self.parameters)
            self.forwards = frozenset(self.parameters.get("XFORWARD", "").upper().split())
            return
        await self._command(b"HELO " + name.encode("idna"), 250)
        self.extensions, self.parameters, self.forwards = frozenset(), {}, frozenset()

    @property
    def size_limit(self) -> int | None:
        """The largest message the next hop takes (its EHLO's SIZE, RFC 1870); None: no limit
        said (no SIZE, SIZE alone or SIZE 0)."""
        value = self.parameters.get("SIZE", "").strip()
        return int(value) if value.isdigit() and int(value) > 0 else None

    def _write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise Broken("connection lost")
        transport.write(data)

    async def _expect(self, *codes: int) -> Reply:
        reply = await self._reply()
        if reply.code not in codes:
            raise Refused(reply)
        return reply

    async def _command(self, command: bytes, *codes: int) -> Reply:
        self._write(command + b"\r\n")
        return await self._expect(*codes)

    @property
    def usable(self) -> bool:
        """Still open and in step: a pooled connection may carry another copy."""
        transport = self._protocol.transport
        return transport is not None and not transport.is_closing() and self._protocol.idle

    async def start(
        self,
        sender: str,
        recipient: str,
        options: Sequence[str] = (),
        *,
        size: int = 0,
        xforward: Forwarded | None = None,
    ) -> None:
        """XFORWARD (when the next hop offers it; its refusal stops nothing), MAIL, RCPT and
        DATA (in one write when PIPELINING is offered), up to the 354.

        ``size``: the copy's length, said as SIZE= when the next hop offers SIZE; a copy
        over the next hop's SIZE is refused here (552 5.3.4) and nothing is sent.
        Refused carries the first reply that was not a go-ahead. Every reply of a
        pipelined group is read before that, so the connection stays in step. A 421
        is Busy instead: the next hop is closing the session, the copy may go on another.
        """
        limit = self.size_limit
        if limit is not None and size > limit:
            raise Refused(
                Reply(552, f"5.3.4 message of {size} bytes exceeds the next hop's {limit}")
            )
        try:
            await self._start(sender, recipient, options, size, xforward)
        except Refused as exc:
            if exc.reply.code != BUSY:
                raise
            self.close()
            raise Busy(f"next hop is busy: {exc}") from None

    async def _start(
        self,
        sender: str,
        recipient: str,
        options: Sequence[str],
        size: int,
        xforward: Forwarded | None,
    ) -> None:
        utf8 = any(option.upper() == "SMTPUTF8" for option in options)
        encoding = "utf-8" if utf8 else "ascii"
        if "8BITMIME" not in self.extensions:  # the copy was made 7bit (RFC 6152 §3)
            options = [o for o in options if not o.upper().startswith("BODY=")]
        if "SIZE" in self.extensions and size:
            options = [*options, f"SIZE={size}"]
        mail = b" ".join(
            [b"MAIL FROM:" + _address(sender, encoding)]
            + [option.encode("ascii") for option in options]
        )
        forward: list[bytes] = []
        if xforward is not None and self.forwards:
            forward = xforward.commands(self.forwards)
        commands = (*forward, mail, b"RCPT TO:" + _address(recipient, encoding), b"DATA")
        if "PIPELINING" not in self.extensions:
            for command in forward:
                self._write(command + b"\r\n")
                _forwarded(await self._reply())
            for command, wanted in zip(commands[len(forward) :], _GO_AHEAD, strict=True):
                await self._command(command, *wanted)
            return
        self._write(b"".join(command + b"\r\n" for command in commands))
        replies = [await self._reply() for _ in commands]
        for reply in replies[: len(forward)]:
            _forwarded(reply)
        replies = replies[len(forward) :]
        for reply, wanted in zip(replies, _GO_AHEAD, strict=True):
            if reply.code not in wanted:
                if replies[-1].code == 354:  # a DATA the next hop took in spite of it
                    # closing ends the transaction; RFC 2920's single "." instead could
                    # deliver an empty message to a recipient a confused next hop kept
                    self.close()
                raise Refused(reply)

    def write_content(self, data: bytes, *, end: bool = False) -> None:
        """The message on the wire; with ``end`` the final "." in the same write."""
        self._write(_wire(data) + b".\r\n" if end else _wire(data))

    def write_end(self) -> None:
        """The final "." that hands the copy over."""
        self._write(b".\r\n")

    async def end_reply(self) -> Reply:
        """The next hop's answer to the final "."."""
        return await self._reply()

    def leave(self) -> None:
        """QUIT and close at once, not waiting for the 221: an idle connection has
        nothing pending, and its place at the next hop is free straight away."""
        with contextlib.suppress(Broken):
            self._write(b"QUIT\r\n")
        self.close()

    async def quit(self) -> None:
        """QUIT, then close; errors on the way out are ignored."""
        with contextlib.suppress(Refused, Broken, OSError, TimeoutError):
            await self._command(b"QUIT", 221)
        self.close()

    def close(self) -> None:
        """Drop the connection at once (a transaction without its "." is discarded)."""
        transport = self._protocol.transport
        if transport is not None:
            transport.close()
