"""The client side: pooled connections to the next hop (gateway/smtp/client.py), and outcomes.

The pool never holds more connections than its size, in use and idle together,
and closes a connection idle for ``idle_seconds``: the next hop serves a fixed
number of sessions (Postfix: the reinjection listener's ``maxproc``), and an
idle connection holds one of them from every other worker and node. A next hop
that refuses a connection or answers 421 is busy, not failing: the copy waits
for a connection another copy gives back, or tries a new one as the pauses
grow, for up to ``busy_seconds``; only then does it get 451 4.4.5.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from gateway.smtp.client import Broken, Busy, Connection, Refused, TlsFailed
from gateway.smtp.xforward import Forwarded

log = structlog.get_logger("optgate.relay")

FIRST_PAUSE = 0.05  # seconds before a busy next hop is tried again; doubled each time
LONGEST_PAUSE = 1.0
EXPIRY_SLACK = 0.001  # seconds: the idle check again when a timer ran a little early


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
    if isinstance(exc, Refused):
        return Outcome(exc.reply.code, exc.reply.message)
    if isinstance(exc, TlsFailed):  # fail closed: nothing went out unprotected
        return Outcome(451, f"4.7.5 {exc}")
    return Outcome(451, f"next hop unavailable ({type(exc).__name__})")


_FAILURES = (Refused, Broken, OSError, TimeoutError)


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
        idle_seconds: float,
        busy_seconds: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._starttls, self._tls = starttls, tls  # tls None: certificates not checked
        self._local_hostname = local_hostname
        self._idle_seconds, self._busy_seconds = idle_seconds, busy_seconds
        # each idle connection with the loop time it went idle, the oldest first; one timer
        # (not one per copy given back) closes those idle for idle_seconds
        self._idle: dict[Connection, float] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._waiters: deque[asyncio.Future[Connection]] = deque()  # copies the hop made wait
        self._slots = asyncio.Semaphore(size)
        self._extensions: frozenset[str] | None = None  # of the last connection opened
        self._size: int | None = None  # its SIZE (None: no limit said)

    async def _connect(self) -> Connection:
        try:
            client = await Connection.open(
                self._host,
                self._port,
                seconds=self._timeout,
                local_hostname=self._local_hostname,
                starttls=self._starttls,
                tls=self._tls,
            )
        except TlsFailed as exc:
            log.warning(
                "next_hop_tls_failed", next_hop=f"{self._host}:{self._port}", reason=exc.reason
            )
            raise
        self._extensions, self._size = client.extensions, client.size_limit
        return client

    async def _learnt(self) -> frozenset[str] | None:
        """The EHLO keywords of the last connection the pool opened; the first call opens
        one (kept in the pool). None while the next hop cannot be reached."""
        if self._extensions is None:
            async with self._slots:
                if self._extensions is None:
                    with contextlib.suppress(*_FAILURES):
                        self._give_back(await self._connect())
        return self._extensions

    async def offers_8bitmime(self) -> bool:
        """Whether the next hop's EHLO offers 8BITMIME (RFC 6152). A next hop that cannot
        be reached counts as not offering it: 7bit always goes through."""
        extensions = await self._learnt()
        return extensions is not None and "8BITMIME" in extensions

    async def size_limit(self) -> int | None:
        """The next hop's SIZE (RFC 1870) as its last EHLO said; None: no limit said, or
        not reached yet."""
        await self._learnt()
        return self._size

    def _pooled(self) -> Connection | None:
        """An idle connection still in step, if there is one (the most recent first)."""
        while self._idle:
            client, _ = self._idle.popitem()
            if client.usable:
                return client
            client.close()
        return None

    def _give_back(self, client: Connection) -> None:
        """A connection done with its copy: to a copy waiting for one, else idle in the pool
        until ``idle_seconds`` pass."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(client)
                return
        loop = asyncio.get_running_loop()
        self._idle[client] = loop.time()
        if self._expiry is None:
            self._expiry = loop.call_later(self._idle_seconds, self._expire)

    def _expire(self) -> None:
        """Close the connections that sat idle for ``idle_seconds``; then wait for the
        oldest of the others to have."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            client, since = next(iter(self._idle.items()))
            if now - since < self._idle_seconds:
                # a timer may run a clock tick early: never before the connection's time
                due = max(since + self._idle_seconds, now + EXPIRY_SLACK)
                self._expiry = loop.call_at(due, self._expire)
                return
            del self._idle[client]
            client.leave()

    async def _given_back(self, seconds: float) -> Connection | None:
        """An idle connection, or the next one a copy gives back within ``seconds``."""
        client = self._pooled()
        if client is not None:
            return client
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait([waiter], timeout=seconds)
        except BaseException:  # cancelled: a connection handed over meanwhile goes back
            if waiter.done():
                self._give_back(waiter.result())
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
                self._waiters.remove(waiter)
        return waiter.result() if not waiter.cancelled() else None

    async def _started(
        self,
        mail_from: str,
        rcpt: str,
        options: Sequence[str],
        size: int,
        xforward: Forwarded | None,
    ) -> Connection:
        """A connection at the 354 of a new transaction: a pooled one if one still works,
        else a new one. While the next hop is busy, the next connection another copy gives
        back, or a new one after a pause, for up to ``busy_seconds`` (then Busy). ``size``
        and ``xforward``: as Connection.start takes them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_seconds
        pause = FIRST_PAUSE
        client = self._pooled()
        while True:
            fresh = client is None
            try:
                if client is None:
                    client = await self._connect()
                await client.start(mail_from, rcpt, options, size=size, xforward=xforward)
                return client
            except Busy:
                if client is not None:
                    client.close()
                left = deadline - loop.time()
                if left <= 0:
                    raise
                client = await self._given_back(min(pause, left))
                pause = min(2 * pause, LONGEST_PAUSE)
            except Broken:
                if client is not None:
                    client.close()
                if fresh:
                    raise
                client = None  # the next hop closed it while idle: once more on a new one
            except BaseException:
                if client is not None:
                    client.close()
                raise

    def _busy(self) -> Outcome:
        """The answer for a copy the next hop had no room for within ``busy_seconds``."""
        log.warning(
            "next_hop_busy", next_hop=f"{self._host}:{self._port}", seconds=self._busy_seconds
        )
        return Outcome(451, "4.4.5 next hop busy, try again later")

    async def send(
        self, mail_from: str, rcpt: str, data: bytes, options: Sequence[str] = ()
    ) -> Outcome:
        """Relay one copy to one recipient; never raises for SMTP or network errors."""
        async with self._slots:
            try:
                client = await self._started(mail_from, rcpt, options, len(data), None)
            except Busy:
                return self._busy()
            except _FAILURES as exc:
                return _failure(exc)
            try:
                client.write_content(data, end=True)
                reply = await client.end_reply()
            except BaseException as exc:  # a failure, or the task was cancelled
                client.close()
                if isinstance(exc, _FAILURES):
                    return _failure(exc)
                raise
            return self._settled(client, reply)

    def _settled(self, client: Connection, reply: tuple[int, str]) -> Outcome:
        """The reply to the final "."; the connection goes back to the pool after a 250."""
        code, message = reply
        if code != 250:
            client.close()
            return Outcome(code, message)
        self._give_back(client)
        return Outcome(250, message)

    async def send_committed(
        self,
        mail_from: str,
        rcpt: str,
        data: bytes,
        commit: Commit,
        options: Sequence[str] = (),
        xforward: Forwarded | None = None,
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
        write of five bytes. ``xforward``: the message's original client, passed on to a
        next hop that offers XFORWARD. Never raises for SMTP or network errors.
        """
        async with self._slots:
            try:
                client = await self._started(mail_from, rcpt, options, len(data), xforward)
            except Busy:
                return self._busy()
            except _FAILURES as exc:
                return _failure(exc)
            try:
                client.write_content(data)
            except _FAILURES as exc:
                client.close()
                return _failure(exc)
            try:
                return await self._committed(client, commit)
            except BaseException:  # the commit raised, or the task was cancelled
                client.close()
                raise

    async def _committed(self, client: Connection, commit: Commit) -> Outcome | None:
        ended = False

        def finish() -> None:
            nonlocal ended
            try:
                client.write_end()
            except Broken:
                return
            ended = True

        stored = await commit(finish)
        if not ended:  # no "." went out: the next hop has nothing
            client.close()
            if not stored:
                return None
            return Outcome(451, "next hop lost the connection before the end of data")
        # the "." went out (even if the store then failed to commit): the reply decides;
        # its timeout starts now, not while the store was committing
        try:
            reply = await client.end_reply()
        except _FAILURES as exc:
            client.close()
            return Outcome(451, f"no reply after the end of data ({type(exc).__name__})", True)
        return self._settled(client, reply)

    async def close(self) -> None:
        """Say goodbye on every idle connection."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        while self._idle:
            client, _ = self._idle.popitem()
            await client.quit()
