#!/usr/bin/env python3
"""Partner fan-out speed against the marketing relay path, measured in the same run.

    .venv/bin/python scripts/bench_partners.py [--recipients 2000] [--runs 3] [--store URL]

One optgate (in this process: SMTP listener, partner listener, fan-out worker)
relays to a counting sink. Each run mails the same audience twice: once as
marketing mail (messages of up to 1000 recipients into the SMTP listener, the
way a campaign tool sends), once as one partner offer (STARTTLS + AUTH, the
fan-out claims, decides, rewrites, signs tokens and relays every copy with its
commit point). Prints recipients per second of each (median of the runs) and
the ratio partner / marketing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import smtplib
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import load
from gateway.runtime.service import running
from suppression.address import normalize
from suppression.model import PARTNER_OFFERS, Consent, now
from suppression.opening import open_store
from suppression.partners import Partner, hash_credential, new_credential
from tests.support.keys import AUDIT_KEY

SECRET = new_credential()


class Counter:
    """A next hop that counts copies."""

    def __init__(self) -> None:
        self.copies = 0
        self.changed = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.copies += len(envelope.rcpt_tos)
        self.changed.set()
        return "250 2.0.0 queued"

    async def until(self, count: int) -> None:
        while self.copies < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 120)


def audience(n: int) -> list[str]:
    return [f"reader.{i:06d}@example{i % 97}.net" for i in range(n)]


async def seed(url: str, addresses: list[str]) -> None:
    store = await open_store(url, audit_key=AUDIT_KEY)
    try:
        await store.add_partner(
            Partner("bench", hash_credential(SECRET), False, now()), actor="bench"
        )
        for purpose in ("marketing", PARTNER_OFFERS):
            await store.record_consents(
                [
                    Consent(normalize(a).sha256, purpose, True, "bench", now(), address=a)
                    for a in addresses
                ],
                actor="bench",
            )
    finally:
        await store.close()


def marketing(port: int, addresses: list[str], run: int) -> None:
    body = f"Subject: news {run}\r\nMessage-ID: <m{run}@bench.example>\r\n\r\nNews.\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        for start in range(0, len(addresses), 1000):
            client.sendmail("news@bench.example", addresses[start : start + 1000], body.encode())


def offer(port: int, run: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.starttls(context=context)
        client.login("bench", SECRET)
        body = f"Subject: offer {run}\r\n\r\nA fine offer.\r\n"
        client.sendmail("deals@partner.example", ["offer@partners.example.com"], body.encode())


async def measure(counter: Counter, count: int, send: Callable[[], None]) -> float:
    """Recipients per second from the first byte sent to the last copy counted."""
    target = counter.copies + count
    start = time.perf_counter()
    await asyncio.to_thread(send)
    await counter.until(target)
    return count / (time.perf_counter() - start)


async def bench(recipients: int, runs: int, store_url: str | None) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(counter, hostname="sink"), "127.0.0.1", 0)
    with tempfile.TemporaryDirectory() as folder:
        url = store_url or f"sqlite:///{Path(folder) / 'bench.db'}"
        env = {
            "OPTGATE_STORE_URL": url,
            "OPTGATE_SMTP_LISTEN": "127.0.0.1:0",
            "OPTGATE_WEB_LISTEN": "127.0.0.1:0",
            "OPTGATE_RELAY_NEXT_HOP": f"127.0.0.1:{server.sockets[0].getsockname()[1]}",
            "OPTGATE_UNSUBSCRIBE_KEY_FILE": str(Path(folder) / "bench.key"),
            "OPTGATE_PARTNERS_LISTEN": "127.0.0.1:0",
            "OPTGATE_PARTNERS_RATE_PER_HOUR": "1000",
        }
        addresses = audience(recipients)
        await seed(url, addresses)
        config = load(None, env)
        ours, theirs = [], []
        async with running(config) as gate:
            for run in range(runs):
                send_marketing = functools.partial(marketing, gate.smtp_port, addresses, run)
                theirs.append(await measure(counter, recipients, send_marketing))
                send_offer = functools.partial(offer, gate.partners_port, run)
                ours.append(await measure(counter, recipients, send_offer))
                print(f"run {run + 1}: marketing {theirs[-1]:.0f}/s, partner {ours[-1]:.0f}/s")
    server.close()
    m, p = statistics.median(theirs), statistics.median(ours)
    print(f"marketing relay path: {m:.0f} recipients/s (median of {runs})")
    print(f"partner fan-out:      {p:.0f} recipients/s (median of {runs})")
    print(f"ratio partner / marketing: {p / m:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    asyncio.run(bench(args.recipients, args.runs, args.store))


if __name__ == "__main__":
    main()
