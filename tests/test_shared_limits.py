"""Rate limits hold for the node, not per worker: `optgate serve --workers 2` answers the
web endpoint's per-IP limit, an API key's limit and the partners' AUTH limit once, as
counts in the store that both workers share (before, each worker had its own)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from pathlib import Path

import aiohttp

from gateway.config import load
from tests.support.api import api_key, within_one_minute
from tests.support.partners import add_partner
from tests.support.people import seed
from tests.support.serving import Served, optgate_serve
from tests.support.smtp import Sink, gateway_env

REQUESTS = 30  # each on a connection of its own: the kernel spreads them over the workers


async def statuses(url: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    codes = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            async with http.get(url, headers={"Connection": "close", **(headers or {})}) as r:
                codes.append(r.status)
    return codes


def workers_of(served: Served, event: str) -> set[int]:
    return {line["worker"] for line in served.events(event)}


async def test_two_workers_share_the_web_and_api_limits(tmp_path: Path, next_hop: Sink) -> None:
    env = gateway_env(tmp_path, next_hop.port, 0, web_rate_limit="10", api_rate_limit="5")
    config = load(None, env)
    await seed(config)
    key = await api_key(config, "crm", "read")
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        _, web = served.address("web")
        _, api = served.address("api")
        await within_one_minute(20)
        pages = await statuses(f"http://127.0.0.1:{web}/u/forged-token", REQUESTS)
        calls = await statuses(
            f"http://127.0.0.1:{api}/api/v1/reports/compliance",
            REQUESTS,
            {"Authorization": f"Bearer {key}"},
        )
        assert pages.count(400) == 10  # the forged link's page, 10 times in all
        assert pages.count(429) == REQUESTS - 10
        assert calls.count(200) == 5
        assert calls.count(429) == REQUESTS - 5
        await served.wait_for("api_request", REQUESTS)
        # both workers answered: each alone would have allowed the whole limit again
        assert workers_of(served, "web_bad_token") | workers_of(served, "web_rate_limited") == {
            0,
            1,
        }
        assert workers_of(served, "api_request") == {0, 1}


def _attempts(port: int, count: int) -> list[int]:
    """AUTH attempts with a wrong password, each on a connection of its own (after TLS)."""
    codes = []
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for n in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("guesser.test")
            client.starttls(context=context)
            client.ehlo("guesser.test")
            try:
                client.login("acme", f"guess-{n}")
                codes.append(235)
            except smtplib.SMTPAuthenticationError as exc:
                codes.append(exc.smtp_code)
    return codes


async def test_two_workers_share_the_partners_auth_limit(tmp_path: Path, next_hop: Sink) -> None:
    env = gateway_env(
        tmp_path,
        next_hop.port,
        0,
        partners_listen="127.0.0.1:0",
        partners_audience_domain="partners.example.com",
        partners_auth_per_minute="4",
    )
    await add_partner(load(None, env))
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        _, port = served.address("partners")
        await within_one_minute(30)
        codes = await asyncio.to_thread(_attempts, port, 16)
        # smtplib tries AUTH PLAIN, then LOGIN: two attempts a login. The client's 4 a
        # minute hold for the node: 4 checked (2 logins refused), then all throttled
        assert codes.count(535) == 2, codes
        assert codes.count(454) == 14, codes
        await served.wait_for("partner_auth_throttled", 14)
        assert len(served.events("partner_auth")) == 4
        assert workers_of(served, "partner_auth_throttled") | workers_of(
            served, "partner_auth"
        ) == {0, 1}
