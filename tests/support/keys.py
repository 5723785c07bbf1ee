"""The audit key of stores the tests open directly (a config's key file is the rest)."""

AUDIT_KEY = bytes(range(32))
