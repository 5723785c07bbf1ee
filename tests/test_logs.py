"""Log lines name nobody: recipients and sender-controlled values as keyed digests, the key
kept in the key file, other libraries' lines through the same processors."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.cli.main import main
from gateway.keys import LOG_KEY, load_keys, load_log_key
from gateway.runtime import logs
from suppression.errors import ConfigError

pytestmark = pytest.mark.pure

ADDRESS = "jane.doe@example.com"
IDENTITY = hashlib.sha256(ADDRESS.encode()).hexdigest()


@pytest.fixture
def production_logging() -> Iterator[None]:
    """The production processors, JSON lines to stdout, for the test's duration."""
    logs.use_key(b"k" * 32)
    logs.configure(cache=False)
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = [
        h for h in logging.getLogger().handlers if type(h).__name__ != "_Stdout"
    ]


@pytest.mark.usefixtures("production_logging")
def test_recipients_and_sender_values_are_keyed_digests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = structlog.get_logger("test")
    log.info("one", rcpt=IDENTITY[:16], message_id=f"<{ADDRESS}>", value="Jane Doe")
    log.info("two", rcpt=IDENTITY, mail_from=ADDRESS)
    log.info("three", problem=f"no mailbox 'x.{ADDRESS}' here", parts=[ADDRESS, "text/plain"])
    text = capsys.readouterr().out
    lines = [json.loads(line) for line in text.splitlines()]
    one, two, three = lines
    assert one["rcpt"] == two["rcpt"] == logs.recipient_id(IDENTITY)  # prefix or full: one id
    assert one["message_id"] == logs.digest(f"<{ADDRESS}>")
    assert one["value"] == logs.digest("Jane Doe")
    assert two["mail_from"] == logs.digest(ADDRESS)
    assert three["problem"] == f"no mailbox '<{logs.digest('x.' + ADDRESS)}>' here"
    assert three["parts"] == [f"<{logs.digest(ADDRESS)}>", "text/plain"]
    assert ADDRESS not in text
    assert IDENTITY[:12] not in text
    assert "Jane Doe" not in text
    logs.use_key(b"another key, another digest")
    assert logs.recipient_id(IDENTITY) != one["rcpt"]
    assert len(logs.recipient_id(IDENTITY)) == 16


@pytest.mark.usefixtures("production_logging")
def test_other_libraries_lines_go_through_the_same_processors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # aiosmtpd's warning for a command it does not know: a hostile client chooses the word
    logging.getLogger("mail.log").warning("%r unrecognised: %s", ("127.0.0.1", 4242), ADDRESS)
    logging.getLogger("mail.log").info("%r recip: %s", ("127.0.0.1", 4242), ADDRESS)  # off
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["level"] == "warning"
    assert line["logger"] == "mail.log"
    assert ADDRESS not in str(line)
    assert logs.digest(ADDRESS) in str(line["event"])


def test_the_log_key_is_a_line_of_the_key_file_added_once(tmp_path: Path) -> None:
    path = tmp_path / "optgate.key"
    tokens = load_keys(path, create=True)
    with pytest.raises(ConfigError, match="no log key yet"):
        load_log_key(path)  # only serve adds it
    key = load_log_key(path, create=True)
    assert load_log_key(path, create=True) == key
    assert load_log_key(path) == key
    assert len(key) == 32
    assert path.read_text().count(LOG_KEY) == 1
    assert load_keys(path) == tokens  # the log line is no token key
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_key_file_without_a_final_newline_keeps_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "optgate.key"
    path.write_text("ab" * 32)
    load_log_key(path, create=True)
    assert load_keys(path) == [bytes.fromhex("ab" * 32)]


def test_the_first_log_line_wins_and_a_bad_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "optgate.key"
    path.write_text(f"{'ab' * 32}\n{LOG_KEY}{'01' * 32}\n{LOG_KEY}{'02' * 32}\n")
    assert load_log_key(path) == bytes.fromhex("01" * 32)
    path.write_text(f"{'ab' * 32}\n{LOG_KEY}nothex\n")
    with pytest.raises(ConfigError, match="log key"):
        load_log_key(path)
    path.write_text(f"{'ab' * 32}\n{LOG_KEY}0102\n")
    with pytest.raises(ConfigError, match="16 bytes"):
        load_log_key(path)


def test_log_id_prints_what_the_log_lines_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "optgate.key"
    load_keys(path, create=True)
    load_log_key(path, create=True)  # as optgate serve's first start did
    capsys.readouterr()
    monkeypatch.setenv("OPTGATE_UNSUBSCRIBE_KEY_FILE", str(path))
    assert main(["log-id", " Jane.Doe@Example.com", "--message-id"]) == 0
    assert main(["log-id", "Jane.Doe@Example.com"]) == 0
    raw, rcpt = capsys.readouterr().out.splitlines()
    logs.use_key(load_log_key(path))
    assert rcpt == f"{logs.recipient_id(IDENTITY)}  Jane.Doe@Example.com"
    assert raw.split()[0] == logs.digest(" Jane.Doe@Example.com")
