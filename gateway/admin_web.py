"""The admin listener (``[api] listen``, default 127.0.0.1:8081): for operators and
Prometheus, never the public, who reach the web endpoint (gateway/web.py) instead.

    GET /metrics   Prometheus text: the sum over all workers
    GET /healthz   200 while the store answers, else 503

The REST API of issue 17 adds its routes to this app.
"""

from __future__ import annotations

from aiohttp import web

from gateway.metrics import Metrics
from gateway.web import anonymous, store_health
from suppression.store import Store

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def make_admin_app(*, store: Store, metrics: Metrics) -> web.Application:
    """The admin listener's application; run it without an access log."""

    async def exposition(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": PROMETHEUS})

    async def health(request: web.Request) -> web.Response:
        return await store_health(store)

    app = web.Application()
    anonymous(app)
    app.router.add_get("/metrics", exposition)
    app.router.add_get("/healthz", health)
    return app
