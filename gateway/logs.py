"""structlog setup: JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: int = logging.INFO, *, cache: bool = True) -> None:
    """One event per line on stdout; recipients appear only as hashes.

    A one-shot command passes ``cache=False``: every line then goes to the
    ``sys.stdout`` of the moment (several runs in one process, as in tests).
    """
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stdout.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # one write per line: the lines of several worker processes sharing stdout
        # never interleave (print() writes the newline apart when unbuffered)
        logger_factory=structlog.WriteLoggerFactory(sys.stdout if cache else None),
        cache_logger_on_first_use=cache,
    )
    # aiosmtpd logs peers and envelope addresses at INFO: keep it to warnings
    logging.getLogger("mail.log").setLevel(logging.WARNING)
