"""The IMAP source against a real, private Dovecot (tests/support/dovecot.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.inbound.imap import KEYWORD, Imap, parse_url
from gateway.inbound.sources import SourceError
from tests.support.dovecot import Dovecot, private_dovecot
from tests.support.postfix import free_port
from tests.support.tiers import needs
from tests.test_ingest_sources import corpus_sample

pytestmark = pytest.mark.pure  # the tests of the private Dovecot get root and sockets from it
PROCESSED = {"\\Seen", KEYWORD}


@pytest.fixture(scope="module")
@needs("root", "sockets")
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot() as server:
        yield server


@pytest.fixture
def trusted(dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> Dovecot:
    """The server's self-signed certificate trusted the way a user would (SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.cert))
    return dovecot


@pytest.fixture
def folder(dovecot: Dovecot, request: pytest.FixtureRequest) -> str:
    """A fresh folder for this test, holding five corpus messages."""
    name: str = request.node.name.replace("[", "-").strip("]")
    dovecot.create(name)
    dovecot.deliver(corpus_sample()[:5], name)
    return name


def source(server: Dovecot, folder: str, *, tls: bool = True, move_to: str | None = None) -> Imap:
    return Imap(parse_url(server.url(folder, tls=tls)), server.password, move_to)


@pytest.mark.parametrize("tls", [True, False], ids=["imaps", "starttls"])
def test_read_and_mark(trusted: Dovecot, folder: str, tls: bool) -> None:
    imap = source(trusted, folder, tls=tls)
    pending = list(imap.pending())
    assert [p.key for p in pending] == ["1", "2", "3", "4", "5"]
    messages = corpus_sample()[:5]
    # Dovecot stores what it is given; sizes are RFC822.SIZE (CRLF line ends)
    assert [imap.read(p.key).replace(b"\r\n", b"\n") for p in pending] == [
        m.replace(b"\r\n", b"\n") for m in messages
    ]
    assert [p.size for p in pending] == [len(imap.read(p.key)) for p in pending]
    assert all(not flags for flags in trusted.flags(folder).values())  # reading is a peek
    imap.mark("2")
    imap.mark("4")
    imap.close()
    flags = trusted.flags(folder)
    assert flags == {1: set(), 2: PROCESSED, 3: set(), 4: PROCESSED, 5: set()}

    again = source(trusted, folder, tls=tls)
    assert [p.key for p in again.pending()] == ["1", "3", "5"]
    for p in again.pending():
        again.mark(p.key)
    again.close()
    idle = source(trusted, folder, tls=tls)
    assert list(idle.pending()) == []
    idle.close()
    assert all(f == PROCESSED for f in trusted.flags(folder).values())


def test_a_folder_name_with_a_space(trusted: Dovecot) -> None:
    trusted.create('"Bounces In"')
    trusted.deliver(corpus_sample()[:1], '"Bounces In"')
    imap = Imap(parse_url(trusted.url("Bounces%20In")), trusted.password, None)
    [pending] = imap.pending()
    imap.mark(pending.key)
    imap.close()
    assert trusted.flags('"Bounces In"') == {1: PROCESSED}


def test_a_message_read_by_a_person_is_still_processed(trusted: Dovecot, folder: str) -> None:
    with trusted.client() as conn:
        conn.select(folder)
        typ, _data = conn.uid("STORE", "1:2", "+FLAGS", "(\\Seen)")
        assert typ == "OK"
    imap = source(trusted, folder)
    assert [p.key for p in imap.pending()] == ["1", "2", "3", "4", "5"]
    imap.close()


def test_move_to_a_folder(trusted: Dovecot, folder: str) -> None:
    done = f"{folder}-done"
    trusted.create(done)
    imap = source(trusted, folder, move_to=done)
    for p in list(imap.pending())[:3]:
        imap.mark(p.key)
    imap.close()
    assert sorted(trusted.flags(folder)) == [4, 5]
    assert list(trusted.flags(done).values()) == [PROCESSED] * 3
    again = source(trusted, folder, move_to=done)
    assert [p.key for p in again.pending()] == ["4", "5"]
    again.close()


def test_move_to_a_missing_folder_is_refused(trusted: Dovecot, folder: str) -> None:
    with pytest.raises(SourceError, match="cannot use folder 'Nowhere' for --move-to"):
        source(trusted, folder, move_to="Nowhere")
    assert all(not flags for flags in trusted.flags(folder).values())


def test_wrong_password(trusted: Dovecot) -> None:
    url = parse_url(trusted.url(tls=True))
    with pytest.raises(
        SourceError, match=r"IMAP login to 127\.0\.0\.1:\d+ failed: .*Authentication"
    ):
        Imap(url, "not the password", None)


def test_missing_folder(trusted: Dovecot) -> None:
    with pytest.raises(SourceError, match="cannot open folder 'Nope'"):
        source(trusted, "Nope")


def test_untrusted_certificate_is_refused(dovecot: Dovecot, tmp_path: Path) -> None:
    for tls in (True, False):
        url = parse_url(dovecot.url(tls=tls))
        with pytest.raises(SourceError, match=r"TLS with 127\.0\.0\.1:\d+ failed: .*certificate"):
            Imap(url, dovecot.password, None)


@pytest.mark.sockets
def test_unreachable_server() -> None:
    url = parse_url(f"imaps://someone@127.0.0.1:{free_port()}/INBOX")
    with pytest.raises(
        SourceError, match=r"cannot reach IMAP server 127\.0\.0\.1:\d+: Connection refused"
    ):
        Imap(url, "x", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("imap://user:secret@host/INBOX", "the URL holds a password"),
        ("pop3://user@host/INBOX", "unsupported URL scheme 'pop3'"),
        ("imap://host/INBOX", "the URL names no user"),
        ("imap://user@:143/INBOX", "the URL names no host"),
        ("imap://user@host:99999/INBOX", "port is not a number"),
        ("imap://user@host/INBOX?x=1", "query or #fragment"),
        ("imap://user@host/Entw%C3%BCrfe", "non-ASCII folder names"),
    ],
)
def test_bad_urls(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_url(text)


def test_url_parts() -> None:
    url = parse_url("imap://inbound%40example.com@mail.example.com/Bounces%20In")
    assert (url.user, url.host, url.port, url.folder) == (
        "inbound@example.com",
        "mail.example.com",
        143,
        "Bounces In",
    )
    assert url.shown == "imap://mail.example.com:143/Bounces In"
    assert parse_url("imaps://u@h").port == 993
    assert parse_url("imaps://u@h").folder == "INBOX"
