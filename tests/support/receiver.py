"""A real HTTP endpoint for webhooks: records every delivery, answers as told (a status,
late, or not until released), and can be down (its port closed) and come up again."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Got:
    """One delivery attempt as it arrived."""

    id: str
    timestamp: str
    signature: str
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    def headers(self) -> dict[str, str]:
        return {
            "webhook-id": self.id,
            "webhook-timestamp": self.timestamp,
            "webhook-signature": self.signature,
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Receiver:
    """The endpoint at http://127.0.0.1:PORT/hook."""

    port: int = field(default_factory=free_port)
    got: list[Got] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers for the next attempts
    delays: list[float] = field(default_factory=list)  # seconds before those answers
    release: asyncio.Event | None = None  # set: no attempt is answered before it is set
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        h = request.headers
        self.got.append(
            Got(
                h["webhook-id"],
                h["webhook-timestamp"],
                h["webhook-signature"],
                await request.read(),
            )
        )
        async with self.arrived:
            self.arrived.notify_all()
        status = self.statuses.pop(0) if self.statuses else 204
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        if self.release is not None:
            await self.release.wait()
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait(self, done: Callable[[list[Got]], bool], seconds: float = 30) -> list[Got]:
        """Wait (bounded) until what arrived satisfies ``done``."""
        async with asyncio.timeout(seconds), self.arrived:
            await self.arrived.wait_for(lambda: done(self.got))
        return self.got

    def ids(self) -> set[str]:
        return {g.id for g in self.got}
