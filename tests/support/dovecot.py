"""A private, throw-away Dovecot IMAP server for end-to-end tests.

Debian's ``dovecot-imapd`` run from a directory of its own (configuration,
runtime, state, log, mail) with ``dovecot -F -c FILE``: IMAP with STARTTLS and
IMAPS on loopback high ports, one user from a passwd-file (passdb and userdb),
Maildir storage, a self-signed certificate for 127.0.0.1.  Nothing under
/etc/dovecot is read and no system service is involved.

Needs root: the master runs as root, logins drop to ``dovenull`` and the
mail process to ``nobody`` (Dovecot refuses mail access as uid 0).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.postfix import LOOPBACK, free_ports
from tests.support.smtp import self_signed_files

DOVECOT_COMMAND = Path("/usr/sbin/dovecot")
DOVEADM_COMMAND = Path("/usr/bin/doveadm")
MAIL_USER = "nobody"  # owns the mail files; any non-root account will do
_FLAGS = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")

CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap
listen = {host}
ssl = yes
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/passwd
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps}
    ssl = yes
  }}
}}
"""


class DovecotError(RuntimeError):
    """The private Dovecot could not be started."""


def dovecot_available() -> bool:
    """True when dovecot-imapd is installed and we are root."""
    return os.geteuid() == 0 and DOVECOT_COMMAND.is_file()


@dataclass(frozen=True)
class Dovecot:
    """A running private Dovecot and its one user."""

    directory: Path
    imap_port: int
    imaps_port: int
    user: str
    password: str
    cert: Path  # the server's self-signed certificate, to trust it (SSL_CERT_FILE)

    def url(self, folder: str = "INBOX", *, tls: bool = False) -> str:
        """The ingest SOURCE for ``folder``."""
        scheme, port = ("imaps", self.imaps_port) if tls else ("imap", self.imap_port)
        return f"{scheme}://{self.user}@{LOOPBACK}:{port}/{folder}"

    @contextlib.contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in IMAPS client of the test's own (not the code under test)."""
        context = ssl.create_default_context(cafile=self.cert)
        conn = imaplib.IMAP4_SSL(LOOPBACK, self.imaps_port, ssl_context=context, timeout=10)
        try:
            conn.login(self.user, self.password)
            yield conn
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    def create(self, folder: str) -> None:
        with self.client() as conn:
            typ, data = conn.create(folder)
            assert typ == "OK", data

    def deliver(self, messages: list[bytes], folder: str = "INBOX") -> None:
        """Append ``messages`` to ``folder`` (unseen), in order."""
        with self.client() as conn:
            for raw in messages:
                typ, data = conn.append(folder, None, None, raw)
                assert typ == "OK", data

    def kick(self) -> None:
        """Drop every IMAP connection of the user, as a server restart would."""
        subprocess.run(  # noqa: S603 (a fixed program, our own arguments)
            [str(DOVEADM_COMMAND), "-c", str(self.directory / "dovecot.conf"), "kick", self.user],
            check=True,
            capture_output=True,
        )

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message in ``folder``, read without changing them."""
        with self.client() as conn:
            typ, data = conn.select(folder, readonly=True)
            assert typ == "OK", data
            typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            assert typ == "OK", data
        found = {}
        for item in data:
            match = _FLAGS.search(item if isinstance(item, bytes) else b"")
            if match:
                found[int(match.group(1))] = set(match.group(2).decode().split()) - {"\\Recent"}
        return found


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) + "\n"
    except OSError:
        return ""


def _listening(imap: int, imaps: int) -> bool:
    """True when the IMAP port greets and the IMAPS port accepts connections."""
    try:
        with socket.create_connection((LOOPBACK, imaps), timeout=2):
            pass
        with socket.create_connection((LOOPBACK, imap), timeout=2) as sock:
            return sock.makefile("rb").readline().startswith(b"* OK")
    except OSError:
        return False


@contextlib.contextmanager
def private_dovecot(password: str = "secret-for-tests") -> Iterator[Dovecot]:  # noqa: S107
    """Start a private Dovecot (see the module docstring); stop it and remove its files."""
    if not dovecot_available():
        raise DovecotError("needs root and dovecot-imapd (scripts/setup-system installs it)")
    owner = pwd.getpwnam(MAIL_USER)
    # under /tmp, not pytest's 0700 tmp_path: the mail user must reach its home
    directory = Path(tempfile.mkdtemp(prefix="optgate-dovecot-"))
    directory.chmod(0o755)
    process: subprocess.Popen[bytes] | None = None
    try:
        for sub in ("run", "state", "home"):
            (directory / sub).mkdir()
        os.chown(directory / "home", owner.pw_uid, owner.pw_gid)
        cert, _key = self_signed_files(directory)
        imap, imaps = free_ports(2)
        user = "mailbox-owner"
        (directory / "passwd").write_text(
            f"{user}:{{PLAIN}}{password}:{owner.pw_uid}:{owner.pw_gid}::{directory}/home/{user}::\n"
        )
        config = directory / "dovecot.conf"
        config.write_text(CONFIG.format(dir=directory, host=LOOPBACK, imap=imap, imaps=imaps))
        with (directory / "stderr.log").open("wb") as stderr:
            process = subprocess.Popen(  # noqa: S603 (a fixed program, our own arguments)
                [str(DOVECOT_COMMAND), "-F", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not _listening(imap, imaps):
            if process.poll() is not None or time.monotonic() > deadline:
                log = _tail(directory / "stderr.log") + _tail(directory / "dovecot.log")
                raise DovecotError(f"dovecot did not start:\n{log}")
            time.sleep(0.05)
        yield Dovecot(directory, imap, imaps, user, password, cert)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # any child left behind
        shutil.rmtree(directory, ignore_errors=True)
