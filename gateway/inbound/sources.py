"""Mailboxes `optgate ingest` reads: what is unprocessed, its bytes, and marking it processed.

A source lists the messages it has not marked yet (with their sizes, so a huge
one is skipped unread), reads one at a time (a 1 GB mbox is never loaded
whole), and marks a message once it has been applied, the way mail clients
mark mail read:

- mbox: a ``Status: RO`` header, as mutt and mailx write it; a message whose
  Status holds ``R`` counts as processed.  The file stays locked (dot-lock and
  ``fcntl`` lock, as the stdlib takes them) for the whole run; the marks are written
  at the end in one rewrite of the file (stdlib ``mailbox``), the other
  messages byte for byte, owner and mode kept.
- Maildir: the message moves from ``new/`` to ``cur/`` with the ``S`` (seen)
  flag in its info part; messages in ``new/``, and in ``cur/`` without ``S``,
  are unprocessed.  Python 3.11's ``mailbox.Maildir`` can set flags only by
  rewriting the message, so the rename is done here (it is the whole protocol).
- IMAP: gateway/inbound/imap.py.
"""

from __future__ import annotations

import contextlib
import mailbox
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from suppression.errors import OptgateError


class SourceError(OptgateError):
    """The source cannot be opened or read at all: the run stops."""


class MessageError(OptgateError):
    """One message cannot be read or marked: counted, and the run goes on."""


@dataclass(frozen=True, slots=True)
class Pending:
    """An unprocessed message: its key in the source and its size in bytes."""

    key: str
    size: int


class Source(Protocol):
    """A mailbox being ingested; every method blocks (callers use a thread)."""

    description: str  # for output: names the mailbox, never a user name

    def pending(self) -> Iterator[Pending]:
        """Unprocessed messages, oldest first."""

    def read(self, key: str) -> bytes:
        """The raw message; MessageError if it cannot be read."""

    def mark(self, key: str) -> None:
        """Mark the message processed; MessageError if that fails."""

    def close(self) -> None:
        """Make the marks durable and let go of the mailbox."""


_STATUS = re.compile(rb"^Status:[ \t]*([^\r\n]*)(\r?\n)", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def mark_status(message: bytes) -> bytes:
    """``message`` (with or without its From_ line) with R and O in its Status header."""
    end = _HEADER_END.search(message)
    head_end = end.start() if end else len(message.rstrip(b"\r\n"))
    found = _STATUS.search(message, 0, end.end() if end else len(message))
    if found:
        flags = b"RO" + bytes(c for c in found.group(1).strip() if c not in b"RO")
        return message[: found.start(1)] + flags + message[found.end(1) :]
    tail = end.group() if end else message[head_end:]
    newline = b"\r\n" if tail.startswith(b"\r\n") else b"\n"
    return message[:head_end] + newline + b"Status: RO" + message[head_end:]


class Mbox:
    """An mbox file, locked for the whole run; marks written at close."""

    def __init__(self, path: Path) -> None:
        self.description = f"mbox {path.name}"
        self._path = path
        self._owner = path.stat()
        self._box = mailbox.mbox(path, create=False)
        try:
            self._box.lock()
        except mailbox.ExternalClashError:
            self._box.close()
            raise SourceError(f"{path} is locked by another program; try again later") from None
        self._keys: dict[str, str] = {}  # ours -> the box's (typeshed says str, they are ints)
        self._marked: list[str] = []

    def pending(self) -> Iterator[Pending]:
        try:
            for key in self._box.iterkeys():
                status, size = self._peek(key)
                if b"R" not in status:
                    self._keys[str(key)] = key
                    yield Pending(str(key), size)
        except OSError as exc:
            raise SourceError(f"cannot read {self._path}: {exc.strerror}") from None

    def _peek(self, key: str) -> tuple[bytes, int]:
        """A message's Status flags and size, from its header alone."""
        status = b""
        with self._box.get_file(key) as handle:
            for line in handle:
                match = _STATUS.match(line)
                if match:
                    status = match.group(1)
                if not line.strip():
                    break
            handle.seek(0, os.SEEK_END)
            return status, handle.tell()

    def read(self, key: str) -> bytes:
        return self._box.get_bytes(self._keys[key])

    def mark(self, key: str) -> None:
        self._marked.append(key)

    def close(self) -> None:
        try:
            for key in map(self._keys.__getitem__, self._marked):
                self._box[key] = mark_status(self._box.get_bytes(key, from_=True))
            self._box.flush()
            self._keep_owner()
        finally:
            self._box.unlock()
            self._box.close()

    def _keep_owner(self) -> None:
        """A rewrite makes a new file: give it back to the mailbox's owner and group.

        Root can; another user can keep a group they belong to (``mail``), else it stays.
        """
        now = self._path.stat()
        if (now.st_uid, now.st_gid) != (self._owner.st_uid, self._owner.st_gid):
            with contextlib.suppress(PermissionError):
                os.chown(self._path, self._owner.st_uid, self._owner.st_gid)


_INFO = ":2,"


class Maildir:
    """A Maildir: unseen messages in new/ and cur/; marking sets the S flag."""

    def __init__(self, path: Path) -> None:
        self.description = f"Maildir {path.name}"
        self._path = path

    def pending(self) -> Iterator[Pending]:
        found: list[tuple[str, str]] = []
        for sub in ("new", "cur"):
            try:
                with os.scandir(self._path / sub) as entries:
                    names = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
            except OSError as exc:
                raise SourceError(f"cannot list {self._path / sub}: {exc.strerror}") from None
            for name in names:
                flags = name.partition(_INFO)[2] if sub == "cur" else ""
                if "S" not in flags:
                    found.append((name.partition(_INFO)[0], f"{sub}/{name}"))
        for _unique, key in sorted(found):
            try:
                size = (self._path / key).stat().st_size
            except FileNotFoundError:
                continue  # another client took it meanwhile
            yield Pending(key, size)

    def read(self, key: str) -> bytes:
        try:
            return (self._path / key).read_bytes()
        except OSError as exc:
            raise MessageError(f"cannot read {key}: {exc.strerror}") from None

    def mark(self, key: str) -> None:
        unique, _sep, flags = key.split("/", 1)[1].partition(_INFO)
        seen = "".join(sorted(set(flags) | {"S"}))
        try:
            os.rename(self._path / key, self._path / "cur" / f"{unique}{_INFO}{seen}")
        except OSError as exc:
            raise MessageError(f"cannot mark {key}: {exc.strerror}") from None

    def close(self) -> None:
        """Nothing to release: every mark is a rename, durable at once."""


def open_local(path: Path) -> Source:
    """The mbox file or Maildir at ``path``; SourceError naming what is wrong."""
    if path.is_dir():
        missing = [sub for sub in ("cur", "new", "tmp") if not (path / sub).is_dir()]
        if missing:
            absent = ", ".join(f"{sub}/" for sub in missing)
            raise SourceError(f"{path} is a directory but not a Maildir (no {absent})")
        return Maildir(path)
    try:
        with path.open("rb") as handle:
            start = handle.read(5)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    if start not in (b"", b"From "):
        raise SourceError(f"{path} is not an mbox file (it does not start with 'From ')")
    try:
        return Mbox(path)
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None
