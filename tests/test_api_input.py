"""Bad input to the REST API: each kind gets a 400, 405, 413 or 415 problem with a clear
message, and changes nothing (the audit chain's head stays where it was)."""

from __future__ import annotations

import pytest

from gateway.config import Config
from gateway.runtime.service import Running
from gateway.runtime.stores import opened
from tests.support.api import api_key, call

OK = "ok@example.com"
SUPPRESS = "/api/v1/suppressions"
CONSENTS = "/api/v1/consents"


async def head(config: Config) -> str:
    async with opened(config) as store:
        return (await store.verify_chain()).head_text


BODIES: list[tuple[str, str, bytes, str, str]] = [
    # (name, path, body, what the detail says, JSON pointer of the first error or "")
    ("malformed JSON", SUPPRESS, b'{"addresses": ["ok@example.com"', "not JSON", ""),
    ("not JSON at all", SUPPRESS, b"addresses=ok@example.com", "not JSON", ""),
    ("NaN", SUPPRESS, b'{"addresses": ["ok@example.com"], "x": NaN}', "NaN is not JSON", ""),
    ("an array, not an object", SUPPRESS, b'["ok@example.com"]', "is not of type 'object'", "/"),
    ("a missing field", SUPPRESS, b'{"scope": "global"}', "'addresses' is a required", "/"),
    (
        "an unknown field",
        SUPPRESS,
        b'{"addresses": ["ok@example.com"], "reasn": "manual"}',
        "('reasn' was unexpected)",
        "/",
    ),
    (
        "a wrong type",
        SUPPRESS,
        b'{"addresses": "ok@example.com"}',
        "is not of type 'array'",
        "/addresses",
    ),
    (
        "a number as an address",
        SUPPRESS,
        b'{"addresses": [42]}',
        "not of type 'string'",
        "/addresses/0",
    ),
    ("no addresses", SUPPRESS, b'{"addresses": []}', "should be non-empty", "/addresses"),
    (
        "a bad scope",
        SUPPRESS,
        b'{"addresses": ["ok@example.com"], "scope": "topic:"}',
        "does not match",
        "/scope",
    ),
    (
        "a reason only erasure writes",
        SUPPRESS,
        b'{"addresses": ["ok@example.com"], "reason": "erased"}',
        "is not one of",
        "/reason",
    ),
    (
        "a bad address among good ones",
        SUPPRESS,
        b'{"addresses": ["ok@example.com", "not an address", "x@example.com"]}',
        "1 invalid address(es); nothing was changed",
        "/addresses/1",
    ),
    (
        "an address of a special-use domain",
        SUPPRESS,
        b'{"addresses": ["someone@example.test"]}',
        "invalid address",
        "/addresses/0",
    ),
    (
        "a partner scope for no partner",
        SUPPRESS,
        b'{"addresses": ["ok@example.com"], "scope": "partner:nobody"}',
        "no partner named 'nobody'",
        "",
    ),
    (
        "a bad purpose",
        CONSENTS,
        b'{"addresses": ["ok@example.com"], "purpose": "News!"}',
        "does not match",
        "/purpose",
    ),
    (
        "a bad IP",
        CONSENTS,
        b'{"addresses": ["ok@example.com"], "purpose": "news", "ip": "300.1.1.1"}',
        "is not an IP address",
        "",
    ),
    (
        "a digest that is not one",
        CONSENTS,
        b'{"addresses": ["ok@example.com"], "purpose": "news", "text_sha256": "abc"}',
        "does not match",
        "/text_sha256",
    ),
    ("deep nesting", SUPPRESS, b"[" * 100_000 + b"]" * 100_000, "not JSON", ""),
]


@pytest.mark.parametrize(
    ("path", "body", "says", "pointer"),
    [case[1:] for case in BODIES],
    ids=[case[0] for case in BODIES],
)
async def test_a_bad_body_is_a_400_that_changes_nothing(
    gate: Running, config: Config, path: str, body: bytes, says: str, pointer: str
) -> None:
    key = await api_key(config, "crm", "read", "write")
    before = await head(config)
    answer = await call(
        gate.api_port, "POST", path, key, data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400, answer.body
    problem = answer.problem
    assert problem["title"] == "Bad request"
    assert says in problem["detail"], problem
    if pointer:
        assert problem["errors"][0]["pointer"] == pointer, problem
    assert await head(config) == before


async def test_a_10_mb_body_is_a_413(gate: Running, config: Config) -> None:
    key = await api_key(config, "crm", "write")
    before = await head(config)
    addresses = ",".join(f'"p{n}@example.com"' for n in range(600_000))
    huge = f'{{"addresses": [{addresses}]}}'.encode()
    assert len(huge) > 10_000_000
    answer = await call(
        gate.api_port,
        "POST",
        SUPPRESS,
        key,
        data=huge,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 413
    assert "[api] max_body" in answer.problem["detail"]
    assert await head(config) == before


async def test_more_addresses_than_allowed_is_a_400(gate: Running, config: Config) -> None:
    key = await api_key(config, "crm", "write")
    many = {"addresses": [f"p{n}@example.com" for n in range(10_001)]}
    answer = await call(gate.api_port, "POST", SUPPRESS, key, many)
    assert answer.status == 400
    assert "/addresses" in answer.problem["detail"]


async def test_other_bad_requests(gate: Running, config: Config) -> None:
    key = await api_key(config, "crm", "read", "write")
    port = gate.api_port
    before = await head(config)
    plain = await call(
        port,
        "POST",
        SUPPRESS,
        key,
        data=b'{"addresses": ["ok@example.com"]}',
        headers={"Content-Type": "text/plain"},
    )
    assert plain.status == 415
    assert "application/json" in plain.problem["detail"]
    unknown = await call(port, "GET", SUPPRESS + "?scop=global", key)
    assert unknown.status == 400
    assert "scop" in unknown.problem["detail"]
    twice = await call(port, "GET", SUPPRESS + "?limit=1&limit=2", key)
    assert "given twice" in twice.problem["detail"]
    for query, says in (
        ("?limit=0", "limit"),
        ("?limit=many", "limit"),
        ("?cursor=!!!", "cursor"),
        ("?reason=bored", "reason"),
        ("?since=tuesday", "duration"),
        ("?since=2025-01-01T00:00:00", "offset"),
        ("?scope=everything", "scope"),
    ):
        answer = await call(port, "GET", SUPPRESS + query, key)
        assert answer.status == 400, query
        assert says in answer.problem["detail"], (query, answer.body)
    wrong = await call(port, "PUT", SUPPRESS, key, {"addresses": [OK]})
    assert wrong.status == 405
    assert "GET" in wrong.headers["Allow"]
    assert "POST" in wrong.headers["Allow"]
    assert wrong.problem["title"] == "Method not allowed"
    nowhere = await call(port, "GET", "/api/v1/nothing-here", key)
    assert nowhere.status == 404
    assert nowhere.problem["type"].endswith("/not-found")
    bad_head = await call(port, "GET", "/api/v1/store/verify?expect=12", key)
    assert "SEQ:DIGEST" in bad_head.problem["detail"]
    bad_address = await call(port, "DELETE", SUPPRESS + "/nobody", key)
    assert bad_address.status == 400
    assert await head(config) == before
