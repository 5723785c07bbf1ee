"""`optgate ingest` end to end: corpus mail in an mbox, a Maildir and a real IMAP server."""

from __future__ import annotations

import asyncio
import hashlib
import mailbox
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from gateway.cli.ingest import Ingest, arrived
from gateway.inbound.classify import classify
from gateway.inbound.imap import KEYWORD, Imap, parse_url
from gateway.inbound.mailed_optouts import OptOuts
from gateway.keys import load_keys
from gateway.runtime.stores import open_configured
from gateway.tokens import TokenSigner
from suppression.address import normalize
from suppression.model import Send, now
from suppression.opening import open_store
from tests import test_cli
from tests.support import corpus
from tests.support.dovecot import Dovecot, private_dovecot
from tests.support.keys import AUDIT_KEY
from tests.support.postfix import free_port
from tests.support.smtp import Sink, gateway_config
from tests.support.tiers import needs
from tests.test_cli import Run, count, one_line_error, reasons

db, optgate = test_cli.db, test_cli.optgate  # the fixtures: a fresh store, the CLI in-process
pytestmark = [pytest.mark.pure, corpus.needed]

# sisimai's real bounces and reports, with the recipient each one is about
HARD_BOUNCES = {
    "maildir-bsd/lhost-amavis-01.eml": "neko@example.co.jp",
    "maildir-bsd/lhost-courier-01.eml": "kijitora@example.co.jp",
    "maildir-bsd/lhost-exchange2007-06.eml": "transports@agglo-saumur.fr",
    "maildir-bsd/lhost-postfix-31.eml": "kijitora@gmail.com",
    "maildir-bsd/lhost-postfix-33.eml": "userunknown@libsisimai.org",
    "maildir-bsd/lhost-sendgrid-02.eml": "this-local-part-does-not-exist-on-the-server@example.jp",
    "maildir-bsd/lhost-sendmail-01.eml": "userunknown@bouncehammer.jp",
    "maildir-bsd/rhost-google-02.eml": "neko-nyaan@example.org",
    "maildir-bsd/rhost-zoho-01.eml": "kijitora@zoho.example.com",
    "maildir-dos/lhost-postfix-01.eml": "kijitora@example.org",  # CRLF
}
SOFT_BOUNCE = "maildir-bsd/lhost-messagingserver-12.eml"  # 4.2.2 mailbox full: counted only
OPT_OUT = ("maildir-bsd/arf-12.eml", "user@example.com")  # ARF Feedback-Type: opt-out
# ARF abuse with the recipient redacted and no token: nobody to suppress, counted as ignored
ABUSE = "maildir-bsd/arf-01.eml"
NOT_BOUNCES = ("not-bounce/is-not-bounce-01.eml", "not-bounce/is-not-bounce-02.eml")
GARBAGE = b"\x00\xff\xfe not a message at all \x80\x81\n\n\xff"

# the opt-out report is held: a third party's word suppresses nobody until the address
# confirms by the link mailed to it (issue 14)
EXPECTED = {address: "bounced" for address in HARD_BOUNCES.values()}
EVERY_ADDRESS = [*HARD_BOUNCES.values(), OPT_OUT[1]]


def sisimai(name: str) -> bytes:
    return corpus.delivered(f"{corpus.SISIMAI}/{name}")


def messages() -> list[bytes]:
    """16 messages: 10 hard bounces, a soft bounce, two ARF reports, two auto-replies, garbage."""
    names = [*HARD_BOUNCES, SOFT_BOUNCE, OPT_OUT[0], ABUSE, *NOT_BOUNCES]
    return [sisimai(name) for name in names] + [GARBAGE]


SUMMARY = (
    "read 16, unsubscribes 1, hard bounces 10, soft bounces 1, complaints 0, ignored 4, errors 0"
)


def summary_line(out: str) -> str:
    """The last line of a run: SOURCE: [dry run...] counts."""
    return out.strip().splitlines()[-1]


def no_addresses(*texts: str) -> None:
    for text in texts:
        for address in EVERY_ADDRESS:
            assert address not in text


def make_mbox(path: Path, content: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    for raw in content:
        box.add(raw)
    box.close()
    return path


async def mailed_everyone(url: str) -> None:
    """The send ledger of a store that mailed every recipient the messages are about
    (a report without a token counts only for an address optgate mailed)."""
    found = {f.recipient for raw in messages() for f in classify(raw).findings if f.recipient}
    store = await open_store(url, audit_key=AUDIT_KEY)
    try:
        sends = [Send("m", normalize(r).sha256, "news", "marketing", now()) for r in found]
        await store.record_sends(sends)
    finally:
        await store.close()


@pytest.fixture
@needs("sockets")
def hop(db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    """The next hop the confirmation links go through: a recording sink on its own thread."""
    recorder = Sink()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    monkeypatch.setenv("OPTGATE_RELAY_NEXT_HOP", f"127.0.0.1:{controller.port}")
    try:
        yield recorder
    finally:
        controller.stop()


@pytest.fixture
def keyed(db: Path, hop: Sink, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The token key file made beforehand and a send ledger, as `optgate serve` would have."""
    key = db.parent / "optgate.key"
    key.write_text("ab" * 32 + "\n")
    monkeypatch.setenv("OPTGATE_UNSUBSCRIBE_KEY_FILE", str(key))
    audit_key = db.parent / "optgate-audit.key"
    audit_key.write_text(AUDIT_KEY.hex() + "\n")
    monkeypatch.setenv("OPTGATE_STORE_AUDIT_KEY_FILE", str(audit_key))
    asyncio.run(mailed_everyone(f"sqlite:///{db}"))
    return db


def linked(hop: Sink) -> list[str]:
    """Whom the confirmation links went to."""
    return [m.rcpt_tos[0] for m in hop.messages]


def test_mbox_of_corpus_mail(
    optgate: Run, keyed: Path, hop: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_mbox(tmp_path / "inbound.mbox", messages())
    original = path.read_bytes()
    kept = tmp_path / "kept"
    kept.mkdir()
    monkeypatch.setenv("OPTGATE_INBOUND_KEEP_RAW", str(kept))

    dry = optgate("ingest", str(path), "--dry-run")
    assert dry.code == 0, dry
    assert summary_line(dry.out) == f"mbox inbound.mbox: dry run, nothing changed: {SUMMARY} " + (
        "(new suppressions 10, held for a confirmation link 1, forged tokens 0)"
    )
    assert linked(hop) == []  # a dry run mails nothing
    assert path.read_bytes() == original
    assert reasons(optgate) == {}
    assert count(keyed, "audit") == 0
    assert list(kept.iterdir()) == []

    real = optgate("ingest", str(path))
    assert real.code == 0, real
    assert summary_line(real.out) == (
        f"mbox inbound.mbox: {SUMMARY} (new suppressions 10, held for a confirmation link 1, "
        "forged tokens 0)"
    )
    assert linked(hop) == [OPT_OUT[1]]
    no_addresses(dry.out, dry.err, real.out, real.err)
    assert reasons(optgate) == EXPECTED
    copies = sorted(kept.iterdir())
    assert len(copies) == 16
    for copy in copies:  # each message read, whole, under its digest, owner-only
        assert f"{hashlib.sha256(copy.read_bytes()).hexdigest()}.eml" == copy.name
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    box = mailbox.mbox(path)
    assert [box.get_bytes(key).count(b"\nStatus: RO") for key in box.iterkeys()] == [1] * 16
    audit = count(keyed, "audit")

    again = optgate("ingest", str(path))
    assert again.code == 0, again
    assert summary_line(again.out) == (
        "mbox inbound.mbox: read 0, unsubscribes 0, hard bounces 0, soft bounces 0, "
        "complaints 0, ignored 0, errors 0 (new suppressions 0, held for a confirmation link 0, "
        "forged tokens 0)"
    )
    assert linked(hop) == [OPT_OUT[1]]
    assert count(keyed, "audit") == audit
    assert reasons(optgate) == EXPECTED


def test_a_held_opt_out_waits_for_the_next_hop(
    optgate: Run, keyed: Path, hop: Sink, tmp_path: Path
) -> None:
    path = make_mbox(tmp_path / "optout.mbox", [sisimai(OPT_OUT[0])])
    hop.fail_next.append("451 4.3.0 Try again later")
    first = optgate("ingest", str(path))
    assert first.code == 1, first  # the link could not go out: left unmarked for the next run
    assert "errors 1 " in summary_line(first.out)
    assert [m.get("Status") for m in mailbox.mbox(path)] == [None]
    assert linked(hop) == []
    second = optgate("ingest", str(path))
    assert second.code == 0, second
    assert "held for a confirmation link 1," in summary_line(second.out)
    assert linked(hop) == [OPT_OUT[1]]
    assert [m.get("Status") for m in mailbox.mbox(path)] == ["RO"]
    assert reasons(optgate) == {}  # held, not suppressed


def maildir(path: Path, content: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    for number, raw in enumerate(content):
        (path / "new" / f"{1700000000 + number}.M{number}P1.mx").write_bytes(raw)
    return path


def listing(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def test_maildir_of_corpus_mail(optgate: Run, keyed: Path, tmp_path: Path) -> None:
    path = maildir(tmp_path / "Maildir", messages())
    before = listing(path)

    dry = optgate("ingest", str(path), "--dry-run")
    assert dry.code == 0, dry
    assert SUMMARY in summary_line(dry.out)
    assert listing(path) == before
    assert reasons(optgate) == {}

    real = optgate("ingest", str(path))
    assert real.code == 0, real
    assert summary_line(real.out).startswith(f"Maildir Maildir: {SUMMARY}")
    assert reasons(optgate) == EXPECTED
    assert listing(path) == sorted(f"cur/{name.split('/')[1]}:2,S" for name in before)

    again = optgate("ingest", str(path))
    assert "read 0," in summary_line(again.out)
    assert listing(path) == sorted(f"cur/{name.split('/')[1]}:2,S" for name in before)


def test_limit_and_a_message_too_big(
    optgate: Run,
    keyed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = sisimai(NOT_BOUNCES[0]) + b"x" * 80_000
    path = make_mbox(tmp_path / "inbound.mbox", [*messages()[:3], big, *messages()[3:5]])
    monkeypatch.setenv("OPTGATE_INBOUND_MAX_MESSAGE_SIZE", "50000")

    first = optgate("ingest", str(path), "--limit", "2")
    assert first.code == 0, first
    assert "read 2, unsubscribes 0, hard bounces 2," in summary_line(first.out)

    rest = optgate("ingest", str(path))
    assert rest.code == 1, rest  # a message failed: it stays unmarked for a later run
    assert summary_line(rest.out).startswith(
        "mbox inbound.mbox: read 4, unsubscribes 0, hard bounces 3, soft bounces 0, "
        "complaints 0, ignored 0, errors 1 "
    )
    assert '"event": "ingest_too_big"' in rest.out
    assert [m.get("Status") for m in mailbox.mbox(path)] == ["RO"] * 3 + [None] + ["RO"] * 2
    assert len(reasons(optgate)) == 5

    monkeypatch.delenv("OPTGATE_INBOUND_MAX_MESSAGE_SIZE")
    last = optgate("ingest", str(path))
    assert last.code == 0, last
    assert "read 1, unsubscribes 0, hard bounces 0, soft bounces 0, complaints 0, ignored 1," in (
        summary_line(last.out)
    )


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p: p, ("cannot read", "No such file or directory")),
        (lambda p: p.write_bytes(b"Subject: hi\n\nhello\n") and p, ("is not an mbox file",)),
        (lambda p: p.mkdir() or p, ("is a directory but not a Maildir",)),
    ],
    ids=["missing", "not-an-mbox", "not-a-maildir"],
)
def test_bad_local_source(
    optgate: Run,
    db: Path,
    tmp_path: Path,
    make: Callable[[Path], object],
    needles: tuple[str, ...],
) -> None:
    path = tmp_path / "source"
    make(path)
    result = optgate("ingest", str(path))
    assert result.code == 2
    one_line_error(result.err, *needles)
    assert count(db, "audit") == 0  # nothing was done


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["pop3://u@h/INBOX"], ("unsupported URL scheme 'pop3'",)),
        (["imap://u:pw@h/INBOX"], ("the URL holds a password", "--password-file")),
        (["imaps://u@h/INBOX"], ("needs --password-file FILE or --password-env VAR",)),
        (["imaps://u@h/INBOX", "--password-env", "OPTGATE_TEST_UNSET"], ("empty password",)),
        (["imaps://u@h/INBOX", "--password-file", "/nonexistent"], ("cannot read --password",)),
        (["MBOX", "--password-env", "X"], ("--password-env is for imap:// and imaps://",)),
        (["MBOX", "--move-to", "Done"], ("--move-to is for imap:// and imaps://",)),
        (["MBOX", "--limit", "0"], ("--limit must be at least 1",)),
    ],
)
def test_bad_options(
    optgate: Run,
    db: Path,
    tmp_path: Path,
    argv: list[str],
    needles: tuple[str, ...],
) -> None:
    mbox = make_mbox(tmp_path / "inbound.mbox", messages()[:1])
    result = optgate("ingest", *[str(mbox) if a == "MBOX" else a for a in argv])
    assert result.code == 2, result
    one_line_error(result.err, *needles)
    assert count(db, "audit") == 0
    assert "Status" not in next(iter(mailbox.mbox(mbox)))


# --- IMAP: a real Dovecot ----------------------------------------------------------


@pytest.fixture(scope="module")
@needs("root", "sockets")
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot() as server:
        yield server


@pytest.fixture
def imap(dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh folder of the corpus messages; the server's certificate trusted; its name."""
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.cert))
    monkeypatch.setenv("INGEST_PASSWORD", dovecot.password)
    folder: str = request.node.name
    dovecot.create(folder)
    dovecot.deliver(messages(), folder)
    return folder


def test_imap_with_the_password_from_the_environment(
    optgate: Run,
    keyed: Path,
    dovecot: Dovecot,
    imap: str,
) -> None:
    url = dovecot.url(imap, tls=True)
    dry = optgate("ingest", url, "--password-env", "INGEST_PASSWORD", "--dry-run")
    assert dry.code == 0, dry
    assert SUMMARY in summary_line(dry.out)
    assert summary_line(dry.out).startswith(f"imaps://127.0.0.1:{dovecot.imaps_port}/{imap}:")
    assert all(not flags for flags in dovecot.flags(imap).values())
    assert reasons(optgate) == {}

    real = optgate("ingest", url, "--password-env", "INGEST_PASSWORD")
    assert real.code == 0, real
    assert SUMMARY in summary_line(real.out)
    no_addresses(real.out, real.err)
    assert dovecot.user not in real.out + real.err
    assert reasons(optgate) == EXPECTED
    assert list(dovecot.flags(imap).values()) == [{"\\Seen", KEYWORD}] * 16

    again = optgate("ingest", url, "--password-env", "INGEST_PASSWORD")
    assert "read 0," in summary_line(again.out)


def test_imap_starttls_password_file_and_move(
    optgate: Run,
    keyed: Path,
    dovecot: Dovecot,
    imap: str,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "imap-password"
    secret.write_text(dovecot.password + "\n")
    dovecot.create(f"{imap}-done")
    argv = [dovecot.url(imap), "--password-file", str(secret), "--move-to", f"{imap}-done"]
    result = optgate("ingest", *argv)
    assert result.code == 0, result
    assert SUMMARY in summary_line(result.out)
    assert dovecot.flags(imap) == {}
    assert len(dovecot.flags(f"{imap}-done")) == 16
    assert reasons(optgate) == EXPECTED
    assert "read 0," in summary_line(optgate("ingest", *argv).out)


def test_imap_wrong_password(
    optgate: Run,
    db: Path,
    dovecot: Dovecot,
    imap: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST_PASSWORD", "wrong")
    result = optgate("ingest", dovecot.url(imap, tls=True), "--password-env", "INGEST_PASSWORD")
    assert result.code == 2
    one_line_error(result.err, "IMAP login to 127.0.0.1", "failed")
    assert "wrong" not in result.err
    assert all(not flags for flags in dovecot.flags(imap).values())
    assert count(db, "audit") == 0


@pytest.mark.sockets
def test_imap_server_unreachable(optgate: Run, db: Path, tmp_path: Path) -> None:
    result = optgate("ingest", f"imaps://u@127.0.0.1:{free_port()}/INBOX", "--password-env", "PATH")
    assert result.code == 2
    one_line_error(result.err, "cannot reach IMAP server 127.0.0.1:", "Connection refused")


async def test_imap_connection_lost(dovecot: Dovecot, imap: str, tmp_path: Path) -> None:
    config = gateway_config(tmp_path, free_port())
    await mailed_everyone(config.store.url)
    store = await open_configured(config, create=True)
    signer = TokenSigner(load_keys(Path(config.unsubscribe.key_file), create=True))
    optouts = OptOuts.from_config(config, store, None)
    try:
        source = Imap(parse_url(dovecot.url(imap, tls=True)), dovecot.password, None)
        done = await Ingest(source, store, config, signer, False, optouts).run(limit=3)
        assert (done.read, done.applied.hard_bounces, done.stopped) == (3, 3, None)
        dovecot.kick()
        lost = await Ingest(source, store, config, signer, False, optouts).run(limit=None)
        source.close()
    finally:
        await store.close()
    assert lost.read == 0
    assert lost.stopped is not None
    assert lost.stopped.startswith("lost the IMAP connection")
    assert sum(flags == {"\\Seen", KEYWORD} for flags in dovecot.flags(imap).values()) == 3


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Date: Tue, 03 Nov 2026 10:00:00 +0100\n", datetime(2026, 11, 3, 9, 0, tzinfo=UTC)),
        (b"Date: Sat, 01 Jan 2100 00:00:00 +0000\n", None),  # in the future: now
        (b"Date: yesterday-ish\n", None),
        (b"Date: Tue, 03 Nov 2026 10:00:00 -0000\n", None),  # no zone known: now
        (b"", None),
    ],
)
def test_a_message_counts_from_its_date(header: bytes, expected: datetime | None) -> None:
    before = datetime.now(UTC)
    when = arrived(header + b"Subject: soft bounce\n\nbody\n")
    if expected is None:
        assert before <= when <= datetime.now(UTC)
    else:
        assert when == expected
