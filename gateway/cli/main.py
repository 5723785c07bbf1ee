"""The ``optgate`` command: parses, calls, prints. Errors become exit codes here only, as
the table of gateway/errors.py says.

The command tree is built without importing what the commands run (aiosmtpd,
asyncpg, aiohttp, ...): each command names its handler as ``module:function``,
imported when the command runs, so ``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeAlias

from gateway.config import Config, load
from gateway.errors import EXITING, exit_for
from suppression.formats import CONSENT_FORMATS, READ_FORMATS, WRITE_FORMATS
from suppression.model import Reason
from suppression.partners import TRANSITIONS

Handler = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]
if TYPE_CHECKING:  # (not subscriptable at run time)
    Group: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration (default: $OPTGATE_CONFIG, else built-in defaults)",
    )


def _scope(parser: argparse.ArgumentParser, **options: Any) -> None:
    settings = {"default": "global", "help": "global, topic:NAME or partner:NAME (a known one)"}
    parser.add_argument("--scope", **(settings | options))


def _json(parser: argparse.ArgumentParser, help_text: str = "JSON instead of lines") -> None:
    parser.add_argument("--json", action="store_true", help=help_text)


def _command(group: Group, name: str, handler: str, help_text: str) -> argparse.ArgumentParser:
    """A command whose ``handler`` (``module:function``) is imported when it runs."""
    parser = group.add_parser(name, help=help_text, description=help_text)
    _config_option(parser)
    parser.set_defaults(handler=handler)
    return parser


def _suppress_commands(group: Group) -> None:
    top = group.add_parser("suppress", help="manage the suppression list")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    reasons = [r.value for r in Reason]
    add = _command(sub, "add", "gateway.cli.admin:suppress_add", "suppress addresses or @domains")
    add.add_argument("addresses", nargs="+", metavar="ADDR")
    _scope(add)
    add.add_argument("--reason", choices=reasons, default="manual")
    remove = _command(
        sub, "remove", "gateway.cli.admin:suppress_remove", "lift suppressions (audited)"
    )
    remove.add_argument("addresses", nargs="+", metavar="ADDR")
    _scope(remove)
    check = _command(
        sub,
        "check",
        "gateway.cli.admin:suppress_check",
        "show suppressions; exit 1 if any is suppressed",
    )
    check.add_argument("addresses", nargs="+", metavar="ADDR")
    _json(check)
    imp = _command(
        sub,
        "import",
        "gateway.cli.bulk:suppress_import",
        "bulk import a file ('-' is stdin), all or nothing",
    )
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--format", choices=READ_FORMATS, default="auto")
    _scope(imp, default=None, help="the scope of rows without one (default global)")
    imp.add_argument("--reason", choices=reasons, help="override the reason rows carry")
    imp.add_argument(
        "--allow-subscribed",
        action="store_true",
        help="import a list whose status column says subscribed (normally refused)",
    )
    _json(imp, "print the summary as one JSON object (stdout)")
    exp = _command(sub, "export", "gateway.cli.bulk:suppress_export", "bulk export")
    exp.add_argument("--format", choices=WRITE_FORMATS, default="csv")
    _scope(exp, default=None, help="only this scope (default: all scopes)")
    exp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    _json(exp, "print the summary as one JSON object (stderr)")


def _consent_commands(group: Group) -> None:
    top = group.add_parser("consent", help="manage consent records")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, text in (
        ("add", "gateway.cli.admin:consent_add", "record consent"),
        ("revoke", "gateway.cli.admin:consent_revoke", "record a revocation"),
    ):
        cmd = _command(sub, name, handler, text)
        cmd.add_argument("addresses", nargs="+", metavar="ADDR")
        cmd.add_argument("--purpose", required=True, help="a topic name or partner-offers")
        cmd.add_argument("--source", default="cli")
        cmd.add_argument("--policy-version", metavar="V")
    request = _command(
        sub,
        "request",
        "gateway.cli.admin:consent_request",
        "mail a double opt-in confirmation link",
    )
    request.add_argument("addresses", nargs="+", metavar="ADDR")
    request.add_argument("--purpose", required=True, help="a topic name or partner-offers")
    imp = _command(
        sub, "import", "gateway.cli.bulk:consent_import", "bulk import consents, all or nothing"
    )
    imp.add_argument("file", metavar="FILE")
    imp.add_argument(
        "--purpose", help="the purpose of rows without a purpose column; rows for another fail"
    )
    imp.add_argument("--format", choices=("auto", "csv", "jsonl", "plain"), default="auto")
    imp.add_argument("--source", default="import", help="the source of rows without one")
    imp.add_argument("--policy-version", metavar="V", help="the version of rows without one")
    _json(imp, "print the summary as one JSON object (stdout)")
    exp = _command(sub, "export", "gateway.cli.bulk:consent_export", "export consent records")
    exp.add_argument("--purpose", help="only this purpose")
    exp.add_argument("--format", choices=CONSENT_FORMATS, default="csv")
    exp.add_argument("-o", "--output", metavar="FILE")
    _json(exp, "print the summary as one JSON object (stderr)")


def _dkim_commands(group: Group) -> None:
    top = group.add_parser("dkim", help="DKIM keys")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = _command(
        sub,
        "keygen",
        "gateway.cli.admin:dkim_keygen",
        "make a key (0600) and print the DNS record to publish",
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


def _serve_command(group: Group) -> None:
    serve = group.add_parser(
        "serve",
        help=SERVE_HELP,
        description=f"{SERVE_HELP}, in worker processes; makes the store, the state "
        "directory and the token key file if they do not exist",
    )
    _config_option(serve)
    # forks processes, each with an event loop of its own
    serve.set_defaults(handler="gateway.runtime.workers:serve", supervise=True)
    serve.add_argument(
        "--only", choices=("smtp", "web"), help="run one part (e.g. web behind a reverse proxy)"
    )
    serve.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help="processes sharing the listening ports (default: one per core it may run on)",
    )
    serve.add_argument(
        "--cpu-affinity",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): with one worker per core, bind worker i to core i; "
        "none: let the kernel place the workers",
    )


def _other_commands(group: Group) -> None:
    _serve_command(group)
    _command(
        group, "demo", "gateway.cli.admin:demo", "show what optgate does, on a temporary store"
    )
    subject = group.add_parser("subject", help="data-subject access and erasure")
    sub = subject.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = _command(
        sub, "show", "gateway.cli.admin:subject_show", "print every record about ADDR as JSON"
    )
    show.add_argument("address", metavar="ADDR")
    erase = _command(
        sub, "erase", "gateway.cli.admin:subject_erase", "erase ADDR, keeping only its hash"
    )
    erase.add_argument("address", metavar="ADDR")
    explain = _command(
        group,
        "explain",
        "gateway.cli.admin:explain",
        "would marketing mail to ADDR be sent, and why",
    )
    explain.add_argument("address", metavar="ADDR")
    explain.add_argument("--topic", help="the topic (default: [policy] default_topic)")
    _json(explain)
    log_id = _command(
        group,
        "log-id",
        "gateway.cli.admin:log_id",
        "the keyed digests log lines carry for addresses",
    )
    log_id.add_argument("values", nargs="+", metavar="ADDR")
    log_id.add_argument(
        "--message-id", action="store_true", help="the values are Message-IDs (or other text)"
    )
    report = group.add_parser("report", help="reports from the records")
    sub = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    compliance = _command(
        sub,
        "compliance",
        "gateway.cli.admin:report_compliance",
        "list opt-outs that were followed by marketing mail; exit 1 if any",
    )
    _json(compliance)
    rates = _command(
        sub,
        "rates",
        "gateway.cli.admin:report_rates",
        "sent, unsubscribed, bounced, complained per topic and campaign; exit 1 if "
        "complaints reach Gmail's line (0.3 percent)",
    )
    rates.add_argument(
        "--since", default="7d", help="a duration back (7d, 12h, 30m) or a time (default 7d)"
    )
    _json(rates)
    _dkim_commands(group)
    doctor = _command(
        group,
        "doctor",
        "gateway.cli.admin:doctor",
        "check the configuration and the sending domains' DNS; exit 1 on any FAIL",
    )
    doctor.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help="the optgate serve --workers count to check the next hop's sessions for "
        "(default: one per core, as serve)",
    )
    store = group.add_parser("store", help="store maintenance")
    sub = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = _command(
        sub,
        "verify",
        "gateway.cli.admin:store_verify",
        "prove the audit log's keyed chain unbroken and the tables the state it rebuilds; "
        "exit 1 if not",
    )
    verify.add_argument(
        "--expect",
        metavar="SEQ:DIGEST",
        help="a head printed by an earlier verify: the chain must still hold it",
    )
    _json(verify)
    _command(
        sub,
        "migrate",
        "gateway.cli.admin:store_migrate",
        "create or upgrade the store's schema (and make the state directory and key files)",
    )
    copy = _command(
        sub,
        "copy",
        "gateway.cli.storecopy:store_copy",
        "copy every record into a new, empty store (e.g. SQLite to PostgreSQL), verified",
    )
    copy.add_argument("source", metavar="SRC_URL", help="sqlite:///PATH or postgresql://...")
    copy.add_argument("destination", metavar="DST_URL", help="an empty store's URL")


def _config_commands(group: Group) -> None:
    top = group.add_parser("config", help="the configuration in use, and a sample file")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = _command(
        sub,
        "show",
        "gateway.cli.configshow:show",
        "print the effective configuration, where each value came from, and which store "
        "and token key file are in use",
    )
    _json(show)
    _command(
        sub,
        "example",
        "gateway.cli.configshow:example",
        "print a commented sample TOML file holding every option at its default",
    )


def _ingest_command(group: Group) -> None:
    cmd = _command(
        group,
        "ingest",
        "gateway.cli.ingest:run",
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


def _partner_commands(group: Group) -> None:
    top = group.add_parser("partner", help="partners and their offers")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    module = "gateway.cli.partners"
    add = _command(
        sub, "add", f"{module}:partner_add", "register a partner; prints its credential once"
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--rate", type=int, metavar="N", help="offers per hour (default: config)")
    add.add_argument("--max-size", type=int, metavar="BYTES", help="largest offer (config)")
    _command(sub, "list", f"{module}:partner_list", "list partners")
    disable = _command(
        sub, "disable", f"{module}:partner_disable", "refuse a partner's submissions"
    )
    disable.add_argument("name", metavar="NAME")
    report = _command(
        sub, "report", f"{module}:partner_report", "a partner's offers: aggregate counts only"
    )
    report.add_argument("name", metavar="NAME")
    _json(report)
    export = _command(
        sub,
        "export-optouts",
        f"{module}:partner_export_optouts",
        "hashes of the people who opted out of a partner's offers (never addresses)",
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument("--format", choices=("md5", "sha256"), required=True)
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    offers = _command(sub, "offers", f"{module}:partner_offers", "offers with their fan-out state")
    offers.add_argument("name", metavar="NAME", nargs="?")
    for change in TRANSITIONS:
        cmd = _command(sub, change, f"{module}:offer_change", f"{change} an offer's fan-out")
        cmd.add_argument("id", type=int, metavar="ID")
        cmd.set_defaults(change=change)


def _api_key_commands(group: Group) -> None:
    top = group.add_parser("api-key", help="keys of the REST API (on the admin listener)")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = _command(
        sub,
        "add",
        "gateway.cli.admin:api_key_add",
        "make a key; prints it once (the store keeps a digest)",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--scope",
        dest="scopes",  # (not --scope's dest: that one is a suppression scope, checked)
        action="append",
        required=True,
        metavar="SCOPE",
        help="read, write or erase; repeat it or give a list (read,write)",
    )
    _command(
        sub, "list", "gateway.cli.admin:api_key_list", "list the keys (never the keys themselves)"
    )
    revoke = _command(sub, "revoke", "gateway.cli.admin:api_key_revoke", "revoke a key at once")
    revoke.add_argument("name", metavar="NAME")


def _webhook_commands(group: Group) -> None:
    top = group.add_parser("webhooks", help="signed webhooks out (Standard Webhooks)")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = _command(
        sub, "add", "gateway.cli.admin:webhooks_add", "register an endpoint; prints its secret once"
    )
    add.add_argument("url", metavar="URL")
    add.add_argument(
        "--events",
        action="append",
        required=True,
        metavar="TYPES",
        help="all, or suppression.added, suppression.removed, consent.given, "
        "consent.confirmed, consent.revoked, subject.erased (a list, or repeated)",
    )
    add.add_argument("--name", help="its name (default: the URL's host)")
    address = add.add_mutually_exclusive_group()
    address.add_argument(
        "--include-address",
        dest="include_address",
        action="store_const",
        const=True,
        help="events carry the address (the company's own CRM)",
    )
    address.add_argument(
        "--hash-only",
        dest="include_address",
        action="store_const",
        const=False,
        help="events carry the SHA-256 only (default: as [webhooks] include_address says)",
    )
    listing = _command(
        sub,
        "list",
        "gateway.cli.admin:webhooks_list",
        "endpoints and deliveries; --failed: dead ones",
    )
    listing.add_argument(
        "--failed", action="store_true", help="the deliveries given up on (exit 1 if any)"
    )
    listing.add_argument("--limit", type=_count, default=100, metavar="N")
    remove = _command(sub, "remove", "gateway.cli.admin:webhooks_remove", "remove an endpoint")
    remove.add_argument("name", metavar="NAME")
    rotate = _command(
        sub,
        "rotate",
        "gateway.cli.admin:webhooks_rotate",
        "a new signing secret; the old one signs too for [webhooks] rotation_hours",
    )
    rotate.add_argument("name", metavar="NAME")
    retry = _command(
        sub, "retry", "gateway.cli.admin:webhooks_retry", "send failed deliveries again"
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    retry.add_argument("--all", action="store_true", help="every failed delivery")


def _version() -> str:
    from importlib.metadata import version

    return f"optgate {version('optgate')}"


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="optgate", description="Gatekeeper for outbound marketing e-mail."
    )
    parser.add_argument("--version", action="version", version=_version())
    _config_option(parser)
    group = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _suppress_commands(group)
    _consent_commands(group)
    _other_commands(group)
    _config_commands(group)
    _ingest_command(group)
    _partner_commands(group)
    _api_key_commands(group)
    _webhook_commands(group)
    return parser


def _user() -> str:
    """The login name, or uid-N when the uid has no passwd entry (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # KeyError up to Python 3.12, OSError from 3.13
        return f"uid-{os.getuid()}"


def _handler(name: str) -> Any:
    """The function ``module:function`` names, imported now."""
    module, _, function = name.partition(":")
    return getattr(import_module(module), function)


async def _checked(handler: Handler, args: argparse.Namespace, config: Config) -> int:
    """Parse a --scope once (a partner's must be known to the store), then run the command
    with the parsed Scope in its place."""
    if getattr(args, "scope", None) is not None:
        from gateway.cli.admin import checked_scope

        args.scope = await checked_scope(config, args.scope)
    return await handler(args, config)


def _run(args: argparse.Namespace) -> int:
    config = load(getattr(args, "config", None))
    handler = _handler(args.handler)
    if getattr(args, "supervise", False):
        status: int = handler(args, config)
        return status
    import asyncio

    import uvloop  # the same asyncio API, a much cheaper event loop and transports

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_checked(handler, args, config))


def _quiet_stdout() -> None:
    """After a closed pipe: nothing more reaches stdout, not even the flush at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    args.actor = f"cli:{_user()}"
    try:
        status = _run(args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return status
    except EXITING as exc:  # the exit status and words of gateway/errors.py
        ending = exit_for(exc)
        if ending.says is None:  # stdout's reader went away: nothing more goes there
            _quiet_stdout()
        else:
            print(f"optgate: {ending.says.format(error=exc)}", file=sys.stderr)
        return ending.status


if __name__ == "__main__":
    sys.exit(main())
