"""Real sockets for end-to-end tests: a recording sink, a running gateway, a client."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import Config, load
from gateway.smtp.server import Pipelining
from gateway.smtp.xforward import EHLO_LINE
from tests.support.clients import on_client_thread


@dataclass
class Received:
    """One message as the sink got it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    tls: bool = False
    xforward: list[str] = field(default_factory=list)  # the transaction's XFORWARD arguments


@dataclass
class Sink(Pipelining):
    """A next hop that records what arrives; it can be told to fail."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    # replies for the next DATA commands, or per recipient (checked first)
    fail_next: list[str] = field(default_factory=list)
    fail_rcpt: dict[str, list[str]] = field(default_factory=dict)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    pipelining: bool = True  # offer PIPELINING, as Postfix does
    eight_bit: bool = True  # offer 8BITMIME (RFC 6152), as aiosmtpd and Postfix do
    xforward: bool = False  # offer XFORWARD (Postfix's), as the guide's reinjection port does

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """optgate's own EHLO reply (with PIPELINING), or aiosmtpd's plain one."""
        if not self.eight_bit:
            responses = [line for line in responses if line[4:].upper() != "8BITMIME"]
        if self.xforward:
            responses = [*responses[:-1], f"250-{EHLO_LINE}", responses[-1]]
        if self.pipelining:
            return await super().handle_EHLO(server, session, envelope, hostname, responses)
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record the message, or answer with a queued failure."""
        for rcpt in envelope.rcpt_tos:
            queued = self.fail_rcpt.get(rcpt)
            if queued:
                return queued.pop(0)
        if self.fail_next:
            return self.fail_next.pop(0)
        self.messages.append(
            Received(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
                list(envelope.mail_options),
                session.ssl is not None,
                list(getattr(envelope, "xforward", [])),
            )
        )
        async with self.arrived:
            self.arrived.notify_all()
        return "250 2.0.0 queued"

    def to(self, rcpt: str) -> list[Received]:
        """Messages delivered to one recipient."""
        return [m for m in self.messages if rcpt in m.rcpt_tos]

    async def wait_for(self, count: int) -> None:
        """Wait until at least `count` messages arrived (callers bound it with a timeout)."""
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.messages) >= count)


class RecordingSMTP(SMTP):
    """aiosmtpd's SMTP that takes XFORWARD (when its Sink offers it) and keeps the
    arguments with the transaction."""

    async def smtp_XFORWARD(self, arg: str) -> None:
        """Record the command for the transaction's message."""
        if not getattr(self.event_handler, "xforward", False):
            await self.push('500 Error: command "XFORWARD" not recognized')
            return
        assert self.envelope is not None
        if not hasattr(self.envelope, "xforward"):
            self.envelope.xforward = []  # type: ignore[attr-defined]
        self.envelope.xforward.append(arg)  # type: ignore[attr-defined]
        await self.push("250 2.0.0 Ok")


@contextlib.asynccontextmanager
async def sink(
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    *,
    pipelining: bool = True,
    eight_bit: bool = True,
    size: int | None = None,
    xforward: bool = False,
    host: str = "127.0.0.1",
) -> AsyncIterator[Sink]:
    """A recording SMTP server on a loopback port (default: a free one), in this event loop.

    With ``tls`` it offers STARTTLS and refuses mail without it; ``size``: its SIZE
    (aiosmtpd's 33554432 unless given); ``xforward``: it offers and records XFORWARD.
    """
    recorder = Sink(pipelining=pipelining, eight_bit=eight_bit, xforward=xforward)
    loop = asyncio.get_running_loop()
    limits: dict[str, Any] = {} if size is None else {"data_size_limit": size}
    server = await loop.create_server(
        lambda: RecordingSMTP(
            recorder,
            enable_SMTPUTF8=True,
            hostname="sink.test",
            tls_context=tls,
            require_starttls=tls is not None,
            **limits,
        ),
        host,
        port,
    )
    recorder.port = server.sockets[0].getsockname()[1]
    try:
        yield recorder
    finally:
        server.close()
        await server.wait_closed()


def gateway_config(tmp_path: Path, next_port: int, listen_port: int = 0, **settings: str) -> Config:
    """A configuration for tests: store and key in tmp_path; other settings as env overrides."""
    return load(None, gateway_env(tmp_path, next_port, listen_port, **settings))


def gateway_env(
    tmp_path: Path, next_port: int, listen_port: int = 0, **settings: str
) -> dict[str, str]:
    """The OPTGATE_* variables of ``gateway_config`` (e.g. for an ``optgate serve`` process)."""
    env = {
        "OPTGATE_SMTP_LISTEN": f"127.0.0.1:{listen_port}",
        "OPTGATE_WEB_LISTEN": "127.0.0.1:0",
        "OPTGATE_API_LISTEN": "127.0.0.1:0",
        "OPTGATE_RELAY_NEXT_HOP": f"127.0.0.1:{next_port}",
        "OPTGATE_RELAY_TIMEOUT": "5",
        "OPTGATE_RELAY_BUSY_SECONDS": "1",  # a next hop that is down answers 451 soon
        "OPTGATE_STORE_URL": f"sqlite:///{tmp_path / 'optgate.db'}",
        "OPTGATE_UNSUBSCRIBE_KEY_FILE": str(tmp_path / "optgate.key"),
        "OPTGATE_STORE_AUDIT_KEY_FILE": str(tmp_path / "optgate-audit.key"),
        "OPTGATE_STORE_AUDIT_ANCHOR_FILE": str(tmp_path / "optgate-audit.head"),
        "OPTGATE_UNSUBSCRIBE_BASE_URL": "https://unsub.example.com",
        "OPTGATE_UNSUBSCRIBE_MAILTO": "unsubscribe@example.com",
    }
    env.update({f"OPTGATE_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class Sent:
    """What the client saw."""

    refused: Mapping[str, tuple[int, bytes]]
    code: int
    reply: str


async def send(
    port: int,
    mail_from: str,
    rcpts: Sequence[str],
    data: bytes,
    mail_options: Sequence[str] = (),
) -> Sent:
    """Submit one message with smtplib (in a thread); SMTP errors come back as Sent."""

    def work() -> Sent:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            try:
                refused: Any = client.sendmail(mail_from, list(rcpts), data, list(mail_options))
            except smtplib.SMTPRecipientsRefused as exc:
                return Sent(exc.recipients, 550, "all recipients refused")
            except smtplib.SMTPResponseException as exc:
                error = exc.smtp_error
                text = error.decode(errors="replace") if isinstance(error, bytes) else error
                return Sent({}, exc.smtp_code, text)
            return Sent(refused, 250, "")

    return await on_client_thread(work)


def message(
    *,
    subject: str = "Hello",
    body: str = "Our news.\n",
    headers: Mapping[str, str] | None = None,
    message_id: str = "<m1@sender.example>",
) -> bytes:
    """A small plain-text message with CRLF line ends."""
    lines = [
        "From: News <news@sender.example>",
        "To: someone@example.com",
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
        "",
        *body.splitlines(),
        "",
    ]
    return "\r\n".join(lines).encode()


def self_signed_files(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 and localhost: (cert, key) files."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(  # noqa: S603
        [
            "/usr/bin/openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sink.test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a throw-away self-signed certificate (openssl)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed_files(tmp_path))
    return context
