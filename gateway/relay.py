"""The client side: pooled aiosmtplib connections to the next hop, and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib


@dataclass(frozen=True, slots=True)
class Outcome:
    """The next hop's answer for one copy: 2xx delivered, 4xx retry, 5xx refused."""

    code: int
    message: str

    @property
    def delivered(self) -> bool:
        """The next hop accepted the copy."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        """Try again later."""
        return 400 <= self.code < 500


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
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refusal = exc.recipients[0]
                outcome = Outcome(refusal.code, refusal.message)
            except aiosmtplib.SMTPResponseException as exc:
                outcome = Outcome(exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                outcome = Outcome(451, f"next hop unavailable ({type(exc).__name__})")
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

    async def close(self) -> None:
        """Say goodbye on every idle connection."""
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
            client.close()
