"""The admin listener (``[api] listen``, default 127.0.0.1:8081): for operators, their
systems and Prometheus, never the public, who reach the web endpoint (gateway/web/endpoint.py).

    /api/v1/...    the REST API (gateway/api/routes.py), with API keys
    GET /metrics   Prometheus text: the sum over all workers
    GET /healthz   200 while the store answers, else 503
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.routes import PREFIX, Api, make_api
from gateway.runtime.metrics import Metrics
from gateway.web.endpoint import anonymous, store_health
from suppression.store import OptOuts

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
API_APP = web.AppKey("api", web.Application)  # the mounted REST API (for its route list)


def make_admin_app(*, store: OptOuts, metrics: Metrics, api: Api | None = None) -> web.Application:
    """The admin listener's application (with the REST API when ``api`` is given); run it
    without an access log."""

    async def exposition(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": PROMETHEUS})

    async def health(request: web.Request) -> web.Response:
        return await store_health(store)

    app = web.Application(client_max_size=api.config.api.max_body if api else 1024**2)
    anonymous(app)
    app.router.add_get("/metrics", exposition)
    app.router.add_get("/healthz", health)
    if api is not None:
        app[API_APP] = make_api(api)
        app.add_subapp(PREFIX, app[API_APP])
    return app
