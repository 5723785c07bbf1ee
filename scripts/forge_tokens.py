#!/usr/bin/env python3
"""Forged tokens: how many of N are accepted (the bar is 0), long and short.

    .venv/bin/python scripts/forge_tokens.py [--count 1000000] [--seed 14]

Every forgery gets past the cheap checks (version, length, the signing key's id)
to the siv, the only thing that can tell it from a genuine token: random bytes,
genuine tokens with 1-4 bits flipped, splices of two genuine tokens (long), and
random sealed parts under a genuine header (short). tests/test_tokens.py runs
10^4 of each kind; this runs the count given, and prints accepted counts and rates.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import time
from collections.abc import Callable

from gateway.errors import InvalidToken
from gateway.tokens import Claims, TokenSigner, key_id
from suppression.scope import Scope

KEY = b"forge-test-key-0123456789abcdef"
CLAIMS = Claims(hashlib.sha256(b"jane.doe@example.com").hexdigest(), Scope.topic("newsletter"), 1)
OTHER = Claims(hashlib.sha256(b"john.doe@example.com").hexdigest(), Scope.topic("newsletter"), 1)


def long_forgeries(signer: TokenSigner, rng: random.Random) -> Callable[[int], str | None]:
    genuine, other = (base64.urlsafe_b64decode(signer.issue(c) + "==") for c in (CLAIMS, OTHER))
    head = bytes([2]) + key_id(KEY)

    def forge(n: int) -> str | None:
        if n % 3 == 0:
            forged = head + rng.randbytes(len(genuine) - len(head))
        elif n % 3 == 1:
            flipped = bytearray(genuine)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(head), len(flipped))] ^= 1 << rng.randrange(8)
            forged = bytes(flipped)
        else:
            cut = rng.randrange(len(head) + 1, len(genuine))
            forged = genuine[:cut] + other[cut:]
        if forged in (genuine, other):
            return None
        return base64.urlsafe_b64encode(forged).rstrip(b"=").decode()

    return forge


def short_forgeries(signer: TokenSigner, rng: random.Random) -> Callable[[int], str | None]:
    genuine = base64.b32decode(signer.issue_short(CLAIMS).upper())

    def forge(n: int) -> str | None:
        forged = genuine[:3] + rng.randbytes(len(genuine) - 3)
        return None if forged == genuine else base64.b32encode(forged).decode().lower()

    return forge


def run(
    name: str, forge: Callable[[int], str | None], check: Callable[[str], object], count: int
) -> int:
    accepted = tried = 0
    started = time.perf_counter()
    for n in range(count):
        token = forge(n)
        if token is None:
            continue
        tried += 1
        try:
            check(token)
        except InvalidToken:
            continue
        accepted += 1
    elapsed = time.perf_counter() - started
    print(f"{name}: {tried:,} forged, {accepted} accepted ({tried / elapsed:,.0f} checked/s)")
    return accepted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    signer = TokenSigner([KEY])
    rng = random.Random(args.seed)
    accepted = run("long", long_forgeries(signer, rng), signer.verify, args.count)
    accepted += run("short", short_forgeries(signer, rng), signer.verify_short, args.count)
    return 1 if accepted else 0


if __name__ == "__main__":
    raise SystemExit(main())
