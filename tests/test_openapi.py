"""The OpenAPI 3.1 document: valid, served, the routes the admin listener registers and
nothing else, and the answers the API gives match the schemas it documents."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.api import schema
from gateway.api.routes import PREFIX, ROUTES, Api, registered
from gateway.config import Config
from gateway.runtime.metrics import Metrics
from gateway.runtime.service import Running
from gateway.runtime.stores import opened
from gateway.web.admin import API_APP, make_admin_app
from suppression.address import normalize
from suppression.model import Send, now
from suppression.partners import Partner
from tests.support.api import api_key, call

pytestmark = pytest.mark.pure

DOCUMENT = schema.document()


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    validate(DOCUMENT)  # openapi-spec-validator: raises on any fault


async def test_every_route_is_documented_and_every_documented_path_routed(
    gate: Running, config: Config
) -> None:
    async with opened(config) as store:
        app = make_admin_app(
            store=store, metrics=Metrics(), api=Api(config, store, Metrics(), None)
        )
        routed = registered(app[API_APP])
    documented = {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in schema.METHODS
    }
    assert routed == documented
    assert len(routed) == len(ROUTES)


def test_each_operation_documents_the_scope_its_route_needs() -> None:
    operations = schema.operations()
    assert {r.operation for r in ROUTES} == set(operations)
    for route in ROUTES:
        method, path, operation = operations[route.operation]
        assert (method, path) == (route.method, PREFIX + route.path)
        needed = [scope for need in operation["security"] for scope in need.get("apiKey", [])]
        assert needed == ([route.scope] if route.scope else []), route.operation
        if route.method in ("POST",):
            assert "requestBody" in operation, route.operation
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            target = body["$ref"].rsplit("/", 1)[1]
            assert DOCUMENT["components"]["schemas"][target]["additionalProperties"] is False


def _validator(operation: str, status: int) -> Draft202012Validator:
    """The schema of an operation's answer with that status (inline or a shared response)."""
    method, path, op = schema.operations()[operation]
    response = op["responses"][str(status)]
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        response = DOCUMENT["components"]["responses"][name]
        where = ["components", "responses", name]
    else:
        where = ["paths", path, method.lower(), "responses", str(status)]
    media = next(iter(response["content"]))
    pointer = "/".join(p.replace("/", "~1") for p in [*where, "content", media, "schema"])
    registry: Registry[Any] = Registry().with_resource(
        "urn:doc", Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": f"urn:doc#/{pointer}"}, registry=registry)


async def test_answers_match_their_documented_schemas(gate: Running, config: Config) -> None:
    port = gate.api_port
    key = await api_key(config, "all", "read", "write", "erase")
    address = normalize("doc@example.com")
    async with opened(config) as store:
        await store.add_partner(Partner("acme", "x", False, now()), actor="t")
        await store.record_sends([Send("m", address.sha256, "news", "marketing", now(), "c1")])
    a = quote(address.normalized)
    calls: list[tuple[str, str, str, Any, int]] = [
        ("getOpenApi", "GET", "/openapi.json", None, 200),
        ("addSuppressions", "POST", "/suppressions", {"addresses": [address.normalized]}, 200),
        ("listSuppressions", "GET", "/suppressions?limit=1", None, 200),
        ("checkSuppressions", "POST", "/suppressions/check", {"addresses": ["x@example.com"]}, 200),
        ("liftSuppressions", "POST", "/suppressions/lift", {"addresses": ["x@example.com"]}, 200),
        ("removeSuppression", "DELETE", f"/suppressions/{a}", None, 200),
        (
            "recordConsents",
            "POST",
            "/consents",
            {"addresses": [address.normalized], "purpose": "news", "text_sha256": "ab" * 32},
            200,
        ),
        (
            "revokeConsents",
            "POST",
            "/consents/revoke",
            {"addresses": [address.normalized], "purpose": "news"},
            200,
        ),
        ("listConsents", "GET", f"/consents/{a}", None, 200),
        (
            "requestConsents",
            "POST",
            "/consent-requests",
            {"addresses": [address.normalized], "purpose": "news"},
            200,
        ),
        ("showSubject", "GET", f"/subjects/{a}", None, 200),
        ("complianceReport", "GET", "/reports/compliance", None, 200),
        ("ratesReport", "GET", "/reports/rates", None, 200),
        ("partnerReport", "GET", "/partners/acme/report", None, 200),
        ("partnerReport", "GET", "/partners/nobody/report", None, 404),
        ("verifyStore", "GET", "/store/verify", None, 200),
        ("eraseSubject", "DELETE", f"/subjects/{a}", None, 200),
        ("addSuppressions", "POST", "/suppressions", {"addresses": 1}, 400),
        ("addSuppressions", "POST", "/suppressions", None, 415),
    ]
    seen = set()
    for operation, method, path, body, status in calls:
        answer = await call(port, method, PREFIX + path, key, body)
        assert answer.status == status, (operation, answer.body)
        errors = list(_validator(operation, status).iter_errors(answer.body))
        assert not errors, (operation, [e.message for e in errors])
        seen.add(operation)
    assert seen == set(schema.operations())
    for operation, status in (("listSuppressions", 401), ("eraseSubject", 403)):
        assert _validator(operation, status) is not None
    served = await call(port, "GET", PREFIX + "/openapi.json")
    assert served.body == json.loads(schema.DOCUMENT.read_text())
