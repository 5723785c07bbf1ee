"""What the classifier says about an inbound message: frozen values, no behaviour."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from suppression.scope import Scope


class Kind(enum.StrEnum):
    """What a finding asks the store to do about its recipient."""

    UNSUBSCRIBE = "unsubscribe"  # a person asking to stop (unsubscribe@ mail, ARF opt-out)
    HARD_BOUNCE = "hard-bounce"  # 5.x.x about the address (not 5.7.x policy/spam)
    SOFT_BOUNCE = "soft-bounce"  # 4.x.x, mailbox full, delayed, ...
    COMPLAINT = "complaint"  # ARF Feedback-Type abuse (and fraud, virus)
    IGNORED = "ignored"  # auto-reply, not-spam, policy bounce, ordinary mail, unknown


@dataclass(frozen=True)
class Finding:
    """One recipient concerned by an inbound message, and what happened to it."""

    kind: Kind
    # the address the finding is about, as written (DSN Final/Original-Recipient,
    # flufl.bounce, ARF Original-Rcpt-To, or the sender of an unsubscribe mail)
    recipient: str | None
    # candidate optgate tokens, unverified: the X of bounce+X@ / unsubscribe+X@ in the
    # envelope recipient or the returned original's To, Return-Path and List-Unsubscribe
    # mailto, and of https://.../u/X in List-Unsubscribe; they concern the whole message
    tokens: tuple[str, ...]
    status: str | None  # DSN status such as "5.1.1", when known
    reason: str  # short, for logs and audit: "dsn 5.1.1", "arf abuse", "auto-reply", ...
    # the recipient is the message's own author (From) asking for itself, not someone a
    # report or a third party names
    by_author: bool = False
    scope: Scope | None = None  # where an unsubscribe without a token applies (default global)


@dataclass(frozen=True)
class Classification:
    """Every finding of one inbound message, with what identifies the message."""

    message_id: str | None  # the inbound message's own Message-ID
    digest: str  # sha256 hex of the raw bytes
    findings: tuple[Finding, ...]  # one per recipient; one IGNORED finding when nothing applies
