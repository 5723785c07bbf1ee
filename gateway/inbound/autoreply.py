"""Mail that no person wrote to us: auto-replies and out-of-office notices (RFC 3834 and the
common vacation headers), mailing-list traffic, and mail from null or daemon senders."""

from __future__ import annotations

import re
from email.message import Message
from email.utils import getaddresses

from gateway.inbound import parsing

_AUTO_HEADERS = (
    "X-Autoreply",
    "X-Autorespond",
    "X-Autoresponder",
    "X-AutoReply-From",
    "X-Mail-Autoreply",
    "X-Vacation",
    "X-Cron-Env",
    "X-FC-MachineGenerated",
)
# challenge/response systems asking the sender to prove it is a person
_CHALLENGE_HEADERS = ("X-Bluebottle-Request", "X-Boxbe-Id", "X-Spamarrest-Challenge", "X-Challenge")
_CHALLENGE = re.compile(
    r"added to (?:the recipient's|my) (?:allowed|approved|guest) list|guest list"
    r"|protected by (?:bluebottle|boxbe|spamarrest|mailblocks)|challenge[- ]response"
    r"|verify (?:that )?you are (?:a )?(?:real )?(?:person|human)|has been waitlisted",
    re.IGNORECASE,
)
_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})
_SUPPRESS = re.compile(r"\b(?:all|oof|autoreply)\b", re.IGNORECASE)
_SUBJECT = re.compile(
    r"out of (?:the )?office|\bauto(?:matic)?[ -]?(?:reply|response|answer|antwort)|^auto:"
    r"|vacation|away from|on leave|abwesen|absence|absent|r[ée]ponse automatique"
    r"|risposta automatica|respuesta autom[áa]tica|fuera de la oficina|automatyczna"
    r"|automatisch|autoresponder|autoreply|ausser haus|außer haus|自動返信|不在"
    r"|thank you for (?:your )?(?:e-?mail|message|contacting)|we have received your"
    r"|has been waitlisted|please confirm|verify your|challenge",
    re.IGNORECASE,
)
_DAEMON = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|mailerdaemon|mail-daemon|postmaster|post_master|double-bounce"
    r"|bounce|bounces|mdaemon|mail\.?delivery\.?(?:system|subsystem)?)$",
    re.IGNORECASE,
)


def auto_reply(message: Message) -> str | None:
    """Why the message is an automatic reply, or None."""
    submitted = parsing.header(message, "Auto-Submitted").lower()
    if submitted and not submitted.startswith("no"):
        return "auto-reply"
    if any(parsing.header(message, name) for name in _AUTO_HEADERS):
        return "auto-reply"
    precedence = parsing.header(message, "Precedence").lower()
    if precedence in _PRECEDENCE:
        return "auto-reply"
    if _SUPPRESS.search(parsing.header(message, "X-Auto-Response-Suppress")):
        return "auto-reply"
    if any(parsing.header(message, name) for name in _CHALLENGE_HEADERS):
        return "challenge"
    if _CHALLENGE.search(_first_text(message)):
        return "challenge"
    return auto_reply_subject(parsing.header(message, "Subject"))


def _first_text(message: Message) -> str:
    for part in parsing.parts(message):
        if parsing.content_type(part) == "text/plain":
            return parsing.text(part)
    return ""


def auto_reply_subject(subject: str) -> str | None:
    """ "auto-reply" when the subject is an out-of-office or other automatic answer's."""
    return "auto-reply" if _SUBJECT.search(subject) else None


def list_traffic(message: Message) -> bool:
    """Whether the message comes from a mailing list."""
    return any(parsing.header(message, name) for name in ("List-Id", "List-Post"))


def null_sender(mail_from: str | None, message: Message) -> bool:
    """Whether the envelope sender is null (<>) or a mail system's address."""
    if mail_from is not None:
        return mail_from.strip() in ("", "<>") or daemon(mail_from)
    path = parsing.headers(message, "Return-Path")
    if path and not parsing.addresses(path):
        return True
    return any(daemon(address) for address in parsing.addresses(path))


def daemon_from(message: Message) -> bool:
    """Whether the From field names a mail system (also "mailer-daemon" without a domain)."""
    try:
        pairs = getaddresses(parsing.headers(message, "From"))
    except Exception:
        return False
    return any(daemon(address) or daemon(name.replace(" ", "")) for name, address in pairs)


def daemon(address: str) -> bool:
    """Whether the address belongs to a mail system rather than a person."""
    local = address.strip().strip("<>").rpartition("@")[0] or address.strip().strip("<>")
    return bool(_DAEMON.match(local.split("+")[0]))
