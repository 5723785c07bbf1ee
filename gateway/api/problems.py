"""Errors as RFC 9457 problem details (``application/problem+json``): the one place an
API error becomes an HTTP answer."""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web

MEDIA_TYPE = "application/problem+json"
BASE = "https://optgate.invalid/problems/"  # type URIs: identifiers, not pages to fetch


class Problem(Exception):
    """An answer other than success: status, a type slug, a title and what went wrong."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.errors, self.headers = list(errors), headers or {}

    def response(self) -> web.Response:
        """The problem as an answer."""
        body: dict[str, object] = {
            "type": BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type=MEDIA_TYPE,
            headers=self.headers,
        )


def bad_request(detail: str, errors: Sequence[dict[str, str]] = ()) -> Problem:
    """400: the request cannot be acted on; nothing was changed."""
    return Problem(400, "bad-request", "Bad request", detail, errors=errors)


def unauthorized(detail: str) -> Problem:
    """401: no API key, or not one optgate knows (or a revoked one)."""
    headers = {"WWW-Authenticate": 'Bearer realm="optgate"'}
    return Problem(401, "unauthorized", "API key required", detail, headers=headers)


def forbidden(scope: str) -> Problem:
    """403: the key lacks the scope this operation needs."""
    detail = f"this API key lacks the {scope!r} scope this operation needs"
    return Problem(403, "forbidden", "Insufficient scope", detail)


def not_found(detail: str) -> Problem:
    """404."""
    return Problem(404, "not-found", "Not found", detail)
