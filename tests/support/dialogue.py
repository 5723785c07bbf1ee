"""A raw SMTP client for tests that must send bytes no library would (NUL, bad paths)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

TIMEOUT = 10.0


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and the text of each of its lines."""

    code: int
    lines: tuple[bytes, ...]

    @property
    def text(self) -> str:
        """All lines' text, joined."""
        return " ".join(line.decode("utf-8", "replace") for line in self.lines)


class Dialogue:
    """One SMTP session over a real socket: send a line, read the reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> Reply:
        """The next reply; code 0 for a closed connection (EOF)."""
        async with asyncio.timeout(TIMEOUT):
            lines = [await self.reader.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(await self.reader.readline())
        if not lines[-1].endswith(b"\n") or not lines[0][:3].isdigit():
            return Reply(0, tuple(lines))
        return Reply(int(lines[0][:3]), tuple(line[4:].rstrip(b"\r\n") for line in lines))

    async def say(self, line: bytes | str) -> Reply:
        """Send one command line (CRLF added) and read its reply."""
        raw = line.encode() if isinstance(line, str) else line
        self.writer.write(raw + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def data(self, content: bytes) -> Reply:
        """The content of an accepted DATA, dot-stuffed, and its final reply."""
        lines = content.replace(b"\r\n", b"\n").split(b"\n")
        stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
        self.writer.write(stuffed.rstrip(b"\r\n") + b"\r\n.\r\n")
        await self.writer.drain()
        return await self.reply()


@contextlib.asynccontextmanager
async def dialogue(port: int, ehlo: str = "client.test") -> AsyncIterator[Dialogue]:
    """A session past the greeting and EHLO (both asserted 2xx)."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    session = Dialogue(reader, writer)
    try:
        greeting = await session.reply()
        assert greeting.code == 220, greeting
        assert (await session.say(f"EHLO {ehlo}")).code == 250
        yield session
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
