"""Ingest sources on real files: mbox and Maildir built from the shared corpus."""

from __future__ import annotations

import mailbox
import os
import pwd
import stat
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.inbound.sources import (
    Maildir,
    Mbox,
    MessageError,
    SourceError,
    mark_status,
    open_local,
)
from tests.support import corpus

pytestmark = [pytest.mark.pure, corpus.needed]


def corpus_sample() -> list[bytes]:
    """Bounces, ARF reports and auto-replies, LF and CRLF, as delivered (no From_ line)."""
    paths = [
        *corpus.files(corpus.SISIMAI, "maildir-bsd/*.eml")[:40:4],  # arf-*, then MTA bounces
        *corpus.files(corpus.SISIMAI, "maildir-bsd/rfc3464-0*.eml")[:4],
        *corpus.files(corpus.SISIMAI, "maildir-dos/*.eml")[:3],  # CRLF
        *corpus.files(corpus.SISIMAI, "not-bounce/*.eml"),  # auto-replies
    ]
    assert len(paths) >= 18
    return [corpus.delivered(p) for p in paths]


def mangled(raw: bytes) -> bytes:
    """What an mbox stores for ``raw`` (mboxo quoting of body From_ lines)."""
    return raw.replace(b"\nFrom ", b"\n>From ")


def make_mbox(path: Path, messages: list[bytes]) -> None:
    box = mailbox.mbox(path)
    for raw in messages:
        box.add(raw)
    box.close()


def test_mbox_lists_reads_and_marks(tmp_path: Path) -> None:
    messages = corpus_sample()
    path = tmp_path / "inbound.mbox"
    make_mbox(path, messages)
    source = open_local(path)
    assert isinstance(source, Mbox)
    pending = list(source.pending())
    assert [source.read(p.key) for p in pending] == [mangled(m) for m in messages]
    assert [p.size for p in pending] == [len(mangled(m)) for m in messages]
    for p in pending[::2]:
        source.mark(p.key)
    source.close()

    again = open_local(path)
    left = list(again.pending())
    assert [again.read(p.key) for p in left] == [mangled(m) for m in messages[1::2]]
    for p in left:
        again.mark(p.key)
    again.close()

    assert list(open_local(path).pending()) == []
    stored = [m.as_bytes() for m in mailbox.mbox(path)]
    assert len(stored) == len(messages)
    box = mailbox.mbox(path)
    for key, raw in zip(box.iterkeys(), messages, strict=True):
        body = box.get_bytes(key)
        assert body.count(b"Status: RO") == 1
        # the mark is the only change, byte for byte (line endings included)
        assert body.replace(b"Status: RO\r\n", b"").replace(b"Status: RO\n", b"") == mangled(raw)


def test_mbox_marking_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "inbound.mbox"
    make_mbox(path, corpus_sample()[:3])
    source = open_local(path)
    for p in source.pending():
        source.mark(p.key)
    source.close()
    before = path.read_bytes()
    idle = open_local(path)
    assert list(idle.pending()) == []
    idle.close()
    assert path.read_bytes() == before


@pytest.mark.root
def test_mbox_rewrite_keeps_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "unsubscribe"
    make_mbox(path, corpus_sample()[:2])
    mail_user = pwd.getpwnam("nobody")
    os.chown(path, mail_user.pw_uid, mail_user.pw_gid)
    path.chmod(0o660)
    source = open_local(path)
    for p in source.pending():
        source.mark(p.key)
    source.close()
    info = path.stat()
    assert b"Status: RO" in path.read_bytes()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        mail_user.pw_uid,
        mail_user.pw_gid,
        0o660,
    )


def test_status_header_keeps_existing_flags() -> None:
    assert mark_status(b"Subject: a\nStatus: O\n\nbody\n") == b"Subject: a\nStatus: RO\n\nbody\n"
    assert mark_status(b"Subject: a\r\n\r\nStatus: O\r\n") == (
        b"Subject: a\r\nStatus: RO\r\n\r\nStatus: O\r\n"
    )
    assert mark_status(b"From x\nSubject: a\n") == b"From x\nSubject: a\nStatus: RO\n"


def test_mbox_read_by_a_mail_client_counts_as_processed(tmp_path: Path) -> None:
    path = tmp_path / "inbound.mbox"
    first, second, third = corpus_sample()[:3]
    make_mbox(path, [b"Status: RO\n" + first, b"Status: O\n" + second, third])
    source = open_local(path)
    assert [p.key for p in source.pending()] == ["1", "2"]
    source.close()


def test_locked_mbox_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inbound.mbox"
    make_mbox(path, corpus_sample()[:1])
    holder = mailbox.mbox(path)
    holder.lock()
    try:
        with pytest.raises(SourceError, match="locked by another program"):
            open_local(path)
    finally:
        holder.unlock()
    open_local(path).close()


@pytest.mark.corpus
def test_big_mbox_is_listed_without_loading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.mbox"
    attachment = b"QUJD" * 19 + b"\n"  # an 80-byte base64 line
    big = b"Subject: big\nContent-Transfer-Encoding: base64\n\n" + attachment * 200_000
    make_mbox(path, [*corpus_sample()[:2], big, big, big, *corpus_sample()[2:4]])
    assert path.stat().st_size > 45_000_000
    tracemalloc.start()
    try:
        source = open_local(path)
        sizes = [p.size for p in source.pending()]
        source.close()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes[2:5] == [len(big)] * 3
    assert peak < 2_000_000


def make_maildir(path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)


def test_maildir_unseen_messages_and_the_seen_flag(tmp_path: Path) -> None:
    messages = corpus_sample()[:6]
    path = tmp_path / "Maildir"
    make_maildir(path)
    names = [f"17000000{i:02d}.M{i}P1.host" for i in range(6)]
    for name, raw in zip(names[:3], messages[:3], strict=True):
        (path / "new" / name).write_bytes(raw)
    (path / "cur" / f"{names[3]}:2,F").write_bytes(messages[3])  # flagged, not seen
    (path / "cur" / f"{names[4]}:2,S").write_bytes(messages[4])  # read already
    (path / "cur" / f"{names[5]}:2,").write_bytes(messages[5])  # opened, not read
    (path / "new" / ".hidden").write_bytes(b"not a message")

    source = open_local(path)
    assert isinstance(source, Maildir)
    pending = list(source.pending())
    assert [p.key for p in pending] == [
        f"new/{names[0]}",
        f"new/{names[1]}",
        f"new/{names[2]}",
        f"cur/{names[3]}:2,F",
        f"cur/{names[5]}:2,",
    ]
    wanted = [*messages[:4], messages[5]]
    assert [source.read(p.key) for p in pending] == wanted
    assert [p.size for p in pending] == [len(m) for m in wanted]
    for p in pending:
        source.mark(p.key)
    source.close()

    assert sorted(p.name for p in (path / "new").iterdir()) == [".hidden"]
    assert sorted(p.name for p in (path / "cur").iterdir()) == sorted(
        [f"{names[i]}:2,S" for i in (0, 1, 2, 4, 5)] + [f"{names[3]}:2,FS"]
    )
    assert (path / "cur" / f"{names[3]}:2,FS").read_bytes() == messages[3]
    assert list(open_local(path).pending()) == []


def test_maildir_message_taken_by_another_client(tmp_path: Path) -> None:
    path = tmp_path / "Maildir"
    make_maildir(path)
    (path / "new" / "1.a.host").write_bytes(corpus_sample()[0])
    source = open_local(path)
    [pending] = source.pending()
    (path / "new" / "1.a.host").unlink()
    with pytest.raises(MessageError, match=r"cannot read new/1\.a\.host"):
        source.read(pending.key)
    with pytest.raises(MessageError, match=r"cannot mark new/1\.a\.host"):
        source.mark(pending.key)


def test_maildir_gone_while_open(tmp_path: Path) -> None:
    path = tmp_path / "Maildir"
    make_maildir(path)
    source = open_local(path)
    (path / "new").rmdir()
    (path / "new").write_bytes(b"")
    with pytest.raises(SourceError, match=r"cannot list .*/new: Not a directory"):
        list(source.pending())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "cannot read .*: No such file or directory"),
        (lambda p: p.mkdir(), "is a directory but not a Maildir \\(no cur/, new/, tmp/\\)"),
        (lambda p: p.write_bytes(b"Subject: one message\n\nhi\n"), "is not an mbox file"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n"), "is not an mbox file"),
    ],
    ids=["missing", "plain-directory", "single-message", "binary"],
)
def test_bad_local_sources(tmp_path: Path, make: Callable[[Path], object], message: str) -> None:
    path = tmp_path / "source"
    make(path)
    with pytest.raises(SourceError, match=message):
        open_local(path)


def test_empty_mbox_has_nothing_pending(tmp_path: Path) -> None:
    path = tmp_path / "empty.mbox"
    path.write_bytes(b"")
    source = open_local(path)
    assert list(source.pending()) == []
    source.close()
