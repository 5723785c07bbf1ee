"""The private-Postfix test harness works: a real Postfix in front of a filter.

    smtplib -> Postfix smtpd -> queue -> filter (aiosmtpd here, optgate in
    end-to-end tests) -> Postfix reinjection smtpd -> queue -> recording sink

The pass-through filter answers 250 only after the reinjection port accepted
the message, as optgate does.  The configuration under test comes from
deploy/postfix/*.snippet.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from tests.support.postfix import (
    PostfixInstance,
    PostfixPorts,
    postfix_available,
    private_postfix,
)

pytestmark = [pytest.mark.postfix, pytest.mark.root, pytest.mark.sockets]

SENDER = "news@shop.example"
RECIPIENT = "alice@customer.example"
DELIVERY_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _postfix_required() -> None:
    assert postfix_available(), (
        "Postfix is not installed: echo 'postfix postfix/main_mailer_type select "
        "No configuration' | debconf-set-selections && apt-get install -y postfix"
    )


@dataclass(frozen=True)
class Delivery:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


class RecordingSink:
    """The final next hop: records every message Postfix delivers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        delivery = Delivery(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.content)
        with self._lock:
            self._deliveries.append(delivery)
        return "250 2.0.0 Delivered"

    def wait_for(self, count: int, timeout: float = DELIVERY_TIMEOUT) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink got {len(self.deliveries)} of {count} messages")
            time.sleep(0.05)
        return self.deliveries


class PassThroughFilter:
    """A content filter: tags the message and relays it to the reinjection port.

    Answers 250 only once the next hop accepted the message; answers 451 to
    the first ``defer_first`` attempts without relaying.
    """

    def __init__(self, next_port: int, *, defer_first: int = 0) -> None:
        self.next_port = next_port
        self.defer_first = defer_first
        self.attempts = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        if self.attempts <= self.defer_first:
            return "451 4.3.0 Test filter defers this attempt"
        content: bytes = envelope.original_content or envelope.content
        try:
            await aiosmtplib.send(
                b"X-Seen-By-Filter: yes\r\n" + content,
                sender=envelope.mail_from,
                recipients=list(envelope.rcpt_tos),
                hostname="127.0.0.1",
                port=self.next_port,
                start_tls=False,
                timeout=30,
            )
        except aiosmtplib.SMTPException as exc:
            return f"451 4.4.1 Next hop failed: {exc}"
        return "250 2.0.0 Relayed"


@contextlib.contextmanager
def smtp_server(handler: object, port: int) -> Iterator[None]:
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield
    finally:
        controller.stop()


@dataclass(frozen=True)
class Chain:
    ports: PostfixPorts
    postfix: PostfixInstance
    filter: PassThroughFilter
    sink: RecordingSink


@contextlib.contextmanager
def running_chain(workdir: Path, *, defer_first: int = 0) -> Iterator[Chain]:
    ports = PostfixPorts.pick()
    sink = RecordingSink()
    content_filter = PassThroughFilter(ports.reinject, defer_first=defer_first)
    with (
        smtp_server(sink, ports.relayhost),
        smtp_server(content_filter, ports.filter_port),
        private_postfix(ports, workdir) as postfix,
    ):
        yield Chain(ports, postfix, content_filter, sink)


def submit(port: int, subject: str) -> None:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = subject
    message.set_content("Hello from the harness test.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(message)


def test_message_goes_through_filter_and_reaches_relayhost(tmp_path: Path) -> None:
    with running_chain(tmp_path) as chain:
        submit(chain.ports.smtpd, "pass through")
        deliveries = chain.sink.wait_for(1)
        chain.postfix.wait_queue_empty(DELIVERY_TIMEOUT)
        maillog = chain.postfix.maillog()

    assert len(deliveries) == 1
    delivery = deliveries[0]
    assert delivery.mail_from == SENDER
    assert delivery.rcpt_tos == (RECIPIENT,)
    assert b"X-Seen-By-Filter: yes\r\n" in delivery.content
    assert b"Subject: pass through\r\n" in delivery.content
    assert chain.filter.attempts == 1
    # one hop to the filter (smtp-optgate), back in through the reinjection
    # smtpd, one hop to the relayhost: all logged by Postfix
    assert re.search(
        rf"postfix/smtp-optgate/smtp\[\d+\]: .*relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
        rf"{chain.ports.filter_port},.*status=sent",
        maillog,
    )
    assert re.search(r"postfix/reinject/smtpd\[\d+\]: \w+: client=", maillog)
    assert f"relay=127.0.0.1[127.0.0.1]:{chain.ports.relayhost}" in maillog
    assert maillog.count("status=sent") == 2


def test_filter_4xx_is_retried_and_delivered_once(tmp_path: Path) -> None:
    with running_chain(tmp_path, defer_first=1) as chain:
        submit(chain.ports.smtpd, "deferred once")
        deliveries = chain.sink.wait_for(1)
        # an empty queue means Postfix has nothing left that it could deliver again
        chain.postfix.wait_queue_empty(DELIVERY_TIMEOUT)
        deliveries = chain.sink.deliveries
        maillog = chain.postfix.maillog()

    assert chain.filter.attempts == 2
    assert len(deliveries) == 1
    assert b"X-Seen-By-Filter: yes\r\n" in deliveries[0].content
    assert "status=deferred" in maillog
    assert "451 4.3.0 Test filter defers this attempt" in maillog
