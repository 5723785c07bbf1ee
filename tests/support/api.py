"""The REST API from a client's side: keys made in the store, calls over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.config import Config
from gateway.runtime.stores import opened
from suppression.apikeys import new_key


async def api_key(config: Config, name: str, *scopes: str) -> str:
    """A new key with these scopes (as `optgate api-key add` makes one); its text."""
    text, record = new_key(name, scopes)
    async with opened(config) as store:
        await store.add_api_key(record, actor="test")
    return text


@dataclass
class Answer:
    """One HTTP answer: status, parsed JSON (or the text), headers."""

    status: int
    body: Any
    headers: dict[str, str]

    @property
    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem this answer is (asserting it is one)."""
        assert self.headers["Content-Type"].startswith("application/problem+json"), self.headers
        assert isinstance(self.body, dict)
        assert self.body["status"] == self.status
        return self.body


async def call(
    port: int,
    method: str,
    path: str,
    key: str | None = None,
    body: Any = None,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request to 127.0.0.1:port (JSON ``body``, or raw ``data``)."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{port}{path}", data=data, headers=sent) as r,
    ):
        text = await r.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return Answer(r.status, parsed, dict(r.headers))


async def within_one_minute(seconds: float) -> None:
    """Wait, if need be, until the next ``seconds`` fall within one minute of the clock:
    limits count per minute, and a test's requests must not straddle two."""
    left = 60 - time.time() % 60
    if left < seconds:
        await asyncio.sleep(left + 0.05)
