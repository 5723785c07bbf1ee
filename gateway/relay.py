"""The client side: pooled aiosmtplib connections to the next hop, and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings


@dataclass(frozen=True, slots=True)
class Outcome:
    """The next hop's answer for one copy: 2xx delivered, 4xx retry, 5xx refused."""

    code: int
    message: str
    # the whole copy went out but no reply came back: the next hop may have it
    uncertain: bool = False

    @property
    def delivered(self) -> bool:
        """The next hop accepted the copy."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        """Try again later."""
        return 400 <= self.code < 500


def _failure(exc: Exception) -> Outcome:
    """The outcome of a transaction that raised: the next hop's refusal, or 451."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refusal = exc.recipients[0]
        return Outcome(refusal.code, refusal.message)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Outcome(exc.code, exc.message)
    return Outcome(451, f"next hop unavailable ({type(exc).__name__})")


# commit(finish): store that the copy is sent, call finish() at once; False: another
# node owns the copy now (finish is not called)
Commit = Callable[[Callable[[], None]], Awaitable[bool]]


class Relay:
    """A bounded pool of persistent connections to one next hop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int,
        timeout: float,
        starttls: str,
        local_hostname: str,
    ) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._starttls = starttls
        self._local_hostname = local_hostname
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(size)

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            timeout=self._timeout,
            start_tls=False,
            local_hostname=self._local_hostname,
        )
        await client.connect()
        await client.ehlo()
        if self._starttls == "required" or (
            self._starttls == "opportunistic" and client.supports_extension("starttls")
        ):
            await client.starttls(validate_certs=False)
        return client

    async def send(
        self, mail_from: str, rcpt: str, data: bytes, options: Sequence[str] = ()
    ) -> Outcome:
        """Relay one copy to one recipient; never raises for SMTP or network errors."""
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is not None:
                    try:
                        return await self._sendmail(client, mail_from, rcpt, data, options)
                    except aiosmtplib.SMTPServerDisconnected:
                        client.close()  # a stale pooled connection: once more on a new one
                client = await self._connect()
                return await self._sendmail(client, mail_from, rcpt, data, options)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                outcome = _failure(exc)
            if client is not None:
                client.close()
            return outcome

    async def _sendmail(
        self,
        client: aiosmtplib.SMTP,
        mail_from: str,
        rcpt: str,
        data: bytes,
        options: Sequence[str],
    ) -> Outcome:
        """One transaction; the connection goes back to the pool after a 250."""
        _, reply = await client.sendmail(mail_from, [rcpt], data, mail_options=list(options))
        self._idle.append(client)
        return Outcome(250, reply)

    async def send_committed(
        self, mail_from: str, rcpt: str, data: bytes, commit: Commit
    ) -> Outcome | None:
        """Relay one copy with a commit point: ``commit(finish)`` runs after the content
        went out; it stores that the copy is sent and calls ``finish()`` straight after,
        in the same step (no other task runs between the two). ``finish`` writes the
        final "." that makes the next hop take the copy.

        When ``commit`` says False without calling ``finish`` the transaction is
        abandoned (the connection closes without the ".", so the next hop discards
        it) and None comes back; once ``finish`` ran, the next hop's reply comes back
        whatever ``commit`` says (the store may fail after the "." went out).
        A copy whose node dies before its commit was never delivered; one whose
        commit is stored is never sent again: each copy goes out at most once,
        and the only window for a loss is a death between the commit and the
        write of five bytes. Never raises for SMTP or network errors.
        """
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is not None:
                    try:
                        await client.mail(mail_from)
                    except aiosmtplib.SMTPServerDisconnected:
                        client.close()  # a stale pooled connection: once more on a new one
                        client = None
                if client is None:
                    client = await self._connect()
                    await client.mail(mail_from)
                return await self._committed(client, rcpt, data, commit)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                outcome = _failure(exc)
            if client is not None:
                client.close()
            return outcome

    async def _committed(
        self,
        client: aiosmtplib.SMTP,
        rcpt: str,
        data: bytes,
        commit: Commit,
    ) -> Outcome | None:
        await client.rcpt(rcpt)
        start = await client.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = client.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        content = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data))
        protocol.write(content if content.endswith(b"\r\n") else content + b"\r\n")
        # waiting for the reply before the "." is written: it cannot arrive unexpected
        pending = asyncio.ensure_future(protocol.read_response(timeout=self._timeout))
        ended = False

        def finish() -> None:
            nonlocal ended
            try:
                protocol.write(b".\r\n")
            except aiosmtplib.SMTPServerDisconnected:
                return
            ended = True

        try:
            stored = await commit(finish)
        finally:
            if not ended:
                pending.cancel()
        if not ended:  # no "." went out: the next hop has nothing
            client.close()
            if not stored:
                return None
            return Outcome(451, "next hop lost the connection before the end of data")
        # the "." went out (even if the store then failed to commit): the reply decides
        try:
            reply = await pending
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            return Outcome(451, f"no reply after the end of data ({type(exc).__name__})", True)
        if reply.code != 250:
            client.close()
            return Outcome(reply.code, reply.message)
        self._idle.append(client)
        return Outcome(250, reply.message)

    async def close(self) -> None:
        """Say goodbye on every idle connection."""
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
            client.close()
