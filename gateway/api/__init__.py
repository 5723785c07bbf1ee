"""The REST API on the admin listener (``/api/v1``): routes over gateway/actions.py, API
keys with scopes and a shared rate limit, RFC 9457 problems, the OpenAPI 3.1 document
(openapi.json, which also checks every request body)."""
