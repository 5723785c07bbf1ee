"""The OpenAPI 3.1 document (openapi.json beside this file): served as it is, and the
schemas every request body is checked against, so what it says is what the API takes."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT = Path(__file__).with_name("openapi.json")
_URI = "urn:optgate:openapi"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@functools.cache
def document() -> dict[str, Any]:
    """The document, parsed once."""
    parsed: dict[str, Any] = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return parsed


@functools.cache
def raw() -> bytes:
    """The document's bytes, as served."""
    return DOCUMENT.read_bytes()


def operations() -> dict[str, tuple[str, str, Mapping[str, Any]]]:
    """operationId -> (method, path, operation), for every documented operation."""
    found = {}
    for path, item in document()["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                found[operation["operationId"]] = (method.upper(), path, operation)
    return found


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@functools.cache
def body_validator(operation_id: str) -> Draft202012Validator | None:
    """The request body's validator of an operation (None: it takes no body)."""
    method, path, operation = operations()[operation_id]
    if "requestBody" not in operation:
        return None
    registry: Registry[Any] = Registry().with_resource(
        _URI, Resource.from_contents(document(), default_specification=DRAFT202012)
    )
    where = _pointer(
        "paths", path, method.lower(), "requestBody", "content", "application/json", "schema"
    )
    return Draft202012Validator({"$ref": f"{_URI}#/{where}"}, registry=registry)


def query_names(operation_id: str) -> frozenset[str]:
    """The query parameters an operation takes."""
    operation = operations()[operation_id][2]
    return frozenset(p["name"] for p in operation.get("parameters", ()) if p["in"] == "query")


def body_errors(operation_id: str, body: object) -> list[dict[str, str]]:
    """What is wrong with a request body, each with the JSON pointer of the value at fault."""
    validator = body_validator(operation_id)
    if validator is None:
        return []
    errors = sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    return [
        {"pointer": "/" + _pointer(*map(str, e.absolute_path)), "detail": e.message} for e in errors
    ]
