"""An IMAP folder as an ingest source (stdlib imaplib; callers run it in a thread).

``imaps://user@host[:993]/FOLDER`` speaks TLS from the start;
``imap://user@host[:143]/FOLDER`` upgrades with STARTTLS when the server offers
it, and logs in without TLS only to a loopback address (Dovecot's own rule
for plaintext logins). Certificates are verified against the system CAs
(``SSL_CERT_FILE`` names another bundle). The password comes from the caller
(a file or an environment variable), never from the URL.

Unprocessed messages are those without the ``$OptgateProcessed`` keyword (or,
on a server that keeps no custom keywords, without ``\\Seen``); marking sets
``\\Seen`` and the keyword, then moves the message with MOVE (RFC 6851) when
``move_to`` is given. Bodies are fetched with BODY.PEEK, so reading alone (a
dry run) changes no flag.
"""

from __future__ import annotations

import contextlib
import imaplib
import ipaddress
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.inbound.sources import MessageError, Pending, SourceError

KEYWORD = "$OptgateProcessed"
TIMEOUT = 60  # seconds for connecting and for each command
SIZE_BATCH = 500  # UIDs per FETCH of sizes
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")


@dataclass(frozen=True, slots=True)
class ImapUrl:
    """What an imap:// or imaps:// SOURCE names."""

    tls: bool  # implicit TLS (imaps)
    user: str
    host: str
    port: int
    folder: str

    @property
    def shown(self) -> str:
        """The URL without the user name (often an address) for output."""
        scheme = "imaps" if self.tls else "imap"
        return f"{scheme}://{self.host}:{self.port}/{self.folder}"


def parse_url(text: str) -> ImapUrl:
    """An IMAP SOURCE; SourceError saying what is wrong with it."""
    parts = urlsplit(text)
    if parts.scheme not in ("imap", "imaps"):
        raise SourceError(f"unsupported URL scheme {parts.scheme!r}: use imap:// or imaps://")
    if parts.password is not None:
        raise SourceError(
            "the URL holds a password: remove it and use --password-file or --password-env"
        )
    if not parts.username:
        raise SourceError("the URL names no user: imap[s]://USER@HOST[:PORT]/FOLDER")
    if not parts.hostname:
        raise SourceError("the URL names no host: imap[s]://USER@HOST[:PORT]/FOLDER")
    if parts.query or parts.fragment:
        raise SourceError("the URL has a ?query or #fragment: imap[s]://USER@HOST[:PORT]/FOLDER")
    try:
        port = parts.port
    except ValueError:
        raise SourceError("the URL's port is not a number from 1 to 65535") from None
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    if not folder.isascii():
        raise SourceError("non-ASCII folder names are not supported")
    tls = parts.scheme == "imaps"
    return ImapUrl(
        tls, unquote(parts.username), parts.hostname, port or (993 if tls else 143), folder
    )


def _quote(name: str) -> str:
    """An IMAP quoted string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _said(data: Sequence[object]) -> str:
    """The server's text in a response, for an error message."""
    for item in data:
        if isinstance(item, bytes):
            return item.decode("utf-8", "replace")
    return "(no text)"


def _text(exc: Exception) -> str:
    """An imaplib error's message (often the server's bytes) as text."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    first = exc.args[0] if exc.args else exc
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _connect(url: ImapUrl) -> imaplib.IMAP4:
    context = ssl.create_default_context()
    where = f"{url.host}:{url.port}"
    try:
        if url.tls:
            return imaplib.IMAP4_SSL(url.host, url.port, ssl_context=context, timeout=TIMEOUT)
        conn = imaplib.IMAP4(url.host, url.port, timeout=TIMEOUT)
        if "STARTTLS" in conn.capabilities:
            conn.starttls(context)
        elif not _loopback(url.host):
            conn.shutdown()
            raise SourceError(
                f"{where} offers no STARTTLS: use imaps:// (passwords never go out in clear)"
            )
        return conn
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason or exc
        raise SourceError(f"TLS with {where} failed: {detail}") from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise SourceError(f"cannot reach IMAP server {where}: {_text(exc)}") from None


class Imap:
    """One selected IMAP folder, logged in; see the module docstring."""

    def __init__(self, url: ImapUrl, password: str, move_to: str | None) -> None:
        self.description = url.shown
        self._move_to = move_to
        self._conn = _connect(url)
        try:
            self._login(url, password)
            self._select(url.folder, move_to)
        except BaseException:
            self.close()
            raise

    def _login(self, url: ImapUrl, password: str) -> None:
        try:
            self._conn.login(url.user, password)
        except imaplib.IMAP4.error as exc:
            raise SourceError(f"IMAP login to {url.host}:{url.port} failed: {_text(exc)}") from None
        self._capabilities = set(_said(self._conn.capability()[1]).upper().split())

    def _select(self, folder: str, move_to: str | None) -> None:
        if move_to is not None:
            if "MOVE" not in self._capabilities:
                raise SourceError("the IMAP server does not support MOVE: drop --move-to")
            typ, data = self._conn.status(_quote(move_to), "(MESSAGES)")
            if typ != "OK":
                raise SourceError(f"cannot use folder {move_to!r} for --move-to: {_said(data)}")
        typ, data = self._conn.select(_quote(folder))
        if typ != "OK":
            raise SourceError(f"cannot open folder {folder!r}: {_said(data)}")
        flags = _said(self._conn.response("PERMANENTFLAGS")[1])
        self._keyword = "\\*" in flags
        self._flags = f"(\\Seen {KEYWORD})" if self._keyword else "(\\Seen)"

    def pending(self) -> Iterator[Pending]:
        criteria = ("UNKEYWORD", KEYWORD) if self._keyword else ("UNSEEN",)
        data = self._command("SEARCH", *criteria)
        found = data[0] if data else None
        uids = found.split() if isinstance(found, bytes) else []
        for start in range(0, len(uids), SIZE_BATCH):
            batch = b",".join(uids[start : start + SIZE_BATCH]).decode()
            sizes = {}
            for item in self._command("FETCH", batch, "(RFC822.SIZE)"):
                line = item[0] if isinstance(item, tuple) else item
                uid, size = _UID.search(line or b""), _SIZE.search(line or b"")
                if uid and size:
                    sizes[uid.group(1).decode()] = int(size.group(1))
            for uid_bytes in uids[start : start + SIZE_BATCH]:
                uid_text = uid_bytes.decode()
                if uid_text in sizes:  # else expunged meanwhile
                    yield Pending(uid_text, sizes[uid_text])

    def read(self, key: str) -> bytes:
        for item in self._command("FETCH", key, "(BODY.PEEK[])"):
            if isinstance(item, tuple):
                return item[1]
        raise MessageError(f"UID {key} is gone")

    def mark(self, key: str) -> None:
        self._command("STORE", key, "+FLAGS.SILENT", self._flags)
        if self._move_to is not None:
            self._command("MOVE", key, _quote(self._move_to))

    def _command(self, command: str, *args: str) -> list[bytes | tuple[bytes, bytes] | None]:
        """``UID command args``: NO/BAD is this message's error, a lost connection stops all."""
        try:
            typ, data = self._conn.uid(command, *args)
        except (imaplib.IMAP4.abort, OSError) as exc:
            raise SourceError(f"lost the IMAP connection: {_text(exc)}") from None
        except imaplib.IMAP4.error as exc:
            raise MessageError(f"IMAP UID {command} failed: {_text(exc)}") from None
        if typ != "OK":
            raise MessageError(f"IMAP UID {command} failed: {_said(data)}")
        return list(data)

    def close(self) -> None:
        # logout closes the socket whatever the server answers
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            self._conn.logout()
