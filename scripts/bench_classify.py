#!/usr/bin/env python3
"""Inbound classifier benchmark: classify() against the stdlib parse it starts with.

    .venv/bin/python scripts/bench_classify.py [--corpus ../shared/corpus] [--rounds 3]

Classifies every bounce, complaint and auto-reply of the shared corpus (sisimai,
BounceParser, MimeKit, Email::ARF, mail-auth ARF), and in the same run only parses the
same bytes with ``email.message_from_bytes`` (compat32), the baseline. Prints both
rates and the ratio, then the time for hostile inputs that must stay linear: a 14 MB
text bounce and 60 KB runs without a space.
"""

from __future__ import annotations

import argparse
import email
import time
from collections.abc import Callable
from email import policy
from pathlib import Path

from gateway.inbound.classify import classify

FOLDERS = (
    "sisimai-set-of-emails",
    "mail-deliverystatus-bounceparser",
    "mimekit/messages",
    "email-arf",
    "stalwart-mail-auth/arf",
)


def messages(root: Path) -> list[bytes]:
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in (".eml", ".msg", ".txt"):
                found.append(path.read_bytes())
    return found


def timed(work: list[bytes], step: Callable[[bytes], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in work:
            step(raw)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "corpus"
    parser.add_argument("--corpus", type=Path, default=default)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = messages(args.corpus)
    baseline = timed(
        work, lambda raw: email.message_from_bytes(raw, policy=policy.compat32), args.rounds
    )
    classified = timed(work, classify, args.rounds)
    print(f"{len(work)} messages")
    print(f"stdlib parse only: {len(work) / baseline:8.0f} messages/s")
    print(f"classify():        {len(work) / classified:8.0f} messages/s")
    print(f"ratio classify / parse: {classified / baseline:.1f}")
    hostile = {
        "14 MB text bounce": b"From: MAILER-DAEMON@x\nSubject: Undelivered\n\n"
        + b"x" * 70 * 200_000,
        "60 KB without a space": b"From: MAILER-DAEMON@x\nSubject: Undelivered\n\n" + b"a" * 60_000,
        "60 KB of status-like text": b"From: MAILER-DAEMON@x\nSubject: Undelivered\n\n"
        + b"5." * 30_000,
    }
    for name, raw in hostile.items():
        print(f"{name}: {timed([raw], classify, 1) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
