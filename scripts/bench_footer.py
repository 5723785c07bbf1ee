#!/usr/bin/env python3
"""Footer benchmark: the per-recipient rewrite as it is, against Jinja2 per recipient.

    .venv/bin/python scripts/bench_footer.py [--recipients 20000] [--rounds 3]

The footer's HTML comes from the autoescaped Jinja2 template once per topic and
language; each recipient's copy only joins its pieces with that recipient's escaped URL
(``Prepared.render``), the baseline here. The alternative renders the footer template
for each recipient, with the URL as a value for autoescaping, on top of the same join.
Prints both rates and the ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from gateway.outbound.footers import Footers
from gateway.outbound.rewrite import Links, prepare
from gateway.templating import ENVIRONMENT

MESSAGE = (
    b"From: News <news@shop.example>\r\nTo: someone@example.com\r\nSubject: Deals\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + b"This week's deals, in plain text.\r\n" * 40
    + b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>"
    + b"<table><tr><td><p>This week's deals: <a href='https://shop.example/x'>x</a></p></td></tr></table>\r\n"
    * 40
    + b"</body></html>\r\n--b--\r\n"
)


def links(number: int) -> Links:
    token = f"{number:032x}"
    return Links(
        f"https://unsub.shop.example/u/{token}?a=1&b=2", f"unsubscribe+{token}@shop.example"
    )


def best(rounds: int, work: Callable[[], None]) -> float:
    """The fastest of ``rounds`` runs, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    footers = Footers(company="Shop", postal_address="1 Main St, Springfield")
    prepared = prepare(MESSAGE, footer=footers.topic("news"), list_id=None, feedback_id=None)
    recipients = [links(n) for n in range(args.recipients)]
    template = ENVIRONMENT.get_template("footer.html")
    values = {
        "reason": "You receive this because you subscribed to news from Shop.",
        "unsubscribe": "Unsubscribe",
        "postal_address": footers.postal_address,
        "company": footers.company,
        "language": "en",
    }

    def join() -> None:
        for recipient in recipients:
            prepared.render(recipient)

    def jinja() -> None:
        for recipient in recipients:
            template.render(values, url=recipient.url)
            prepared.render(recipient)

    baseline = best(args.rounds, join)
    alternative = best(args.rounds, jinja)
    n = args.recipients
    print(f"recipients {n}, best of {args.rounds}")
    print(f"  join the pre-rendered pieces (today)  {n / baseline:10.0f} copies/s")
    print(f"  plus Jinja2 render per recipient      {n / alternative:10.0f} copies/s")
    print(f"  ratio (Jinja2 per recipient / today)  {alternative / baseline:10.2f}x the time")


if __name__ == "__main__":
    main()
