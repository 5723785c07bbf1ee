"""The doctor's local checks: configuration, key files, listen addresses, the store and the
next hop. Nothing is changed: a missing store or key file is reported, not created, and an
older store is not migrated. The only traffic goes to the listen addresses (bound for a
moment; probed if taken) and the next hop (EHLO, its certificate where it is checked, and as
many sessions at once as the workers' pools may hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from gateway.config import Config, HostPort
from gateway.doctor.report import Check, Status
from gateway.inbound.mailboxes import MAX_LOCAL_PART, Mailboxes, Role
from gateway.keygen import PrivateKey
from gateway.keys import load_keys
from gateway.outbound.signing import load_private_key, parse_key_entry
from gateway.runtime.stores import load_audit_key, open_configured
from gateway.smtp.client import Broken, Connection
from gateway.smtp.server import advertised_size
from gateway.smtp.tls import client_context
from gateway.tokens import SHORT_TOKEN_CHARS
from gateway.web.endpoint import SECURITY_HEADERS
from suppression.errors import ConfigError, OptgateError, StoreMissing
from suppression.opening import require_store
from suppression.sql.tables import MIGRATIONS

PROBE_SECONDS = 5.0  # the next hop's greeting and EHLO
HOLDER_SECONDS = 2.0  # whatever holds a listen port: optgate greets or answers at once
SECRET_MODE = 0o077  # permission bits a private file must not have


async def local_checks(config: Config, workers: int) -> tuple[list[Check], list[DkimKey]]:
    """The local checks in report order, and the DKIM keys that loaded (for the DNS checks);
    ``workers``: the ``optgate serve --workers`` count the pools are sized for."""
    keys = [_load_key(entry) for entry in config.dkim.keys]
    found = await asyncio.gather(
        asyncio.to_thread(_token_keys, Path(config.unsubscribe.key_file)),
        asyncio.to_thread(_audit_key, Path(config.store.audit_key_file)),
        _listen("smtp", config.smtp.listen, _smtp_is_optgate),
        _listen("web", config.web.listen, _web_is_optgate),
        _store(config),
        _next_hop(config, workers),
    )
    dkim = [check for check, _ in keys] or [_no_dkim()]
    loaded = [key for _, key in keys if key is not None]
    checks = [*dkim, *found, _base_url(config.unsubscribe.base_url), _inbound(config)]
    return checks, loaded


# --- files ------------------------------------------------------------------------------------


def _missing(name: str, path: Path, later: str) -> Check:
    """A file that is made on first start (with its directories): fine if they can be made."""
    parent = next(p for p in path.absolute().parents if p.exists())
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Check(Status.PASS, name, f"{path} not there yet: {later}")
    state = "is not writable by this user" if parent.is_dir() else "is not a directory"
    return Check(
        Status.WARN,
        name,
        f"{path} is missing and {parent} {state}: the service's user must be able to create it",
    )


def _private_mode(name: str, path: Path, found: str) -> Check:
    """PASS with what was found, or WARN when group or others may read the file."""
    mode = path.stat().st_mode & 0o777
    if mode & SECRET_MODE:
        return Check(
            Status.WARN, name, f"{found}, but mode {mode:04o} lets others read it: chmod 600 {path}"
        )
    return Check(Status.PASS, name, f"{found}, mode {mode:04o}")


def _token_keys(path: Path) -> Check:
    """[unsubscribe] key_file: parses, private; or missing and creatable."""
    name = "token keys"
    if not path.exists():
        return _missing(name, path, "created (0600) on first start")
    try:
        keys = load_keys(path)
    except ConfigError as exc:
        return Check(
            Status.FAIL, name, f"{exc}: fix it (a new file would void every link already sent)"
        )
    return _private_mode(name, path, f"{path}: {len(keys)} key(s)")


def _audit_key(path: Path) -> Check:
    """[store] audit_key_file: parses, private; or missing and creatable."""
    name = "audit key"
    if not path.exists():
        return _missing(name, path, "created (0600) with the store")
    try:
        key, _ = load_audit_key(path, create=False)
    except ConfigError as exc:
        return Check(Status.FAIL, name, f"{exc}: restore it (the audit log is chained with it)")
    return _private_mode(name, path, f"{path}: a {len(key) * 8}-bit key")


@dataclass(frozen=True)
class DkimKey:
    """A [dkim] keys entry, checked by the signer's parser, with its private key loaded."""

    domain: str
    selector: str
    algorithm: str
    path: Path
    private_key: PrivateKey


def _parse_key_entry(entry: str) -> DkimKey:
    """The entry as the signer reads it; ConfigError naming the entry."""
    key = parse_key_entry(entry)
    path = Path(entry.split(":", 3)[3].strip())
    # the signer's loader knows every form a key file may take (PEM, Ed25519 seeds)
    private = load_private_key(key)
    return DkimKey(key.domain, key.selector, key.algorithm, path, private)


def _load_key(entry: str) -> tuple[Check, DkimKey | None]:
    """One [dkim] keys entry: its key file reads and parses."""
    name = "dkim key " + ":".join(entry.split(":", 2)[:2])
    try:
        key = _parse_key_entry(entry)
    except ConfigError as exc:
        return Check(Status.FAIL, name, str(exc)), None
    size = (
        f"{key.private_key.key_size}-bit " if isinstance(key.private_key, rsa.RSAPrivateKey) else ""
    )
    return _private_mode(name, key.path, f"{size}{key.algorithm} key in {key.path}"), key


def _no_dkim() -> Check:
    return Check(
        Status.WARN,
        "dkim",
        "no [dkim] keys: mail leaves unsigned, and Gmail and Yahoo require DKIM of bulk "
        "senders: make a key with optgate dkim keygen",
    )


# --- sockets ----------------------------------------------------------------------------------


def _bind_error(host: str, port: int) -> OSError | None:
    """Why binding host:port (as the server would, SO_REUSEADDR) fails, or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
    except OSError as exc:
        return exc
    return None


def _probe_host(host: str) -> str:
    """Where to connect to reach a server listening on host (a wildcard: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


async def _listen(
    section: str, value: HostPort, probe: Callable[[str, int], Awaitable[bool]]
) -> Check:
    """A listen address is free to bind; taken by optgate itself is a WARN."""
    name = f"{section} listen"
    host, port = value
    if port == 0:
        return Check(Status.PASS, name, f"{value}: a free port is picked at start")
    error = await asyncio.to_thread(_bind_error, host, port)
    if error is None:
        return Check(Status.PASS, name, f"{value} is free")
    if error.errno != errno.EADDRINUSE:
        return Check(Status.FAIL, name, f"cannot listen on {value}: {error.strerror or error}")
    if await probe(_probe_host(host), port):
        return Check(
            Status.WARN, name, f"{value} is taken by optgate itself, already running: stop it first"
        )
    return Check(
        Status.FAIL,
        name,
        f"{value} is in use by another process: stop it or choose another [{section}] listen",
    )


async def _smtp_is_optgate(host: str, port: int) -> bool:
    """Whether the server on host:port greets as optgate (or refuses us as optgate)."""
    try:
        async with asyncio.timeout(HOLDER_SECONDS):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                greeting = await reader.readline()
                writer.write(b"QUIT\r\n")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return _is_optgate(greeting.decode("utf-8", "replace"))


def _is_optgate(greeting: str) -> bool:
    """optgate greets "220 HOST optgate" and refuses with "... relay through optgate"."""
    return greeting.rstrip().lower().endswith("optgate")


async def _web_is_optgate(host: str, port: int) -> bool:
    """Whether the server on host:port answers /healthz as optgate's web endpoint does."""
    url = URL.build(scheme="http", host=host, port=port, path="/healthz")
    timeout = aiohttp.ClientTimeout(total=HOLDER_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, allow_redirects=False) as answer,
        ):
            policy = answer.headers.get("Content-Security-Policy")
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
    return policy == SECURITY_HEADERS["Content-Security-Policy"]


async def _next_hop(config: Config, workers: int) -> Check:
    """The next hop answers EHLO (and offers STARTTLS if that is required, with a
    certificate that verifies where [relay] tls_verify checks it); it is not us; it
    serves every connection the workers' pools may hold at once; its SIZE takes what
    [smtp] max_message_size lets in."""
    name, where = "next hop", config.relay.next_hop
    host, port = where
    try:
        tls = client_context(config.relay)
    except ConfigError as exc:
        return Check(Status.FAIL, name, str(exc))
    client = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        timeout=PROBE_SECONDS,
        start_tls=False,
        local_hostname=config.smtp.hostname or socket.gethostname(),
    )
    tls_failed = ""
    try:
        greeting = await client.connect()
        reply = await client.ehlo()
        starttls = client.supports_extension("starttls")
        size = client.esmtp_extensions.get("size", "")
        if starttls and tls is not None and config.relay.starttls != "never":
            try:
                await client.starttls(tls_context=tls, server_hostname=host)
            except (aiosmtplib.SMTPException, ssl.SSLError) as exc:
                tls_failed = str(exc) or type(exc).__name__
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        why = str(exc) or type(exc).__name__
        return Check(
            Status.FAIL, name, f"{where} does not answer ({why}): start it or fix [relay] next_hop"
        )
    finally:
        client.close()
    if _is_optgate(greeting.message):
        return Check(Status.FAIL, name, f"{where} is optgate itself: mail would loop")
    if config.relay.starttls == "required" and not starttls:
        return Check(
            Status.FAIL, name, f"{where} offers no STARTTLS, and [relay] starttls = required"
        )
    if tls_failed:
        return Check(
            Status.FAIL,
            name,
            f"{where}: its certificate does not verify ({tls_failed}): every copy would get "
            "451 4.7.5; set [relay] tls_ca_file to its CA, or tls_verify = never",
        )
    server = reply.message.splitlines()[0] if reply.message else "?"
    sessions = await _sessions(config, workers, f"{where} answers EHLO ({server})")
    own = config.smtp.max_message_size
    hop = int(size) if size.strip().isdigit() and int(size) > 0 else None
    agreed = advertised_size(own, hop)
    if sessions.status is Status.FAIL or hop is None or (own and agreed >= own):
        return sessions
    also = f"; {sessions.detail}" if sessions.status is Status.WARN else ""
    return Check(
        Status.WARN,
        name,
        f"{where} takes at most {hop} bytes (SIZE), [smtp] max_message_size is "
        f"{own or 'unlimited'}: "
        f"optgate offers {agreed} (room for the footer) and refuses larger mail at MAIL "
        f"FROM; set [smtp] max_message_size = {agreed}, or raise the next hop's limit "
        f"(Postfix: message_size_limit){also}",
    )


async def _session(config: Config) -> Connection | None:
    """One greeted session at the next hop, or None when it refused or kept silent."""
    host, port = config.relay.next_hop
    try:
        return await Connection.open(
            host,
            port,
            seconds=PROBE_SECONDS,
            local_hostname=config.smtp.hostname or socket.gethostname(),
            starttls="never",
        )
    except (Broken, OSError, TimeoutError):
        return None


async def _sessions(config: Config, workers: int, found: str) -> Check:
    """The next hop serves, at once, every connection the workers' pools may hold."""
    name, relay = "next hop", config.relay
    size = relay.per_worker(workers)
    wanted = workers * size
    sessions = await asyncio.gather(*(_session(config) for _ in range(wanted)))
    for session in sessions:
        if session is not None:
            session.leave()
    served = sum(session is not None for session in sessions)
    shares = f"{workers} worker(s) x pool_size {size}"
    if served < wanted:
        return Check(
            Status.FAIL,
            name,
            f"{found}, but served {served} of {wanted} sessions at once ({shares}): "
            f"raise its limit to at least {wanted} (Postfix: the reinjection listener's "
            "maxproc in master.cf) or lower [relay] next_hop_sessions; optgate's own "
            "connections count too while it runs",
        )
    if wanted > relay.next_hop_sessions:
        return Check(
            Status.WARN,
            name,
            f"{found}; {shares} = {wanted} connections, more than [relay] "
            f"next_hop_sessions = {relay.next_hop_sessions}: run fewer workers, lower "
            "pool_size (0 shares next_hop_sessions), or raise next_hop_sessions with the "
            "next hop's limit",
        )
    return Check(Status.PASS, name, f"{found}, serves {wanted} sessions at once ({shares})")


# --- the store --------------------------------------------------------------------------------


def _sqlite_schema(path: Path) -> int:
    """The schema version of a SQLite store, read without changing anything."""
    uri = path.absolute().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _sqlite_first(url: str) -> Check | None:
    """A missing or older SQLite store is reported here: opening it would create or migrate it."""
    text = url.removeprefix("sqlite://").removeprefix("/")
    if not text or text == ":memory:":
        return None  # open_store says what is wrong
    path = Path(text)
    if not path.exists():
        return _missing("store", path, "created on first start (or by optgate store migrate)")
    try:
        version = _sqlite_schema(path)
    except sqlite3.Error as exc:
        return Check(Status.FAIL, "store", f"cannot read SQLite store {path}: {exc}")
    if version < len(MIGRATIONS):
        return Check(
            Status.WARN,
            "store",
            f"{path} has schema {version}, this optgate {len(MIGRATIONS)}: "
            "it is migrated on the next start, or run optgate store migrate",
        )
    return None


async def _store(config: Config) -> Check:
    """The store opens with its audit key and is at this optgate's schema."""
    url = config.store.url
    if url.startswith("sqlite://"):
        early = await asyncio.to_thread(_sqlite_first, url)
        if early is not None:
            return early
    try:
        await require_store(url)  # a store not made yet needs no key yet
    except StoreMissing as exc:
        return Check(Status.WARN, "store", str(exc))
    except OptgateError as exc:
        return Check(Status.FAIL, "store", str(exc))
    key = Path(config.store.audit_key_file)
    if not await asyncio.to_thread(key.exists):
        return Check(
            Status.FAIL,
            "store",
            f"{url} exists, but its audit key {key} does not: restore the key from a backup "
            "(a new key would make the whole audit log look forged)",
        )
    try:
        store = await open_configured(config)  # the doctor changes nothing
    except StoreMissing as exc:
        return Check(Status.WARN, "store", str(exc))
    except OptgateError as exc:
        return Check(Status.FAIL, "store", str(exc))
    await store.close()
    return Check(Status.PASS, "store", f"{url} opens, schema current")


def _base_url(url: str) -> Check:
    """Unsubscribe links must be https for one-click (RFC 8058) to count."""
    name = "base_url"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return Check(Status.PASS, name, f"{url} is https")
    if parts.scheme != "http" or not host:
        return Check(Status.FAIL, name, f"[unsubscribe] base_url {url!r} is not an https URL")
    if _loopback(host):
        return Check(
            Status.WARN,
            name,
            f"{url} is http on a loopback host: fine for a trial; recipients need a public "
            "https URL",
        )
    return Check(
        Status.FAIL,
        name,
        f"{url} is http: one-click unsubscribe (RFC 8058) needs https: put a TLS proxy in "
        "front of [web] listen and set an https base_url",
    )


def _inbound(config: Config) -> Check:
    """[inbound] addresses are valid, and [unsubscribe] mailto reaches optgate with a token."""
    name = "inbound"
    mailto = config.unsubscribe.mailto
    local = mailto.rpartition("@")[0]
    if len(local) + 1 + SHORT_TOKEN_CHARS > MAX_LOCAL_PART:
        return Check(
            Status.FAIL,
            name,
            f"[unsubscribe] mailto {mailto}: {local}+TOKEN exceeds {MAX_LOCAL_PART} characters "
            f"(RFC 5321): use a local part of at most {MAX_LOCAL_PART - 1 - SHORT_TOKEN_CHARS}",
        )
    try:
        boxes = Mailboxes.from_config(config.inbound)
    except ConfigError as exc:
        return Check(Status.FAIL, name, str(exc))
    if boxes is None:
        return Check(
            Status.WARN,
            name,
            "no [inbound] domains: bounces, complaints and mail to [unsubscribe] mailto are not "
            "taken live; set them, or run optgate ingest on that mailbox",
        )
    if boxes.role(mailto) is not Role.UNSUBSCRIBE:
        return Check(
            Status.WARN,
            name,
            f"[unsubscribe] mailto {mailto} is not {boxes.local(Role.UNSUBSCRIBE)}@ an [inbound] "
            "domain: mailto unsubscribes do not reach optgate",
        )
    return Check(
        Status.PASS,
        name,
        f"{boxes.local(Role.UNSUBSCRIBE)}@, {boxes.local(Role.BOUNCE)}+TOKEN@ and "
        f"{boxes.local(Role.FEEDBACK)}@ at {', '.join(boxes.domains)}",
    )


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
