"""classify(): what an inbound message asks of the suppression list.

Pure (bytes in, a Classification out, no I/O) and total: any input, however broken,
gives a Classification. The message's way is one ordered list of rules; the first that
recognises the message decides:

    loop         mail from optgate's own bounce+ / unsubscribe+ addresses
    complaint    ARF feedback reports (abuse -> COMPLAINT, opt-out -> UNSUBSCRIBE)
    dsn          RFC 3464 reports, per recipient (gateway/inbound/diagnosis.py decides)
    unsubscribe  mail to unsubscribe@ / unsubscribe+TOKEN@ written by a person
    automatic    auto-replies, out-of-office notices, list traffic
    bounce text  non-standard bounces: flufl.bounce (Mailman's detectors) finds the
                 addresses, the text next to each says hard or soft; a bounce to
                 bounce+TOKEN@ whose text names no address gives one finding with the token

Tokens are candidates only, never verified here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import HeaderParser

from flufl.bounce import all_failures

from gateway.inbound import addressing, autoreply, diagnosis, dsn, feedback, parsing
from gateway.inbound.model import Classification, Finding, Kind

__all__ = ["Classification", "Finding", "Kind", "classify"]

# flufl.bounce logs a detector's exception with the message's text; we catch it instead
logging.getLogger("flufl.bounce").addHandler(logging.NullHandler())
logging.getLogger("flufl.bounce").propagate = False

_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|not (?:be )?delivered|delivery (?:status|failure|failed|notification"
    r"|problem|error|report|has failed)|returned mail|return(?:ed)? to sender|failure notice"
    r"|mail delivery|non[- ]?delivery|nondeliverable|bounce|permanent error|mail failure"
    r"|could not send|rejected|mail system error|warning: could not",
    re.IGNORECASE,
)
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "To")
# where a text bounce starts quoting the returned message; possessive blanks: a line of
# many spaces must not backtrack quadratically (the regex holds the GIL, and so the loop)
_QUOTED = re.compile(
    r"^[ \t]*+(?:(?:-{2,}+|={2,}+|\*{2,}+)[ \t]*+)?"
    r"(?:below this line is a copy|this is a copy of|original message|returned message"
    r"|undelivered message|unsent message|the original message"
    r"|message headers? follow|headers? of the original|forwarded message)",
    re.IGNORECASE | re.MULTILINE,
)
_ENTRY = re.compile(r"[ \t]*<?([^\s<>()\[\]\\,;:\"'@]{1,64}@[A-Za-z0-9.-]{1,252}[A-Za-z0-9])")
# bounded repeats keep the scans linear on long runs of non-space text
_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"'@]{1,64}@[A-Za-z0-9.-]{1,252}[A-Za-z0-9]")


@dataclass(frozen=True)
class _Mail:
    """A parsed inbound message with its envelope, as every rule sees it."""

    message: Message
    original: Message | None  # the returned original's headers, in reports and bounces
    raw: bytes
    mail_from: str | None
    rcpt_to: list[str]  # the envelope recipient, else the Delivered-To / X-Original-To / To
    bounce_local: str
    unsubscribe_local: str

    @property
    def locals_(self) -> tuple[str, ...]:
        return (self.bounce_local, self.unsubscribe_local)

    def tokens(self) -> tuple[str, ...]:
        """Candidate tokens from the envelope recipient and the returned original."""
        found = addressing.tokens(self.rcpt_to, self.locals_)
        if self.original is not None:
            found.extend(addressing.original_tokens(self.original, self.locals_))
        return addressing.unique(found)

    def finding(
        self, kind: Kind, recipient: str | None, reason: str, status: str | None = None
    ) -> Finding:
        return Finding(kind, recipient, self.tokens(), status, reason)

    def path(self) -> list[str]:
        """The envelope sender as given, else the Return-Path fields."""
        if self.mail_from is not None:
            return [self.mail_from]
        return parsing.headers(self.message, "Return-Path")

    def senders(self) -> list[str]:
        """The envelope sender (else Return-Path), then the From addresses."""
        return parsing.addresses([*self.path(), *parsing.headers(self.message, "From")])


def classify(
    raw: bytes,
    *,
    mail_from: str | None = None,
    rcpt_to: str | None = None,
    unsubscribe_local: str = "unsubscribe",
    bounce_local: str = "bounce",
) -> Classification:
    """Classify one inbound message; mail_from / rcpt_to are the SMTP envelope when known."""
    digest = hashlib.sha256(raw).hexdigest()
    message_id = None
    try:
        message = parsing.parse(raw)
        message_id = parsing.header(message, "Message-ID") or None
        if rcpt_to is not None:
            recipients = [rcpt_to]
        else:
            fields = [parsing.headers(message, name) for name in _ENVELOPE_HEADERS]
            recipients = parsing.addresses([value for field in fields for value in field])
        mail = _Mail(
            message,
            parsing.returned(message) or _inline_original(message),
            raw,
            mail_from,
            recipients,
            bounce_local,
            unsubscribe_local,
        )
        for rule in _RULES:
            findings = rule(mail)
            if findings:
                return Classification(message_id, digest, tuple(findings))
        ignored = mail.finding(Kind.IGNORED, None, "not a bounce, complaint or unsubscribe")
    except Exception:  # the promise: never raise, whatever came in
        ignored = Finding(Kind.IGNORED, None, (), None, "unreadable")
    return Classification(message_id, digest, (ignored,))


def _loop(mail: _Mail) -> list[Finding]:
    """Mail from optgate's own addresses: the envelope sender in any form, or a From with a
    token (a plain bounce@ in From may be another system's daemon)."""
    envelope = parsing.addresses(mail.path())
    tagged = parsing.addresses(parsing.headers(mail.message, "From"))
    if any(addressing.ours(address, mail.locals_) for address in envelope) or any(
        addressing.tokens([address], mail.locals_) for address in tagged
    ):
        return [mail.finding(Kind.IGNORED, None, "loop: from an optgate address")]
    return []


def _complaint(mail: _Mail) -> list[Finding]:
    return [
        mail.finding(report.kind, recipient, f"arf {report.feedback_type}")
        for report in feedback.feedback(mail.message, mail.original)
        for recipient in report.recipients or (None,)
    ]


def _dsn(mail: _Mail) -> list[Finding]:
    reports = dsn.reports(mail.message, mail.raw)
    if not reports:
        return []
    if _bounce_of_bounce(mail):
        return [mail.finding(Kind.IGNORED, None, "loop: bounce of a bounce")]
    notice = _notice(mail.message)
    findings: list[Finding] = []
    seen: set[str | None] = set()
    if any(report.recipient for report in reports):
        reports = [report for report in reports if report.recipient]
    for report in reports:
        if report.recipient in seen:
            continue
        seen.add(report.recipient)
        unspecific = report.status in ("", "5.0.0", "4.0.0")  # then the notice may say more
        text = report.diagnostic or (_context(notice, report.recipient) if unspecific else "")
        status = diagnosis.status_of(report.status, text)
        verdict = diagnosis.judge(report.action, status, text)
        reason = f"dsn {verdict.status or report.action or 'unknown'} {verdict.why}"
        findings.append(mail.finding(verdict.kind, report.recipient, reason, verdict.status))
    return findings


def _unsubscribe(mail: _Mail) -> list[Finding]:
    apple = parsing.header(mail.message, "X-Apple-Unsubscribe").lower() == "true"
    tags = [addressing.tagged(address, mail.unsubscribe_local) for address in mail.rcpt_to]
    if not apple and all(tag is None for tag in tags):
        return []
    senders = mail.senders()
    if autoreply.null_sender(mail.mail_from, mail.message) or any(map(autoreply.daemon, senders)):
        return [mail.finding(Kind.IGNORED, None, "unsubscribe mail from a null sender")]
    why = None if apple else autoreply.auto_reply(mail.message)
    if why is None and autoreply.list_traffic(mail.message):
        why = "list traffic"
    if why is not None:
        return [mail.finding(Kind.IGNORED, None, f"unsubscribe mail: {why}")]
    # the writer (From) asks for itself; the envelope sender alone never counts (anyone can
    # write any, and forwarders rewrite it)
    writer = parsing.addresses(parsing.headers(mail.message, "From"))[:1]
    if not writer:
        return [mail.finding(Kind.IGNORED, None, "unsubscribe mail without a From address")]
    found = mail.finding(Kind.UNSUBSCRIBE, writer[0], "unsubscribe mail")
    return [dataclasses.replace(found, by_author=True)]


def _automatic(mail: _Mail) -> list[Finding]:
    if _looks_like_bounce(mail):
        return []
    why = autoreply.auto_reply(mail.message)
    if why is None and autoreply.list_traffic(mail.message):
        why = "list traffic"
    return [mail.finding(Kind.IGNORED, None, why)] if why else []


def _bounce_text(mail: _Mail) -> list[Finding]:
    if not _looks_like_bounce(mail):
        return []
    if _bounce_of_bounce(mail):
        return [mail.finding(Kind.IGNORED, None, "loop: bounce of a bounce")]
    try:
        temporary, permanent = all_failures(mail.message)
    except Exception:  # a detector tripped over the input: no addresses from it
        temporary, permanent = frozenset(), frozenset()
    exclude = _not_recipients(mail)
    notice = _notice(mail.message)
    soft = _plausible([raw.decode("ascii", "replace") for raw in sorted(temporary)], mail, exclude)
    failed = _plausible(
        [raw.decode("ascii", "replace") for raw in sorted(permanent)], mail, exclude
    )
    if not soft and not failed:
        failed = _plausible(parsing.headers(mail.message, "X-Failed-Recipients"), mail, exclude)
    if not soft and not failed:
        failed = _named(notice, mail, exclude)
    if not soft and not failed:
        return _verp(mail, notice) or [mail.finding(Kind.IGNORED, None, "bounce naming no one")]
    findings: list[Finding] = []
    for action, addresses in (("delayed", soft), ("failed", failed)):
        for address in addresses:
            verdict = _text_verdict(action, notice, address)
            reason = f"bounce text {verdict.status} {verdict.why}"
            findings.append(mail.finding(verdict.kind, address, reason, verdict.status))
    return findings


def _text_verdict(action: str, notice: str, address: str) -> diagnosis.Verdict:
    """The verdict of a text bounce for one address: from the lines about it, else from the
    whole notice (many bounces give the reason once for all, or before the address)."""
    text = _context(notice, address)
    verdict = diagnosis.judge(action, diagnosis.status_of("", text), text)
    if verdict.why == "permanent" and text != notice:
        status = verdict.status if verdict.status != "5.0.0" else None
        whole = diagnosis.judge(action, status or diagnosis.status_of("", notice), notice)
        if whole.why != "permanent":
            return whole
    return verdict


def _verp(mail: _Mail, text: str) -> list[Finding]:
    """A bounce to bounce+TOKEN@ that names no address: one finding with the token only."""
    if not addressing.tokens(mail.rcpt_to, (mail.bounce_local,)):
        return []
    status = diagnosis.status_of("", text)
    verdict = diagnosis.judge("failed", status, text)
    if status is None and verdict.why == "permanent":  # neither a code nor a reason
        return [mail.finding(Kind.IGNORED, None, "verp: no failure stated")]
    reason = f"verp {verdict.status} {verdict.why}"
    return [mail.finding(verdict.kind, None, reason, verdict.status)]


_RULES: tuple[Callable[[_Mail], list[Finding]], ...] = (
    _loop,
    _complaint,
    _dsn,
    _unsubscribe,
    _automatic,
    _bounce_text,
)


def _looks_like_bounce(mail: _Mail) -> bool:
    """Whether a mail system, not a person, says delivery failed."""
    message = mail.message
    if parsing.header(message, "X-Failed-Recipients"):
        return True
    if autoreply.daemon_from(message):
        return True
    subject = parsing.header(message, "Subject")
    return bool(_BOUNCE_SUBJECT.search(subject)) and autoreply.auto_reply_subject(subject) is None


def _bounce_of_bounce(mail: _Mail) -> bool:
    original = mail.original
    if original is None:
        return False
    if parsing.param(original, "report-type") == "delivery-status":
        return True
    senders = parsing.addresses(parsing.headers(original, "From"))
    subject = parsing.header(original, "Subject")
    return any(map(autoreply.daemon, senders)) and bool(_BOUNCE_SUBJECT.search(subject))


def _not_recipients(mail: _Mail) -> set[str]:
    """Addresses a bounce names that are not failed recipients: its own sender and
    recipient, the returned original's sender."""
    names = [*parsing.headers(mail.message, "From"), *parsing.headers(mail.message, "To")]
    if mail.original is not None:
        names += parsing.headers(mail.original, "From") + parsing.headers(
            mail.original, "Return-Path"
        )
    found = {address.lower() for address in parsing.addresses(names)}
    if mail.mail_from:
        found.add(mail.mail_from.lower())
    return {address for address in found if "@" in address}


def _plausible(values: list[str], mail: _Mail, exclude: set[str]) -> list[str]:
    """The addresses in those values that may be failed recipients, each once."""
    found: list[str] = []
    for value in values:
        for address in _ADDRESS.findall(value):
            address = address.strip(".")
            if address.lower() in exclude or addressing.ours(address, mail.locals_):
                continue
            if address not in found:
                found.append(address)
    return found[: dsn.MAX_RECIPIENTS]


def _named(notice: str, mail: _Mail, exclude: set[str]) -> list[str]:
    """The addresses a text bounce names, when no detector found any; when it names none,
    the returned original's addressee, if it had exactly one."""
    named = _plausible([notice], mail, exclude)
    if named or mail.original is None:
        return named
    fields = [parsing.headers(mail.original, name) for name in ("To", "Cc")]
    addressed = parsing.addresses([value for field in fields for value in field])
    return addressed if len(addressed) == 1 else []


def _notice(message: Message) -> str:
    """The human-readable text of a report or bounce, without the returned original (a
    multipart whose boundary is broken counts as text)."""
    chunks: list[str] = []
    for part in _own_parts(message):
        kind = parsing.content_type(part)
        if kind in ("text/plain", "text/html") or (
            kind.startswith("multipart/") and not part.is_multipart()
        ):
            chunks.append(parsing.text(part))
    notice = "\n".join(chunks)[: parsing.MAX_TEXT]
    quoted = _QUOTED.search(notice)
    return notice[: quoted.start()] if quoted else notice


def _inline_original(message: Message) -> Message | None:
    """The headers of an original quoted in a text bounce ("Original message:" and on)."""
    chunks = [parsing.text(part) for part in _own_parts(message)]
    text = "\n".join(chunk for chunk in chunks if chunk)[: parsing.MAX_TEXT]
    quoted = _QUOTED.search(text)
    if quoted is None:
        return None
    rest = text[quoted.end() :].split("\n", 1)[-1].lstrip()
    original = HeaderParser(policy=policy.compat32).parsestr(rest, headersonly=True)
    return original if original.keys() else None


def _own_parts(message: Message) -> list[Message]:
    """The parts of the message outside any message/* part it contains."""
    found: list[Message] = []
    stack = [message]
    while stack and len(found) < parsing.MAX_PARTS:
        part = stack.pop()
        found.append(part)
        kind = parsing.content_type(part)
        payload = part.get_payload()
        if kind.startswith("multipart/") and isinstance(payload, list):
            stack.extend(child for child in reversed(payload) if isinstance(child, Message))
    return found


def _context(notice: str, address: str | None) -> str:
    """The lines of the notice about one address: its line and the next few, up to the
    next line starting with another address; the whole notice when the address is not in it."""
    lines = notice.splitlines()
    needle = (address or "").lower()
    for number, line in enumerate(lines):
        if needle and needle in line.lower():
            about = [line]
            for following in lines[number + 1 : number + 8]:
                entry = _ENTRY.match(following)
                if entry and entry.group(1).lower() != needle:
                    break
                about.append(following)
            return "\n".join(about)
    return notice
