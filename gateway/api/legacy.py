"""The public listener's one API route, kept for sign-up back ends written before the
REST API: bearer keys from ``[web] api_keys``.

``POST /api/consent-requests`` with ``{"address": ..., "purpose": ...}`` mails a
double opt-in confirmation link (gateway/web/optin.py ``request_consent``, which
``POST /api/v1/consent-requests`` on the admin listener calls too); nothing counts
as consent until the recipient confirms.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence

import structlog
from aiohttp import web

from gateway.errors import http_answer
from gateway.smtp.relay import Outcome
from suppression.address import Address, normalize
from suppression.errors import OptgateError
from suppression.model import check_name

log = structlog.get_logger("optgate.api")
Requester = Callable[[Address, str], Awaitable[Outcome]]


def add_consent_api(app: web.Application, requester: Requester, keys: Sequence[str]) -> None:
    """Route the consent-request API on app, for callers holding one of the keys."""
    digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def authorized(request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        given = hashlib.sha256(key.encode()).digest()
        found = [hmac.compare_digest(given, digest) for digest in digests]
        return scheme == "Bearer" and any(found)

    async def consent_request(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "a valid API key is required"}, status=401)
        try:
            body = await request.json()
            address = normalize(str(body["address"]))
            purpose = check_name(str(body["purpose"]), "purpose")
        except OptgateError as exc:  # answered as gateway/errors.py says
            return web.json_response({"error": str(exc)}, status=http_answer(exc).status)
        except (ValueError, KeyError, TypeError):
            answer = {"error": "expected JSON with address and purpose"}
            return web.json_response(answer, status=400)
        outcome = await requester(address, purpose)
        log.info("consent_requested", purpose=purpose, rcpt=address.sha256[:16], code=outcome.code)
        if outcome.delivered:
            return web.json_response({"status": "sent"}, status=202)
        status = 503 if outcome.temporary else 422
        return web.json_response({"status": "not sent", "detail": outcome.message}, status=status)

    app.router.add_post("/api/consent-requests", consent_request)
