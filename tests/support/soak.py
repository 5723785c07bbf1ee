"""A soak run: `optgate serve --workers 2` under mixed and hostile traffic for a while,
the workers' memory and open file descriptors sampled as it goes.

Used by tests/test_soak.py (60 s in CI) and scripts/soak.py (30 minutes and more).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import re
import socket
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from gateway.config import load
from tests.support.clients import on_client_thread
from tests.support.people import FAN, GONE, SENDER, STRANGER, seed
from tests.support.reports import dsn
from tests.support.serving import Served, optgate_serve
from tests.support.smtp import Sink, gateway_env, message, send, sink

INBOUND = "in.example.com"
GARBAGE = [
    b"EHLO x\r\nMAIL FROM:<a@[>\r\nRCPT TO:<\x00@x>\r\nQUIT\r\n",
    b"HELO\r\n" + b"A" * 5000 + b"\r\nQUIT\r\n",
    b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<fan@example.com>\r\nDATA\r\n\xff\xfe\r\n.\r\nQUIT\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello, unasked
]


@dataclass(frozen=True)
class Sample:
    """One look at every worker: seconds since the start, RSS in KiB, open fds."""

    at: float
    rss_kib: dict[int, int]
    fds: dict[int, int]


@dataclass
class SoakReport:
    """What a soak run saw."""

    seconds: float
    samples: list[Sample] = field(default_factory=list)
    replies: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    tracebacks: int = 0

    def _settled(self) -> tuple[list[Sample], list[Sample]]:
        """The samples of the second third and the last third (warm-up left out)."""
        third = max(1, len(self.samples) // 3)
        return self.samples[third : 2 * third], self.samples[2 * third :]

    def rss_growth_kib(self) -> int:
        """Median total RSS of the last third minus that of the second third."""
        middle, last = self._settled()
        total = [sum(s.rss_kib.values()) for s in middle], [sum(s.rss_kib.values()) for s in last]
        return int(statistics.median(total[1]) - statistics.median(total[0]))

    def fd_growth(self) -> int:
        """Most open fds (all workers) in the last third minus the most in the second."""
        middle, last = self._settled()
        return max(sum(s.fds.values()) for s in last) - max(sum(s.fds.values()) for s in middle)

    def lines(self) -> list[str]:
        """The report as a person reads it."""
        first, last = self.samples[0], self.samples[-1]
        return [
            f"soak: {self.seconds:.0f} s, {sum(self.replies.values())} requests "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.replies.items()))})",
            f"workers' RSS: {sum(first.rss_kib.values())} KiB at start, "
            f"{sum(last.rss_kib.values())} KiB at the end, growth after warm-up "
            f"{self.rss_growth_kib()} KiB",
            f"open fds: {sum(first.fds.values())} at start, {sum(last.fds.values())} at the end,"
            f" growth after warm-up {self.fd_growth()}",
            f"unexpected replies {len(self.unexpected)}, tracebacks {self.tracebacks}",
        ]


def _look(pids: set[int], at: float) -> Sample:
    rss, fds = {}, {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            rss[pid] = int(found.group(1)) if found else 0
            fds[pid] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        except FileNotFoundError:
            continue  # a worker replaced right now
    return Sample(at, rss, fds)


class _Traffic:
    """Clients of every kind, each round a few of each; every reply checked."""

    def __init__(self, served: Served, hop: Sink, report: SoakReport) -> None:
        self.smtp = served.address("smtp")[1]
        self.web = served.address("web")[1]
        self.hop, self.report = hop, report
        self.numbers = itertools.count()

    def expect(self, what: str, got: int, want: set[int]) -> None:
        self.report.replies[f"{what} {got}"] += 1
        if got not in want:
            self.report.unexpected.append(f"{what}: {got}")

    async def mail(self) -> None:
        n = next(self.numbers)
        for rcpt, kind in ((FAN, "marketing"), (STRANGER, "marketing"), (GONE, "transactional")):
            headers = {"X-Optgate-Class": kind}
            data = message(message_id=f"<soak{n}.{kind}@sender.example>", headers=headers)
            self.expect("mail", (await send(self.smtp, SENDER, [rcpt], data)).code, {250})

    async def garbage(self) -> None:
        def work(raw: bytes) -> None:
            with socket.create_connection(("127.0.0.1", self.smtp), timeout=10) as conn:
                conn.sendall(raw)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass

        for raw in GARBAGE:
            await on_client_thread(work, raw)
        self.report.replies["garbage"] += len(GARBAGE)

    async def web_requests(self, http: aiohttp.ClientSession) -> None:
        base = f"http://127.0.0.1:{self.web}"
        checks = [
            ("get", "/healthz", {200}),
            ("get", "/u/forged-token", {400}),
            ("post", "/u/forged-token", {400}),
            ("get", "/p/" + "A" * 3000, {400, 414}),
        ]
        for method, path, want in checks:
            async with http.request(method, base + path) as response:
                await response.read()
                self.expect(f"web {path[:3]}", response.status, want)

    async def bounce(self) -> None:
        copies = self.hop.to(FAN)
        if not copies:
            return
        copy = copies[-1]
        notice = dsn(
            copy.data, to=copy.mail_from, recipient=FAN, status="4.2.2", diagnostic="452 full"
        )
        self.expect("bounce", (await send(self.smtp, "", [copy.mail_from], notice)).code, {250})

    async def one_click(self, http: aiohttp.ClientSession) -> None:
        copies = self.hop.to(FAN)
        if not copies:
            return
        parsed = email.message_from_bytes(copies[-1].data, policy=email.policy.default)
        found = re.search(r"<https://[^/]+(/u/[^>]+)>", str(parsed["List-Unsubscribe"]))
        if found is None:
            self.report.unexpected.append("a copy without its one-click link")
            return
        # a GET of the page changes nothing; the POST is left out so FAN stays subscribed
        async with http.get(f"http://127.0.0.1:{self.web}{found.group(1)}") as response:
            await response.read()
            self.expect("web /u", response.status, {200})


async def soak(seconds: float, folder: Path, sample_every: float = 2.0) -> SoakReport:
    """Run the soak for ``seconds``; its report."""
    report = SoakReport(seconds)
    async with sink() as hop:
        env = gateway_env(
            folder, hop.port, 0, inbound_domains=INBOUND, web_rate_limit="0", smtp_max_sessions="50"
        )
        await seed(load(None, env))
        async with optgate_serve(env, "--workers", "2", ready=2) as served:
            traffic = _Traffic(served, hop, report)
            start = time.monotonic()
            next_look = start
            async with aiohttp.ClientSession() as http:
                while (now := time.monotonic()) - start < seconds:
                    if now >= next_look:
                        report.samples.append(_look(served.worker_pids(), now - start))
                        next_look += sample_every
                    await asyncio.gather(
                        traffic.mail(),
                        traffic.garbage(),
                        traffic.web_requests(http),
                        traffic.bounce(),
                        traffic.one_click(http),
                    )
                    del hop.messages[:-50]  # the sink is the test's memory, not optgate's
            report.samples.append(_look(served.worker_pids(), time.monotonic() - start))
            report.tracebacks = bytes(served.stderr).count(b"Traceback") + sum(
                "Traceback" in str(line) for line in served.lines
            )
    return report
