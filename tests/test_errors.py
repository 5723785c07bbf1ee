"""gateway/errors.py: every error's SMTP reply, HTTP answer and exit code, as tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import (
    EXIT_CODES,
    EXITING,
    HTTP_ANSWERS,
    SMTP_REPLIES,
    TRY_LATER,
    BadControlHeader,
    BadRequest,
    Deferred,
    Forged,
    InvalidToken,
    Malformed,
    NotYours,
    PathError,
    Phase,
    Refused,
    Replayed,
    Stale,
    TooLarge,
    Unauthenticated,
    Unavailable,
    exit_for,
    http_answer,
    http_status,
    smtp_reply,
)
from suppression.errors import (
    ConfigError,
    InvalidAddress,
    OptgateError,
    StoreError,
    StoreMissing,
)
from suppression.partners import UnknownPartner
from suppression.scope import InvalidScope

pytestmark = pytest.mark.pure

GATEWAY = Path(__file__).parent.parent / "gateway"


@pytest.mark.parametrize(
    ("error", "phase", "reply"),
    [
        (PathError("no >"), Phase.MAIL, "501 5.1.7 Bad sender address syntax: no >"),
        (PathError("no >"), Phase.RCPT, "501 5.1.3 Bad recipient address syntax: no >"),
        (InvalidAddress("x"), Phase.RCPT, "553 5.1.3 Recipient address not accepted: optgate"),
        (BadControlHeader("X-Optgate-Class 'x' is not", "X-Optgate-Class", "x"), Phase.DATA,
         "550 5.6.0 X-Optgate-Class 'x' is not"),
        (Deferred("limit"), Phase.DATA, "451 4.7.1 This request cannot be dealt with now"),
        (StoreError("down"), Phase.AUTH, "454 4.7.0 Temporary authentication failure"),
        (StoreError("down"), Phase.DATA, TRY_LATER),
        (OSError("disk full"), Phase.DATA, TRY_LATER),
        (InvalidAddress("x"), Phase.DATA, TRY_LATER),  # after RCPT it is nobody's input
        (PathError("x"), Phase.SESSION, TRY_LATER),
        (RuntimeError("a bug"), Phase.SESSION, TRY_LATER),
    ],
)  # fmt: skip
def test_smtp_replies(error: BaseException, phase: Phase, reply: str) -> None:
    assert smtp_reply(error, phase).startswith(reply)


def test_an_smtp_reply_quotes_no_message_it_does_not_name() -> None:
    secret = StoreError("cannot write jane@example.com")
    assert "jane" not in smtp_reply(secret, Phase.DATA)
    assert "jane" not in smtp_reply(secret, Phase.AUTH)
    assert smtp_reply(BadControlHeader("{0} {error}", "X-Optgate-Topic", "x"), Phase.DATA) == (
        "550 5.6.0 {0} {error}"  # the message as it is, never a template
    )


def test_every_smtp_reply_is_written_in_the_table_only() -> None:
    """No front end writes an error's reply itself (each row's reply up to the message)."""
    replies = {reply.partition("{error}")[0] for _, _, reply in SMTP_REPLIES}
    for path in GATEWAY.rglob("*.py"):
        if path.name == "errors.py":
            continue
        text = path.read_text(encoding="utf-8")
        for reply in replies:
            assert reply not in text, f"{path.relative_to(GATEWAY)} writes {reply!r}"


@pytest.mark.parametrize(
    ("error", "status", "kind", "detail"),
    [
        (InvalidToken("bad signature"), 400, "bad-link", False),
        (BadRequest("no valid list was chosen"), 400, "bad-request", True),
        (NotYours("stopped for another reason"), 400, "bad-request", True),
        (InvalidAddress("not an address"), 400, "bad-request", True),
        (InvalidScope("scope 'x' is not valid"), 400, "bad-request", True),
        (ConfigError("[web] listen"), 400, "bad-request", True),
        (UnknownPartner("no partner named 'x'"), 404, "not-found", True),
        (StoreError("locked"), 503, "store-unavailable", False),
        (StoreMissing("/x"), 503, "store-unavailable", False),
        (Malformed("not JSON"), 400, "malformed", True),
        (TooLarge("over"), 413, "too_large", True),
        (Unauthenticated("none"), 401, "unauthenticated", True),
        (Forged("no"), 403, "forged", True),
        (Stale("old"), 403, "stale", True),
        (Replayed("again"), 403, "replayed", True),
        (Unavailable("later"), 503, "unavailable", True),
        (Refused("another"), 400, "malformed", True),
        (RuntimeError("a bug at jane@example.com"), 500, "internal", False),
    ],
)
def test_http_answers(error: BaseException, status: int, kind: str, detail: bool) -> None:
    answer = http_answer(error)
    assert (answer.status, answer.kind, answer.detail) == (status, kind, detail)
    assert answer.title


def test_the_frameworks_own_statuses() -> None:
    assert http_status(404, "Not Found").kind == "not-found"
    assert http_status(405, "Method Not Allowed").kind == "method-not-allowed"
    assert http_status(413, "Request Entity Too Large").kind == "too-large"
    other = http_status(418, "I'm a teapot")
    assert (other.status, other.kind, other.title, other.detail) == (
        418,
        "http-error",
        "I'm a teapot",
        True,
    )


def test_an_error_class_is_answered_by_its_own_row_before_a_base_class_row() -> None:
    """A row never hides a later, narrower one."""
    for table in (
        [kind for kind, _ in HTTP_ANSWERS],
        [kind for kind, _ in EXIT_CODES],
        [kind for kind, phase, _ in SMTP_REPLIES if phase is None],
    ):
        for n, kind in enumerate(table):
            assert not any(issubclass(kind, earlier) for earlier in table[:n]), kind


@pytest.mark.parametrize(
    ("error", "status", "says"),
    [
        (ConfigError("[smtp] listen: 'x' is not host:port"), 2, "[smtp] listen: 'x' is not"),
        (StoreMissing("/var/lib/optgate/optgate.db"), 2, "no optgate store at /var/lib"),
        (InvalidScope("scope 'x' is not valid"), 2, "scope 'x' is not valid"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (BrokenPipeError(), 141, None),
    ],
)
def test_exit_codes(error: BaseException, status: int, says: str | None) -> None:
    assert isinstance(error, EXITING)
    ending = exit_for(error)
    assert ending.status == status
    if says is None:
        assert ending.says is None
    else:
        assert ending.says is not None
        assert ending.says.format(error=error).startswith(says)


def test_a_bug_is_no_exit_code_but_a_traceback() -> None:
    assert not isinstance(RuntimeError("a bug"), EXITING)
    assert issubclass(OptgateError, EXITING)


def test_the_cli_ends_by_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main as cli

    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nlisten = 25\n", encoding="utf-8")
    assert cli.main(["suppress", "check", "a@example.com", "--config", str(bad)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"optgate: \[smtp\] listen: .*", line), line
