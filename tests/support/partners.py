"""Partner offers in tests: a partner in the store, a recording submission client, waiting."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gateway.config import Config
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import PARTNER_OFFERS, Consent, now
from suppression.partners import OfferStatus, Partner, hash_credential, new_credential
from tests.support.clients import on_client_thread

AUDIENCE = "offer@partners.example.com"


async def add_partner(config: Config, name: str = "acme", **limits: int) -> str:
    """Register a partner; its credential."""
    secret = new_credential()
    store = await open_configured(config, create=True)
    try:
        partner = Partner(name, hash_credential(secret), False, now(), **limits)
        await store.add_partner(partner, actor="test")
    finally:
        await store.close()
    return secret


async def consenting(
    config: Config, addresses: Sequence[str], purpose: str = PARTNER_OFFERS
) -> None:
    """Consent records (with the address kept) for a purpose."""
    store = await open_configured(config, create=True)
    try:
        await store.record_consents(
            [
                Consent(normalize(a).sha256, purpose, True, "test", now(), address=a)
                for a in addresses
            ],
            actor="test",
        )
    finally:
        await store.close()


class _Tee:
    """A socket file that keeps a copy of every byte read through it."""

    def __init__(self, inner: BinaryIO, into: bytearray) -> None:
        self._inner, self._into = inner, into

    def readline(self, limit: int = -1) -> bytes:
        line = self._inner.readline(limit)
        self._into.extend(line)
        return line

    def close(self) -> None:
        self._inner.close()


class RecordingSMTP(smtplib.SMTP):
    """smtplib's client, recording every byte the server sends (in clear, after TLS too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received = bytearray()
        super().__init__(*args, **kwargs)

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = _Tee(self.sock.makefile("rb"), self.received)
        return super().getreply()


@dataclass
class Submission:
    """What the partner's client saw."""

    code: int
    reply: str
    received: bytes = b""


def _refused(code: int, text: bytes | str, client: RecordingSMTP) -> Submission:
    reply = text.decode() if isinstance(text, bytes) else text
    return Submission(code, reply, bytes(client.received))


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the listener's certificate is self-signed here
    return context


async def submit(
    port: int,
    user: str,
    secret: str,
    content: bytes,
    *,
    rcpt: str = AUDIENCE,
    tls: bool = True,
) -> Submission:
    """STARTTLS, AUTH PLAIN, one offer; the first refusal ends it."""

    def work() -> Submission:
        client = RecordingSMTP("127.0.0.1", port, timeout=20)
        try:
            client.ehlo("partner.test")
            if tls:
                client.starttls(context=_client_tls())
                client.ehlo("partner.test")
            try:
                client.login(user, secret)
            except smtplib.SMTPResponseException as exc:
                return _refused(exc.smtp_code, exc.smtp_error, client)
            except smtplib.SMTPNotSupportedError as exc:
                return Submission(0, str(exc), bytes(client.received))
            steps: list[Callable[[], tuple[int, bytes]]] = [
                lambda: client.mail("partner@acme.example"),
                lambda: client.rcpt(rcpt),
                lambda: client.data(content),
            ]
            code, text = 0, b""
            for step in steps:
                try:
                    code, text = step()
                except smtplib.SMTPResponseException as exc:
                    error = exc.smtp_error
                    code, text = (
                        exc.smtp_code,
                        error if isinstance(error, bytes) else error.encode(),
                    )
                if code != 250:
                    break
            return _refused(code, text, client)
            return _refused(code, text, client)
        finally:
            client.close()

    return await on_client_thread(work)


async def statuses(config: Config, partner: str = "acme") -> list[OfferStatus]:
    """The offers of a partner, with exact counts."""
    store = await open_configured(config, create=True)
    try:
        return await store.offer_statuses(partner)
    finally:
        await store.close()


async def until_done(
    config: Config, partner: str = "acme", seconds: float = 60
) -> list[OfferStatus]:
    """Wait until every offer of the partner is done."""
    async with asyncio.timeout(seconds):
        while True:
            found = await statuses(config, partner)
            if found and all(s.state.value == "done" for s in found):
                return found
            await asyncio.sleep(0.2)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServeProcess:
    """``optgate serve --workers 2`` as real processes (a test can SIGKILL the supervisor and
    its workers at once: a node dies), its log in a file."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
        self._env.update(env)
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, port: int) -> None:
        """Start and wait until ``port`` (the partner listener) accepts connections."""
        self._spawn()
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                return

    def _spawn(self) -> None:
        with self._log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own console script
                [str(Path(sys.prefix) / "bin" / "optgate"), "serve", "--workers", "2"],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the node's processes
            )

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal every process of the node at once and wait for the supervisor's end."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signum)
            self.process.wait(30)

    def log(self) -> str:
        """Everything the process printed (JSON lines)."""
        return self._log.read_text(encoding="utf-8", errors="replace")


class DumpSink:
    """Postfix's smtp-sink as the next hop, one file per completed transaction.

    Like a real MTA, and unlike aiosmtpd, it keeps a message whose final "."
    arrived even when the connection closes right after it, and it keeps
    nothing of a transaction cut off before the ".": what a crash test needs.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DumpSink:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(  # noqa: S603 - Postfix's own test tool
            [
                "/usr/sbin/smtp-sink",
                "-u",
                pwd.getpwuid(os.getuid()).pw_name,
                "-d",
                f"{self.folder}/%H%M%S.",
                f"127.0.0.1:{self.port}",
                "256",
            ]
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)

    def recipients(self) -> list[str]:
        """The envelope recipient of every message received, one entry per copy."""
        found = []
        for dump in self.folder.iterdir():
            try:
                content = dump.read_bytes()
            except FileNotFoundError:  # a transaction cut off before its ".": removed
                continue
            for line in content.split(b"\n"):
                if line.startswith(b"X-Rcpt-Args: <"):
                    found.append(line.split(b"<", 1)[1].split(b">", 1)[0].decode())
        return found

    async def wait_for(self, count: int, seconds: float = 60) -> None:
        """Until at least ``count`` copies arrived."""
        async with asyncio.timeout(seconds):
            while True:
                if len(list(self.folder.iterdir())) >= count:
                    return
                await asyncio.sleep(0.02)
