"""Hypothesis over the SMTP dialogue, through a real socket: whatever a client sends, every
reply is a well-formed SMTP reply, none is a 451 from an exception (nor aiosmtpd's
``500 Error: (Exception)``), nothing with a control character reaches the next hop, and
the next client is served as before."""

from __future__ import annotations

import string
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.errors import TRY_LATER
from gateway.runtime.service import Running, running
from tests.support.dialogue import Dialogue, Reply, dialogue
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import Sink, gateway_config, message

DOMAIN = "in.example.com"
ALPHABET = string.ascii_letters + string.digits + "<>@[]\":\\.,;()+-_=!#$%&'*/?^`{|}~ \t"
RECIPIENTS = [FAN, "stranger@example.com", f"unsubscribe@{DOMAIN}", f"bounce+abc@{DOMAIN}"]

texts = st.text(st.sampled_from(ALPHABET), max_size=40) | st.text(max_size=20)
raw = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
# pieces of paths: what RFC 5321's grammar is made of, and what breaks parsers
PIECES = [
    "a",
    "b.c",
    "@",
    '"',
    "\\",
    "[",
    "]",
    ":",
    ",",
    ".",
    "(",
    ")",
    "<",
    ">",
    " ",
    "IPv6:",
    "::1",
    "127.0.0.1",
    "x--y",
    "postmaster",
    "\x00",
    "\x7f",
    "\x85",
    "é",
    "例",
    "\udcff",
]
structured = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
addresses = st.sampled_from([*RECIPIENTS, SENDER]) | st.emails() | structured | texts


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    """A path argument: mostly address-like, sometimes anything at all."""
    kind = draw(st.sampled_from(["angle", "bare", "params", "raw"]))
    if kind == "raw":
        return draw(raw)
    address = draw(addresses).encode("utf-8", "surrogateescape")
    if kind == "bare":
        return address
    params = b" " + draw(raw) if kind == "params" else b""
    return b"<" + address + b">" + params


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    """Message content: our test message with hostile headers and body, or bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    headers = draw(
        st.dictionaries(
            st.sampled_from(["X-Optgate-Class", "X-Optgate-Topic", "Content-Type", "X-Any"]),
            texts,
            max_size=3,
        )
    )
    body = draw(st.text(max_size=200))
    message_id = draw(st.sampled_from(["", "<"])) + draw(texts)
    return message(headers=headers, body=body, message_id=message_id)


OTHER_VERBS = [b"VRFY", b"EXPN", b"AUTH", b"BDAT"]
commands = st.one_of(
    st.builds(lambda p: b"MAIL FROM:" + p, paths()),
    st.builds(lambda p: b"RCPT TO:" + p, paths()),
    st.sampled_from([b"RSET", b"NOOP", b"DATA", b"HELP", b"QUIT", b"STARTTLS", b"EHLO x"]),
    st.builds(
        lambda v, a: v + b" " + a, st.sampled_from([b"VRFY", b"EXPN", b"AUTH", b"BDAT"]), raw
    ),
    raw,
)


@st.composite
def transactions(draw: st.DrawFn) -> list[bytes]:
    """A whole transaction, its recipients mostly ones that get somewhere."""
    rcpts = st.sampled_from(RECIPIENTS).map(lambda a: f"<{a}>".encode()) | paths()
    return [
        b"RSET",
        b"MAIL FROM:" + draw(st.sampled_from([f"<{SENDER}>".encode(), b"<>"]) | paths()),
        *(b"RCPT TO:" + r for r in draw(st.lists(rcpts, min_size=1, max_size=3))),
        b"DATA",
    ]


scripts = st.lists(st.lists(commands, max_size=3) | transactions(), max_size=4).map(
    lambda parts: [line for part in parts for line in part]
)


@pytest.fixture
def config(tmp_path: Path, next_hop: Sink) -> Config:
    return gateway_config(tmp_path, next_hop.port, inbound_domains=DOMAIN)


@pytest.fixture
async def fuzzed(config: Config) -> AsyncIterator[Running]:
    await seed(config)
    async with running(config) as gate:
        yield gate


def well_formed(reply: Reply) -> None:
    assert 200 <= reply.code < 600, reply
    assert reply.code != 451 or reply.text != TRY_LATER[4:], reply
    assert not reply.text.startswith("Error: ("), reply  # aiosmtpd's text for an exception


async def play(smtp: Dialogue, script: list[bytes], content: bytes) -> None:
    for line in script:
        # one command per line: a CR or LF inside would make it two, and two replies
        reply = await smtp.say(line.replace(b"\r", b"").replace(b"\n", b""))
        if reply.code == 0:  # closed: after QUIT, or a 421 / 502 that says goodbye
            return
        well_formed(reply)
        if line == b"DATA" and reply.code == 354:
            final = await smtp.data(content)
            well_formed(final)
            event(f"DATA answered {final.code}")
        if reply.code in (221, 421):
            return


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=scripts, content=contents())
async def test_no_dialogue_breaks_a_session_or_reaches_the_next_hop_unclean(
    fuzzed: Running, next_hop: Sink, script: list[bytes], content: bytes
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with dialogue(fuzzed.smtp_port) as smtp:
            await play(smtp, script, content)
    assert not [e for e in logs if e["event"] == "session_error"], logs
    async with dialogue(fuzzed.smtp_port):  # the next client is served as before
        pass
    for received in next_hop.messages:
        for address in (received.mail_from, *received.rcpt_tos):
            assert address.isprintable(), address
