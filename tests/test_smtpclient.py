"""The next-hop client over real sockets: pipelining when offered, one command at a time
otherwise, and every way a next hop can refuse, stall or break a transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.smtp.client import Reply, _Replies
from gateway.smtp.relay import Outcome, Relay
from tests.support.smtp import sink

pytestmark = pytest.mark.sockets

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MESSAGE = b"Subject: hello\r\n\r\n.a line that starts with a dot\r\nbye\r\n"
EHLO = b"250-hop.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    """A next hop that greets each connection and then runs ``script``; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test ready\r\n")
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def relay(port: int, timeout: float = 5) -> Relay:
    return Relay(
        "127.0.0.1",
        port,
        size=4,
        timeout=timeout,
        starttls="opportunistic",
        local_hostname="optgate.test",
        idle_seconds=2,
        busy_seconds=1,
    )


async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert (await reader.readline()).startswith(b"EHLO optgate.test")
    writer.write(EHLO)


async def envelope(reader: asyncio.StreamReader) -> list[bytes]:
    """The pipelined group: MAIL, RCPT and DATA, read before any reply."""
    return [await reader.readline() for _ in range(3)]


GO_AHEAD = b"250 ok\r\n250 ok\r\n354 go\r\n"


async def until_end(reader: asyncio.StreamReader) -> list[bytes]:
    """The content lines up to the final "."."""
    content = []
    while (line := await reader.readline()) not in (b".\r\n", b""):
        content.append(line)
    return content


async def test_mail_rcpt_and_data_go_out_together_when_pipelining_is_offered() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        # no reply before all three commands are here: a client waiting for each would stall
        group = await envelope(reader)
        assert group == [
            b"MAIL FROM:<a@sender.example>\r\n",
            b"RCPT TO:<b@rcpt.example>\r\n",
            b"DATA\r\n",
        ]
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
        assert await until_end(reader) == [
            b"Subject: hello\r\n",
            b"\r\n",
            b"..a line that starts with a dot\r\n",
            b"bye\r\n",
        ]
        writer.write(b"250 2.0.0 queued as X\r\n")
        assert await reader.readline() == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        hop = relay(port)
        assert await hop.send("a@sender.example", "b@rcpt.example", MESSAGE) == Outcome(
            250, "2.0.0 queued as X"
        )
        await hop.close()


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert (await reader.readline()).startswith(b"EHLO")
        writer.write(b"250-hop.test\r\n250 8BITMIME\r\n")
        for command, reply in (
            (b"MAIL", b"250 ok"),
            (b"RCPT", b"251 will forward"),
            (b"DATA", b"354 go"),
        ):
            assert (await reader.readline()).startswith(command)
            await asyncio.sleep(0.05)
            assert reader._buffer == b""  # type: ignore[attr-defined]  # nothing sent ahead
            writer.write(reply + b"\r\n")
        await until_end(reader)
        writer.write(b"250-first line\r\n250 second line\r\n")

    async with scripted(script) as port:
        outcome = await relay(port).send("a@sender.example", "b@rcpt.example", MESSAGE)
    assert outcome == Outcome(250, "first line\nsecond line")


async def test_an_aiosmtpd_hop_with_and_without_pipelining_gets_every_copy_once() -> None:
    for pipelining in (True, False):
        async with sink(pipelining=pipelining) as hop:
            client = relay(hop.port)
            for n in range(5):
                outcome = await client.send("a@sender.example", f"r{n}@rcpt.example", MESSAGE)
                assert outcome.code == 250
            await client.close()
        assert [m.rcpt_tos for m in hop.messages] == [[f"r{n}@rcpt.example"] for n in range(5)]
        assert {m.data for m in hop.messages} == {MESSAGE}


async def test_a_refusal_on_a_pooled_connection_ends_it_and_the_next_copy_gets_a_new_one() -> None:
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await hello(reader, writer)
        for transaction in (1, 2):
            await envelope(reader)
            if connections == 1 and transaction == 2:
                writer.write(
                    b"550 5.7.1 sender refused\r\n503 5.5.1 no sender\r\n503 5.5.1 no rcpt\r\n"
                )
                assert await reader.read() == b""  # the client leaves without another word
                return
            writer.write(GO_AHEAD)
            await until_end(reader)
            writer.write(b"250 queued\r\n")

    async with scripted(script) as port:
        client = relay(port)
        outcomes = [
            await client.send("a@sender.example", "b@rcpt.example", MESSAGE) for _ in range(3)
        ]
    assert outcomes == [
        Outcome(250, "queued"),
        Outcome(550, "5.7.1 sender refused"),
        Outcome(250, "queued"),
    ]
    assert connections == 2


async def test_a_data_accepted_after_a_refused_recipient_is_abandoned_without_the_end() -> None:
    ended = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        await envelope(reader)
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go on anyway\r\n")
        rest = await reader.read()  # the client closes: nothing more, no "."
        ended.set_result(rest)

    async with scripted(script) as port:
        outcome = await relay(port).send("a@sender.example", "b@rcpt.example", MESSAGE)
        assert outcome == Outcome(550, "5.1.1 no such user")
        assert await asyncio.wait_for(ended, 5) == b""


async def test_a_temporary_refusal_of_the_content_is_451_material() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        await envelope(reader)
        writer.write(GO_AHEAD)
        await until_end(reader)
        writer.write(b"452 4.3.1 queue full\r\n")

    async with scripted(script) as port:
        outcome = await relay(port).send("a@sender.example", "b@rcpt.example", MESSAGE)
    assert outcome == Outcome(452, "4.3.1 queue full")
    assert outcome.temporary


async def test_garbage_a_closed_connection_and_silence_are_451() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        await envelope(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await reader.read()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        await envelope(reader)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        await reader.read()

    expected = {garbage: "Broken", hang_up: "Broken", silent: "TimeoutError"}
    for script, kind in expected.items():
        async with scripted(script) as port:
            outcome = await relay(port, timeout=0.5).send(
                "a@sender.example", "b@rcpt.example", MESSAGE
            )
        assert outcome == Outcome(451, f"next hop unavailable ({kind})"), script


async def test_a_connection_the_hop_closed_while_pooled_is_replaced() -> None:
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await hello(reader, writer)
        await envelope(reader)
        writer.write(GO_AHEAD)
        await until_end(reader)
        writer.write(b"250 queued\r\n")
        await writer.drain()  # then the hop closes the idle connection

    async with scripted(script) as port:
        client = relay(port)
        for _ in range(3):
            assert (await client.send("a@sender.example", "b@rcpt.example", MESSAGE)).code == 250
            await asyncio.sleep(0.05)
    assert connections == 3


async def test_addresses_that_would_break_the_command_line_are_refused_before_sending() -> None:
    async with sink() as hop:
        client = relay(hop.port)
        bad = await client.send(
            "a@sender.example", "b@rcpt.example>\r\nRCPT TO:<c@x.example", MESSAGE
        )
        assert bad.code == 501
        utf8 = await client.send("a@sender.example", "пример@rcpt.example", MESSAGE)
        assert utf8.code == 553
        good = await client.send("a@sender.example", "пример@rcpt.example", MESSAGE, ["SMTPUTF8"])
        assert good.code == 250
    assert [m.rcpt_tos for m in hop.messages] == [["пример@rcpt.example"]]


async def test_content_goes_out_with_crlf_line_ends_and_dots_stuffed() -> None:
    contents = [
        b"Subject: a\r\n\r\nplain CRLF\r\n",
        b"Subject: b\n\n.dot first\nbare LF\rbare CR\r\nno end",
        b".Subject: c\r\n\r\n..two dots\r\n.\r\nend",
    ]
    async with sink() as hop:
        client = relay(hop.port)
        for data in contents:
            assert (await client.send("a@sender.example", "b@rcpt.example", data)).code == 250
    assert [m.data for m in hop.messages] == [
        b"Subject: a\r\n\r\nplain CRLF\r\n",
        b"Subject: b\r\n\r\n.dot first\r\nbare LF\r\nbare CR\r\nno end\r\n",
        b".Subject: c\r\n\r\n..two dots\r\n.\r\nend\r\n",
    ]


async def test_the_reply_timeout_starts_when_the_end_goes_out_not_during_the_commit() -> None:
    async def slow_commit(finish: Callable[[], None]) -> bool:
        await asyncio.sleep(0.8)  # longer than the timeout: a store busy with a batch
        finish()
        return True

    async with sink() as hop:
        outcome = await relay(hop.port, timeout=0.5).send_committed(
            "a@sender.example", "b@rcpt.example", MESSAGE, slow_commit
        )
    assert outcome == Outcome(250, "2.0.0 queued")
    assert len(hop.messages) == 1


async def test_a_commit_that_raises_closes_the_connection_without_the_end() -> None:
    seen = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hello(reader, writer)
        await envelope(reader)
        writer.write(GO_AHEAD)
        seen.set_result(await until_end(reader))  # ends at EOF: no "." ever came

    async def failing_commit(finish: Callable[[], None]) -> bool:
        raise RuntimeError("store down")

    async with scripted(script) as port:
        client = relay(port)
        with pytest.raises(RuntimeError):
            await client.send_committed(
                "a@sender.example", "b@rcpt.example", MESSAGE, failing_commit
            )
        lines = await asyncio.wait_for(seen, 5)
    assert lines[-1] == b"bye\r\n"  # the content, then the connection closed


async def test_a_refused_session_or_a_missing_required_starttls_is_temporary() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.3.2 not now\r\n")
        await reader.read()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        outcome = await relay(port).send("a@sender.example", "b@rcpt.example", MESSAGE)
    assert outcome == Outcome(451, "next hop unavailable (Broken)")

    async with sink() as hop:
        plain = Relay(
            "127.0.0.1",
            hop.port,
            size=1,
            timeout=5,
            starttls="required",
            local_hostname="o.test",
            idle_seconds=2,
            busy_seconds=1,
        )
        outcome = await plain.send("a@sender.example", "b@rcpt.example", MESSAGE)
    assert outcome == Outcome(451, "next hop unavailable (Broken)")
    assert hop.messages == []


def test_replies_that_came_in_are_taken_in_order_without_a_wait() -> None:
    """A pipelined group's replies in one write: each taken as it came, none waited for."""
    replies = _Replies()
    replies.data_received(b"250 2.0.0 Ok\r\n250-2.1.0 first\r\n250 2.1.0 second\r\n354 go")
    assert replies.ready() == Reply(250, "2.0.0 Ok")
    assert replies.ready() == Reply(250, "2.1.0 first\n2.1.0 second")
    assert replies.ready() is None  # the 354 is not complete yet
    replies.data_received(b" ahead\r\n")
    assert replies.ready() == Reply(354, "go ahead")
    assert replies.ready() is None
