"""structlog setup: JSON lines in production, readable lines on a terminal; no address in either.

Values that name a person or that a sender controls are logged as keyed digests:
HMAC-SHA256 with the log key (the ``log:`` line of the token key file, see
gateway/keys.py), 16 hex digits. An unkeyed hash of an address is no cover (hash
a list of candidate addresses and compare); a keyed one links a person's lines to
each other without naming them to anyone who lacks the key. The processor below
does it for every line, in one place:

- ``rcpt``: the recipient's identity hash (call sites pass its first 16 hex
  digits), as ``digest(identity[:16])``; ``optgate log-id ADDR`` prints it;
- ``message_id``, ``mail_from``, ``sender``, ``value``: their digest;
- any other text: each address-like word (``x@y``) replaced by its digest.

Lines of other libraries (aiosmtpd, asyncio) go through the same processors.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

RECIPIENT = "rcpt"
KEYED = frozenset({"message_id", "mail_from", "sender", "value"})
_ADDRESS = re.compile(r"[^\s<>()\[\]{}\"',;:@]+@[^\s<>()\[\]{}\"',;:@]+")


class _Key:
    """The log key of this process: random (digests nobody can link) until one is loaded."""

    mac = hmac.new(secrets.token_bytes(32), digestmod=hashlib.sha256)


def use_key(key: bytes) -> None:
    """Digest with this key from now on (the ``log:`` key of the key file)."""
    _Key.mac = hmac.new(key, digestmod=hashlib.sha256)


def digest(value: str) -> str:
    """The keyed digest logged for a value: 16 hex digits."""
    mac = _Key.mac.copy()
    mac.update(value.encode("utf-8", "surrogateescape"))
    return mac.hexdigest()[:16]


def recipient_id(identity: str) -> str:
    """What the log says for a recipient, from its identity hash (full or 16 digits)."""
    return digest(identity[:16])


def _redacted(value: Any) -> Any:
    if isinstance(value, str) and "@" in value:
        return _ADDRESS.sub(lambda m: f"<{digest(m.group(0))}>", value)
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def redact(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The structlog processor: keyed digests for the fields above, addresses out of the rest."""
    for name, value in event.items():
        if value is None:
            continue
        if name == RECIPIENT:
            event[name] = recipient_id(str(value))
        elif name in KEYED:
            event[name] = digest(str(value))
        else:
            event[name] = _redacted(value)
    return event


_remove_meta = structlog.stdlib.ProcessorFormatter.remove_processors_meta


class _Stdout(logging.Handler):
    """Other libraries' records to the ``sys.stdout`` of the moment, one write per line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # a closed or broken stdout: logging must not raise
            self.handleError(record)


def configure(level: int = logging.INFO, *, cache: bool = True) -> None:
    """One event per line on stdout; recipients appear only as keyed digests.

    A one-shot command passes ``cache=False``: every line then goes to the
    ``sys.stdout`` of the moment (several runs in one process, as in tests).
    """
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stdout.isatty()
        else structlog.processors.JSONRenderer()
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # one write per line: the lines of several worker processes sharing stdout
        # never interleave (print() writes the newline apart when unbuffered)
        logger_factory=structlog.WriteLoggerFactory(sys.stdout if cache else None),
        cache_logger_on_first_use=cache,
    )
    handler = _Stdout(logging.WARNING)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                stamp,
                structlog.processors.format_exc_info,
            ],
            processors=[_remove_meta, redact, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stdout)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # aiosmtpd logs peers and envelope addresses at INFO: keep it to warnings
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # aiohttp logs the client's IP and a traceback for each request it cannot parse
    # (anyone can send one); the app's own errors are logged by its middleware
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
