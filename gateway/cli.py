"""The ``optgate`` command: parses, calls, prints. Errors become exit codes here only."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import version
from typing import Any

import uvloop

from gateway import admin, bulk, ingest, partner_admin, storecopy, workers
from gateway.config import Config, load
from gateway.workers import default_count
from suppression.errors import OptgateError
from suppression.formats import READ_FORMATS
from suppression.model import Reason
from suppression.textio import FormatError
from suppression.writers import CONSENT_FORMATS, WRITE_FORMATS

EXIT_OK, EXIT_FOUND, EXIT_ERROR, EXIT_USAGE = 0, 1, 2, 64

Handler = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration (default: $OPTGATE_CONFIG, else built-in defaults)",
    )


def _scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scope", default="global", help="global, topic:NAME or partner:NAME")


def _json_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--json", action="store_true", help=help_text)


def _command(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    help_text: str,
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text)
    _config_option(parser)
    parser.set_defaults(handler=handler)
    return parser


def _suppress_commands(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = group.add_parser("suppress", help="manage the suppression list")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    reasons = [r.value for r in Reason]
    add = _command(sub, "add", admin.suppress_add, "suppress addresses or @domains")
    add.add_argument("addresses", nargs="+", metavar="ADDR")
    _scope(add)
    add.add_argument("--reason", choices=reasons, default="manual")
    remove = _command(sub, "remove", admin.suppress_remove, "lift suppressions (audited)")
    remove.add_argument("addresses", nargs="+", metavar="ADDR")
    _scope(remove)
    check = _command(
        sub, "check", admin.suppress_check, "show suppressions; exit 1 if any is suppressed"
    )
    check.add_argument("addresses", nargs="+", metavar="ADDR")
    imp = _command(
        sub, "import", bulk.suppress_import, "bulk import a file ('-' is stdin), all or nothing"
    )
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--format", choices=READ_FORMATS, default="auto")
    imp.add_argument(
        "--scope", help="the scope of rows without one (default global); rows in another fail"
    )
    imp.add_argument("--reason", choices=reasons, help="override the reason rows carry")
    imp.add_argument(
        "--allow-subscribed",
        action="store_true",
        help="import a list whose status column says subscribed (normally refused)",
    )
    _json_option(imp, "print the summary as one JSON object (stdout)")
    exp = _command(sub, "export", bulk.suppress_export, "bulk export")
    exp.add_argument("--format", choices=WRITE_FORMATS, default="csv")
    exp.add_argument("--scope", help="only this scope (default: all)")
    exp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    _json_option(exp, "print the summary as one JSON object (stderr)")


def _consent_commands(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = group.add_parser("consent", help="manage consent records")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, text in (
        ("add", admin.consent_add, "record consent"),
        ("revoke", admin.consent_revoke, "record a revocation"),
    ):
        cmd = _command(sub, name, handler, text)
        cmd.add_argument("addresses", nargs="+", metavar="ADDR")
        cmd.add_argument("--purpose", required=True, help="a topic name or partner-offers")
        cmd.add_argument("--source", default="cli")
        cmd.add_argument("--policy-version", metavar="V")
    request = _command(
        sub, "request", admin.consent_request, "mail a double opt-in confirmation link"
    )
    request.add_argument("addresses", nargs="+", metavar="ADDR")
    request.add_argument("--purpose", required=True, help="a topic name or partner-offers")
    imp = _command(sub, "import", bulk.consent_import, "bulk import consents, all or nothing")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument(
        "--purpose", help="the purpose of rows without a purpose column; rows for another fail"
    )
    imp.add_argument("--format", choices=("auto", "csv", "jsonl", "plain"), default="auto")
    imp.add_argument("--source", default="import", help="the source of rows without one")
    imp.add_argument("--policy-version", metavar="V", help="the version of rows without one")
    _json_option(imp, "print the summary as one JSON object (stdout)")
    exp = _command(sub, "export", bulk.consent_export, "export consent records")
    exp.add_argument("--purpose", help="only this purpose")
    exp.add_argument("--format", choices=CONSENT_FORMATS, default="csv")
    exp.add_argument("-o", "--output", metavar="FILE")
    _json_option(exp, "print the summary as one JSON object (stderr)")


def _dkim_commands(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = group.add_parser("dkim", help="DKIM keys")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = _command(
        sub, "keygen", admin.dkim_keygen, "make a key (0600) and print the DNS record to publish"
    )
    keygen.add_argument("--domain", required=True, help="the signing domain (d=)")
    keygen.add_argument("--selector", required=True, help="the selector (s=)")
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, help="RSA key size (default 2048, at least 2048)")
    keygen.add_argument(
        "--out", metavar="FILE", help="private key file (default SELECTOR._domainkey.DOMAIN.pem)"
    )


SERVE_HELP = "run the gatekeeper: SMTP in, relay out, and the web endpoint"


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _other_commands(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = group.add_parser(
        "serve", help=SERVE_HELP, description=f"{SERVE_HELP}, in worker processes"
    )
    _config_option(serve)
    serve.set_defaults(supervise=workers.serve)
    serve.add_argument(
        "--only", choices=("smtp", "web"), help="run one part (e.g. web behind a reverse proxy)"
    )
    serve.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help=f"processes sharing the listening ports (default: one per core, {default_count()})",
    )
    serve.add_argument(
        "--cpu-affinity",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): with one worker per core, bind worker i to core i; "
        "none: let the kernel place the workers",
    )
    _command(group, "demo", admin.demo, "show what optgate does, on a temporary store")
    subject = group.add_parser("subject", help="data-subject access and erasure")
    sub = subject.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = _command(sub, "show", admin.subject_show, "print every record about ADDR as JSON")
    show.add_argument("address", metavar="ADDR")
    erase = _command(sub, "erase", admin.subject_erase, "erase ADDR, keeping only its hash")
    erase.add_argument("address", metavar="ADDR")
    explain = _command(
        group, "explain", admin.explain, "would marketing mail to ADDR be sent, and why"
    )
    explain.add_argument("address", metavar="ADDR")
    explain.add_argument("--topic", help="the topic (default: [policy] default_topic)")
    report = group.add_parser("report", help="reports from the records")
    sub = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    _command(
        sub,
        "compliance",
        admin.report_compliance,
        "list opt-outs that were followed by marketing mail; exit 1 if any",
    )
    _dkim_commands(group)
    _command(
        group,
        "doctor",
        admin.doctor,
        "check the configuration and the sending domains' DNS; exit 1 on any FAIL",
    )
    store = group.add_parser("store", help="store maintenance")
    sub = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = _command(
        sub,
        "verify",
        admin.store_verify,
        "prove the audit log's keyed chain unbroken and the tables the state it rebuilds; "
        "exit 1 if not",
    )
    verify.add_argument(
        "--expect",
        metavar="SEQ:DIGEST",
        help="a head printed by an earlier verify: the chain must still hold it",
    )
    verify.add_argument("--json", action="store_true", help="the report as one JSON object")
    _command(sub, "migrate", admin.store_migrate, "create or upgrade the store's schema")
    copy = _command(
        sub,
        "copy",
        storecopy.store_copy,
        "copy every record into a new, empty store (e.g. SQLite to PostgreSQL), verified",
    )
    copy.add_argument("source", metavar="SRC_URL", help="sqlite:///PATH or postgresql://...")
    copy.add_argument("destination", metavar="DST_URL", help="an empty store's URL")


def _ingest_command(group: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = _command(
        group,
        "ingest",
        ingest.run,
        "process an unsubscribe / bounce / complaint mailbox: mbox, Maildir, imap[s]:// URL",
    )
    cmd.add_argument(
        "source", metavar="SOURCE", help="mbox file, Maildir, imap[s]://USER@HOST/FOLDER"
    )
    cmd.add_argument(
        "--dry-run", action="store_true", help="say what would be done; change nothing"
    )
    cmd.add_argument("--limit", type=int, metavar="N", help="process at most N messages")
    cmd.add_argument("--move-to", metavar="FOLDER", help="IMAP: move processed messages there")
    password = cmd.add_mutually_exclusive_group()
    password.add_argument("--password-file", metavar="FILE", help="IMAP: the password's file")
    password.add_argument("--password-env", metavar="VAR", help="IMAP: the password's variable")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="optgate", description="Gatekeeper for outbound marketing e-mail."
    )
    parser.add_argument("--version", action="version", version=f"optgate {version('optgate')}")
    _config_option(parser)
    group = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _suppress_commands(group)
    _consent_commands(group)
    _other_commands(group)
    _ingest_command(group)
    partner_admin.register(group, _command)
    return parser


def _user() -> str:
    """The login name, or uid-N when the uid has no passwd entry (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # KeyError up to Python 3.12, OSError from 3.13
        return f"uid-{os.getuid()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    args.actor = f"cli:{_user()}"
    try:
        config = load(getattr(args, "config", None))
        if hasattr(args, "supervise"):  # forks processes, each with an event loop of its own
            status: int = args.supervise(args, config)
            return status
        handler: Handler = args.handler
        # uvloop: the same asyncio API, a much cheaper event loop and transports
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(handler(args, config))
    except (OptgateError, FormatError) as exc:
        print(f"optgate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("optgate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
