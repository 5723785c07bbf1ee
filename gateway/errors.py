"""The gateway's errors, and the three tables that answer every error (issue 16).

    SMTP_REPLIES  (error, phase) -> the reply of every listener: the relay's ([smtp]),
                  the inbound one ([inbound]) and partner submission ([partners])
    HTTP_ANSWERS  error -> status and problem type: the web pages, the ESP hooks, the
                  REST API (each shows the answer its own way: a page, JSON, RFC 9457)
    EXIT_CODES    error -> the exit status and what ``optgate`` says

A front end looks an error up here and nowhere else; the first row whose class the
error is an instance of (and, for SMTP, whose phase matches) answers. The last row
of each table is the catch-all: 451 (try again), 500, or none (a traceback: a bug).
Messages of ``OptgateError`` say what to do; an answer shows one only where the row
says so (``{error}``, ``detail``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from suppression.errors import InvalidAddress, OptgateError, StoreError
from suppression.partners import UnknownPartner

# --- the gateway's own errors ----------------------------------------------------------


class PathError(ValueError):
    """A MAIL or RCPT path or its parameters break the grammar; the message says how."""


class BadControlHeader(OptgateError):
    """An X-Optgate-* header with a value optgate cannot honour."""

    def __init__(self, problem: str, header: str, value: str) -> None:
        super().__init__(problem)
        self.header, self.value = header, value  # the value only as a digest in logs


class Deferred(Exception):
    """The request cannot be dealt with now (a limit, the next hop): try again later."""


class InvalidToken(Exception):
    """A token that must not be honoured; the message says why, never which key."""


class BadRequest(OptgateError):
    """A form the web endpoint cannot act on; nothing was changed."""


class NotYours(OptgateError):
    """A resubscribe asked to lift what the recipient did not cause; nothing was changed."""


class Refused(Exception):
    """An ESP notification that changes nothing (gateway/esp/)."""


class Malformed(Refused):
    """Not a notification of this vendor (not JSON, a field missing or of the wrong type)."""


class TooLarge(Refused):
    """Over ``[esp] max_body``."""


class Unauthenticated(Refused):
    """No credential at all: no signature, no basic auth."""


class Forged(Refused):
    """A credential that does not verify, or one optgate does not accept (topic, host)."""


class Stale(Refused):
    """A genuine signature on a timestamp outside the window."""


class Replayed(Refused):
    """A genuine notification whose replay key was accepted before."""


class Unavailable(Refused):
    """It cannot be verified now (the SNS certificate host does not answer): retry later."""


# --- SMTP -------------------------------------------------------------------------------


class Phase(StrEnum):
    """Where in a session an error happened."""

    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    AUTH = "auth"
    SESSION = "session"  # anywhere else: aiosmtpd's handle_exception


NOT_RELAYED = (
    "553 5.1.3 Recipient address not accepted: optgate relays only to addresses it can keep "
    "opt-outs for (no quoted local parts that need quotes, address literals, or special-use "
    "or single-label domains)"
)
TRY_LATER = "451 4.3.0 Temporary local problem, try again later"

# (error, phase or None for any, reply; {error} is the error's message)
SMTP_REPLIES: tuple[tuple[type[BaseException], Phase | None, str], ...] = (
    (PathError, Phase.MAIL, "501 5.1.7 Bad sender address syntax: {error}"),
    (PathError, Phase.RCPT, "501 5.1.3 Bad recipient address syntax: {error}"),
    (InvalidAddress, Phase.RCPT, NOT_RELAYED),  # the store could not keep its opt-out
    (BadControlHeader, None, "550 5.6.0 {error}"),
    (Deferred, None, "451 4.7.1 This request cannot be dealt with now, try again later"),
    (OptgateError, Phase.AUTH, "454 4.7.0 Temporary authentication failure"),
    (BaseException, None, TRY_LATER),  # the store, the disk, a bug: the client retries
)


def smtp_reply(error: BaseException, phase: Phase) -> str:
    """The reply to an error in a phase of a session."""
    for kind, where, reply in SMTP_REPLIES:
        if isinstance(error, kind) and where in (None, phase):
            return reply.format(error=error)
    raise AssertionError("the last row answers every error")  # pragma: no cover


# --- HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An error's HTTP status and problem type (the slug of its RFC 9457 type, its web
    page, the outcome of an ESP notification), and whether its message may be shown."""

    status: int
    kind: str
    title: str
    detail: bool = False  # the error's own message is the answer's detail


HTTP_ANSWERS: tuple[tuple[type[BaseException], HttpAnswer], ...] = (
    (InvalidToken, HttpAnswer(400, "bad-link", "Bad link")),
    (Malformed, HttpAnswer(400, "malformed", "Malformed notification", detail=True)),
    (TooLarge, HttpAnswer(413, "too_large", "Notification too large", detail=True)),
    (Unauthenticated, HttpAnswer(401, "unauthenticated", "Unauthenticated", detail=True)),
    (Forged, HttpAnswer(403, "forged", "Forged", detail=True)),
    (Stale, HttpAnswer(403, "stale", "Stale", detail=True)),
    (Replayed, HttpAnswer(403, "replayed", "Replayed", detail=True)),
    (Unavailable, HttpAnswer(503, "unavailable", "Unavailable", detail=True)),
    (Refused, HttpAnswer(400, "malformed", "Malformed notification", detail=True)),
    (UnknownPartner, HttpAnswer(404, "not-found", "Not found", detail=True)),
    (StoreError, HttpAnswer(503, "store-unavailable", "Store unavailable")),
    (OptgateError, HttpAnswer(400, "bad-request", "Bad request", detail=True)),
    (BaseException, HttpAnswer(500, "internal", "Internal error")),  # a bug: logged
)
# the framework's own answers (no route, a method not allowed, a body too big)
HTTP_STATUSES: Mapping[int, HttpAnswer] = {
    404: HttpAnswer(404, "not-found", "Not found"),
    405: HttpAnswer(405, "method-not-allowed", "Method not allowed"),
    413: HttpAnswer(413, "too-large", "Request body too large"),
}


def http_answer(error: BaseException) -> HttpAnswer:
    """The answer to an error of a handler."""
    return next(answer for kind, answer in HTTP_ANSWERS if isinstance(error, kind))


def http_status(status: int, reason: str) -> HttpAnswer:
    """The answer for a status the framework chose itself."""
    return HTTP_STATUSES.get(status) or HttpAnswer(status, "http-error", reason, detail=True)


# --- exit codes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exit:
    """How ``optgate`` ends on an error: its status and its one line on stderr."""

    status: int
    says: str | None  # None: nothing (the reader of stdout went away); {error}: the message


EXIT_CODES: tuple[tuple[type[BaseException], Exit], ...] = (
    # `optgate suppress export | head`: the reader has what it wanted (128 + SIGPIPE)
    (BrokenPipeError, Exit(128 + 13, None)),
    (KeyboardInterrupt, Exit(130, "interrupted")),
    (OptgateError, Exit(2, "{error}")),
)
EXITING = tuple(kind for kind, _ in EXIT_CODES)  # anything else is a bug: its traceback


def exit_for(error: BaseException) -> Exit:
    """How a command that raised ``error`` (one of EXITING) ends."""
    return next(answer for kind, answer in EXIT_CODES if isinstance(error, kind))
