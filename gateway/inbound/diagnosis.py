"""What a delivery failure says about the address: its status code and its text.

The rules, in order (the corpus test in tests/test_classify.py measures them):

- delivered, relayed, expanded: nothing failed (IGNORED).
- X.7.x, or text naming spam, a block list, reputation, policy, authentication (SPF,
  DKIM, DMARC, PTR) or a sender whitelist / challenge, before any other reason: the
  receiver refused *our* mail, which says nothing about the address (IGNORED), be it
  4.x.x (greylisting, "sender not pre-approved") or 5.x.x.
- 4.x.x or Action delayed: temporary (SOFT_BOUNCE).
- The sender's own address or host (X.1.7, X.1.8, "Sender address rejected", a refusal
  after EHLO or MAIL FROM, before any recipient was named, no permission to post to a
  group): about our mail, not the address (IGNORED).
- 5.x.x whose text says the user, mailbox or domain does not exist: HARD_BOUNCE, even
  under 5.7.x, which some MTAs (Gmail once, qmail's badrcptto) use for unknown users,
  unless the text names a spam or policy reason first. The reason a text names first
  wins (a Postfix "Recipient address rejected: Mailbox full" is a full mailbox).
- A mailbox that exists but is frozen, locked, suspended or on hold, and a receiver that
  gave up retrying: SOFT_BOUNCE (disabled, discontinued or closed accounts are hard).
- Mailbox full (5.2.2 included): SOFT_BOUNCE. A full mailbox is usually emptied again;
  one that stays full keeps bouncing and is suppressed after N soft bounces (config).
- Message too big or content refused (5.2.3, 5.3.4, 5.6.x): about this message (IGNORED).
- Other 5.x.x: by the status subject: mail system and network trouble (5.3.x, 5.4.x but
  5.4.4, a domain that cannot be routed to) are SOFT_BOUNCE; everything else (5.0.0,
  5.1.x, 5.2.x, 5.4.4, 5.5.x) is HARD_BOUNCE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.inbound.model import Kind

_STATUS = re.compile(r"(?<![\d.])([245])\.([0-7])\.(\d{1,3})(?!\.?\d)")
_REPLY = re.compile(r"(?:^|[\s;:(\[\"'#])([245][0-5]\d)(?=[ \-)]|$)")
# "#5.1.1" (qmail) and "(#5.7.1)" are statuses as well
_QMAIL_STATUS = re.compile(r"#([245])\.([0-7])\.(\d{1,3})")

_UNKNOWN = re.compile(
    r"user unknown|unknown user|unknown (?:recipient|address|local[- ]part|mailbox|account)"
    r"|no such (?:user|mailbox|recipient|address|account|person|local user)"
    r"|(?:user|mailbox|recipient|address|account|addressee)(?: name)? (?:\S{1,64} )?"
    r"(?:does not|doesn't|did not|no longer) exist|does not exist|doesn't exist|not exist"
    r"|invalid (?:recipient|mailbox|address|user|account)|bad (?:recipient|destination mailbox)"
    r"|(?:mailbox|user|recipient|account) (?:unavailable|not found|not available|is unavailable)"
    r"|mailbox (?:not found|is disabled|disabled)|no mailbox|mail ?box not found"
    r"|not a (?:known|valid) (?:user|recipient|mailbox)|is not a known|unknown or illegal"
    r"|recipient (?:unknown|not found)|recipient address rejected: access denied"
    r"|not our customer|not an active|inactive|deactivated|account (?:has been )?(?:disabled"
    r"|closed|expired|terminated|removed|deleted)|has been disabled|discontinued|no longer"
    r"|has moved|moved permanently|user not found|unrouteable address|unroutable address"
    r"|host(?:name)? unknown|unknown host|host not found|domain (?:not found|does not exist"
    r"|name not found)|no such domain|name or service not known|nxdomain|null mx"
    r"|unknown domain|invalid domain|domain is not|nonexistent|non-existent|not listed in"
    r"|no valid recipients|recipient not|err\.nosuchuser|nosuchuser|bad_recipient|badrcptto"
    r"|user doesn|mailbox unavailable|no account|(?:address|user|recipient|mailbox) (?:was ?n.t"
    r"|was not|could not be|couldn.t be) found|not found",
    re.IGNORECASE,
)
_POLICY = re.compile(
    r"spam|junk|blacklist|black list|blocklist|block list|blocked|denylist|\bbanned"
    r"|\brbl\b|dnsbl|spamhaus|spamcop|barracuda|sorbs|reputation|policy|policies"
    r"|\bspf\b|\bdkim\b|\bdmarc\b|authenticat|\bptr\b|reverse dns|rdns|reverse lookup"
    r"|virus|malware|phish|requires confirmation|whitelist|challenge|content rejected"
    r"|not permitted|prohibited|refused to accept|access denied|client host rejected"
    r"|message (?:was )?(?:rejected|refused|filtered)|filtered|bulk mail|suspicious"
    r"|listed (?:at|in|on|by)|\bblock(?:ed)? by|invalid ip",
    re.IGNORECASE,
)
_SENDER = re.compile(
    r"sender address rejected|sender (?:address |domain )?(?:is )?(?:rejected|unknown|invalid"
    r"|denied|not allowed|blocked)|sender verif|unverifiable sender|domain of sender"
    r"|provide a valid from|purported responsible address|envelope sender|permission to post"
    r"|(?:in reply to|after) (?:mail from|ehlo|helo|the greeting|initial connection)"
    r"|my name was rejected",
    re.IGNORECASE,
)
_FULL = re.compile(
    r"mailbox (?:is )?full|full mailbox|mailbox full|quota|over ?quota|insufficient (?:storage"
    r"|space|disk)|storage (?:space|limit|allocation)|exceeded (?:the )?(?:storage|mailbox)"
    r"|mailbox (?:size|space)|mailbox exceeds|too much mail|disk (?:is )?full"
    r"|out of (?:disk|storage)",
    re.IGNORECASE,
)
_MESSAGE = re.compile(
    r"message (?:is )?too (?:big|large)|message size|size (?:limit|exceeds)|exceeds (?:the )?"
    r"(?:maximum|max|message|size)|too large|mesg too big|attachment",
    re.IGNORECASE,
)
_TEMPORARY = re.compile(
    r"temporar|try again|timed? ?out|deferred|delayed|retry|retrying|still (?:being )?tried"
    r"|connection (?:refused|reset|lost)|too many|rate limit|throttl|greylist|graylist"
    r"|resources|not yet been delivered|will (?:be )?retr|system (?:is )?(?:busy|overloaded)"
    r"|rcpthosts|(?:unable|could not|couldn.t|failed) to connect|requests to connect"
    r"|socket error|unreachable|expired|retry time|could not be delivered within"
    r"|giving up after|gave up after|has been delayed|for the last \d+ (?:seconds|hours|days)"
    r"|failing for a long time|\d+ attempts|retry timeout|timeout exceeded|retries"
    r"|service (?:is )?(?:currently |temporarily )?unavailable|(?:is|been) (?:frozen|locked"
    r"|suspended)|on hold",
    re.IGNORECASE,
)


_TEXTS = (
    ("sender", _SENDER),
    ("user-unknown", _UNKNOWN),
    ("policy", _POLICY),
    ("mailbox-full", _FULL),
    ("message", _MESSAGE),
    ("temporary", _TEMPORARY),
)
_SAID = {
    "sender": Kind.IGNORED,
    "user-unknown": Kind.HARD_BOUNCE,
    "policy": Kind.IGNORED,
    "mailbox-full": Kind.SOFT_BOUNCE,
    "message": Kind.IGNORED,
    "temporary": Kind.SOFT_BOUNCE,
}
_ADDRESS = re.compile(r"\S{1,64}@\S{1,255}")  # bounded: linear on long non-space runs


def _status_in(text: str) -> str | None:
    match = _STATUS.search(text) or _QMAIL_STATUS.search(text)
    return ".".join(match.groups()) if match else None


@dataclass(frozen=True)
class Verdict:
    """What one failure report says about its address."""

    kind: Kind
    status: str | None  # the enhanced status the verdict rests on, when there is one
    why: str  # a word or two: "user-unknown", "policy", "mailbox-full", ...


def status_of(field: str, text: str) -> str | None:
    """The enhanced status: the DSN Status field (unless it is an unspecific X.0.0 and the
    text has a specific one), else one in the text, else the SMTP reply code's class
    ("5.0.0", "4.0.0")."""
    found = [_status_in(source) for source in (field, text)]
    given, written = found
    if given and written and given.endswith(".0.0") and given[0] == written[0]:
        return written
    if given or written:
        return given or written
    reply = _REPLY.search(text)
    if reply:
        return f"{reply.group(1)[0]}.0.0"
    return None


def _said(text: str) -> str | None:
    """What the text says first (addresses left out: "filtered@" is no filter)."""
    text = _ADDRESS.sub(" ", text)
    found = [(match.start(), name) for name, pattern in _TEXTS if (match := pattern.search(text))]
    return min(found)[1] if found else None


def judge(action: str, status: str | None, text: str) -> Verdict:
    """The verdict for one recipient: DSN action ("" if unknown), status, diagnostic text."""
    action = action.lower()
    if action.startswith(("delivered", "relayed", "expanded")):
        return Verdict(Kind.IGNORED, status, action)
    if status is None and action.startswith(("failed", "error")):
        status = "5.0.0"  # failed is permanent by definition
    if status is None and action.startswith("delayed"):
        status = "4.0.0"
    if status is None or status[0] not in "45":
        return Verdict(Kind.IGNORED, status, "no failure")
    said = _said(text)
    subject, detail = status.split(".")[1:]
    if said == "sender" or (subject, detail) in (("1", "7"), ("1", "8")):
        return Verdict(Kind.IGNORED, status, "sender")
    if said == "policy" or (subject == "7" and said != "user-unknown"):
        return Verdict(Kind.IGNORED, status, "policy")
    if action.startswith("delayed") or status[0] == "4":
        return Verdict(Kind.SOFT_BOUNCE, status, "delayed" if action == "delayed" else "temporary")
    if said is not None:
        return Verdict(_SAID[said], status, said)
    if (subject, detail) == ("2", "2"):
        return Verdict(Kind.SOFT_BOUNCE, status, "mailbox-full")
    if (subject, detail) in (("2", "3"), ("3", "4")) or subject == "6":
        return Verdict(Kind.IGNORED, status, "message")
    if subject in ("3", "4") and (subject, detail) != ("4", "4"):
        return Verdict(Kind.SOFT_BOUNCE, status, "system")
    return Verdict(Kind.HARD_BOUNCE, status, "permanent")
