"""A raw SMTP/LMTP client for tests that read every reply after DATA (one per recipient
in LMTP, RFC 2033), which smtplib does not."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


async def _reply(reader: asyncio.StreamReader) -> str:
    """One (possibly multi-line) reply, as 'code text' of its last line."""
    while True:
        line = (await reader.readline()).decode().rstrip("\r\n")
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != "-":
            return line


async def transaction(
    port: int, mail_from: str, rcpts: Sequence[str], data: bytes, *, lmtp: bool = False
) -> list[str]:
    """Send one message. SMTP: the one reply after the final ".". LMTP: one reply per
    recipient in envelope order (its RCPT refusal, or its reply after the final ".")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(f"{'LHLO' if lmtp else 'EHLO'} client.test\r\n".encode())
        await _reply(reader)
        writer.write(f"MAIL FROM:<{mail_from}>\r\n".encode())
        assert (await _reply(reader)).startswith("250")
        at_rcpt: list[str | None] = []
        for rcpt in rcpts:
            writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
            reply = await _reply(reader)
            at_rcpt.append(None if reply.startswith("250") else reply)
        writer.write(b"DATA\r\n")
        assert (await _reply(reader)).startswith("354")
        body = data.replace(b"\r\n.", b"\r\n..")
        writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        if not lmtp:
            replies = [await _reply(reader)]
        else:
            replies = [r if r is not None else await _reply(reader) for r in at_rcpt]
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return replies
    finally:
        writer.close()
