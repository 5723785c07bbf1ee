#!/usr/bin/env python3
"""What counting rate limits in the store costs, against no limit, in the same run.

    .venv/bin/python scripts/bench_limits.py [--requests 500] [--runs 3] [--store URL]

One optgate (in this process) answers web pages and API calls. Each run sends the
same requests (one connection, one at a time, as a client would) twice: with
[web] rate_limit / [api] rate_limit set high enough never to refuse (each request
then costs one counting transaction in the store: shared by every worker and
node) and with both at 0 (no counting). Prints requests per second of each
(median of the runs) and the ratio counted / uncounted, for the web's link page
(a forged token's 400 page) and the API's compliance report.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from gateway.config import Config, load
from gateway.runtime.service import running
from gateway.runtime.stores import opened
from suppression.apikeys import new_key


def configured(work: Path, store: str | None, limit: int) -> Config:
    env = {
        "OPTGATE_SMTP_LISTEN": "127.0.0.1:0",
        "OPTGATE_WEB_LISTEN": "127.0.0.1:0",
        "OPTGATE_API_LISTEN": "127.0.0.1:0",
        "OPTGATE_STORE_URL": store or f"sqlite:///{work / 'optgate.db'}",
        "OPTGATE_STORE_STATE_DIR": str(work),
        "OPTGATE_WEB_RATE_LIMIT": str(limit),
        "OPTGATE_API_RATE_LIMIT": str(limit),
        "OPTGATE_STORE_VERIFY_MINUTES": "0",
    }
    return load(None, env)


async def rate(url: str, count: int, headers: dict[str, str]) -> float:
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        for _ in range(count):
            async with http.get(url, headers=headers) as answer:
                await answer.read()
        return count / (time.perf_counter() - start)


async def one_run(work: Path, store: str | None, limit: int, count: int) -> tuple[float, float]:
    config = configured(work, store, limit)
    async with running(config) as gate:
        text, key = new_key(f"bench-{secrets.token_hex(4)}", ("read",))
        async with opened(config) as db:
            await db.add_api_key(key, actor="bench")
        web = await rate(f"http://127.0.0.1:{gate.web_port}/u/forged", count, {})
        api = await rate(
            f"http://127.0.0.1:{gate.api_port}/api/v1/reports/compliance",
            count,
            {"Authorization": f"Bearer {text}"},
        )
    return web, api


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", help="a postgresql:// URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"counted": [], "uncounted": []}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for _ in range(args.runs):
            for name, limit in (("counted", 10**9), ("uncounted", 0)):
                results[name].append(await one_run(work, args.store, limit, args.requests))
    for index, what in enumerate(("web page", "API call")):
        counted = statistics.median(r[index] for r in results["counted"])
        uncounted = statistics.median(r[index] for r in results["uncounted"])
        print(
            f"{what}: counted {counted:,.0f}/s, uncounted {uncounted:,.0f}/s, "
            f"ratio {counted / uncounted:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
