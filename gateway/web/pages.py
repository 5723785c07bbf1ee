"""The HTML of the web endpoint, in the reader's language: Jinja2 templates
(gateway/templates/pages/) with autoescaping, so every value shown is escaped.

Plain HTML and one inline style sheet: no JavaScript, no external resources
(the Content-Security-Policy allows neither), readable on a phone, every
button labelled with what it does. Nothing here shows an address in full.
The words are gateway/wording.py's in :attr:`Look.language` (the web endpoint
picks it from the browser's Accept-Language); topics go by their display names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from gateway.templating import ENVIRONMENT
from gateway.wording import WORDS
from suppression.scope import Scope


@dataclass(frozen=True, slots=True)
class Look:
    """What every page is dressed in, and the language it speaks."""

    company: str
    accent: str  # a checked #rgb / #rrggbb value: it goes into the style sheet
    note: str = ""
    postal_address: str = ""
    language: str = "en"  # one of gateway.wording.LANGUAGES
    names: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # topic -> lang -> name

    def speaking(self, language: str) -> Look:
        """The same look in another language."""
        return dataclasses.replace(self, language=language if language in WORDS else "en")

    def say(self, key: str, **values: str) -> str:
        """A sentence of the wording in this language, as plain text."""
        return WORDS[self.language][key].format(**values)

    def topic(self, name: str) -> str:
        """A topic's display name in this language."""
        names = self.names.get(name, {})
        return names.get(self.language) or names.get("") or name


@dataclass(frozen=True, slots=True)
class Topic:
    """One list on the preference page."""

    name: str
    subscribed: bool
    can_resubscribe: bool  # the recipient unsubscribed; nothing else blocks it


@dataclass(frozen=True, slots=True)
class Standing:
    """What a recipient receives, as far as the pages tell it."""

    address: str  # already masked; "" when optgate holds none
    topics: tuple[Topic, ...]
    all_off: bool  # unsubscribed from everything (or blocked)
    can_resume_all: bool  # that was the recipient's own unsubscribe

    @property
    def subscribed(self) -> tuple[str, ...]:
        """Lists mail is sent for (none while everything is off)."""
        return () if self.all_off else tuple(t.name for t in self.topics if t.subscribed)


@dataclass(frozen=True, slots=True)
class Form:
    """A one-button form: where it posts, its hidden fields, the button's words."""

    action: str
    fields: tuple[tuple[str, str], ...]
    label: str
    quiet: bool = False  # a secondary button


@dataclass(frozen=True, slots=True)
class _Row:
    """One list on the preference page, as shown."""

    name: str
    state: str
    form: Form | None


_DONE = {  # ?done= after a preference change -> its status line
    "unsubscribed": "done_unsubscribed",
    "resubscribed": "done_resubscribed",
    "unsubscribed-all": "done_unsubscribed_all",
    "resubscribed-all": "done_resubscribed_all",
}


def mask(address: str | None) -> str:
    """``j***@example.com``; "" without a stored address (the pages say "your address")."""
    if not address or "@" not in address:
        return ""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def scope_words(look: Look, scope: Scope) -> str:
    """A scope as a reader would say it."""
    if scope.kind == "topic":
        return look.say("scope_topic", name=look.topic(scope.name), company=look.company)
    if scope.kind == "partner":
        return look.say("scope_partner", name=scope.name, company=look.company)
    return look.say("scope_global", company=look.company)


def done(look: Look, what: str, topic: str) -> str | None:
    """The status line after a preference change (``?done=``), or None for an unknown one."""
    key = _DONE.get(what)
    return look.say(key, topic=look.topic(topic)) if key else None


def unsubscribe(
    look: Look,
    scope: Scope,
    standing: Standing,
    button: Form,
    prefs: str,
    wider: Form | None = None,
) -> str:
    """GET /u: what the link would do, one button to do it (and a wider second choice),
    what the recipient gets now."""
    return _page(
        "unsubscribe",
        look,
        look.say("unsubscribe_title"),
        scope=scope_words(look, scope),
        address=_address(look, standing.address),
        standing=standing,
        subscribed=[look.topic(name) for name in standing.subscribed],
        button=button,
        wider=wider,
        prefs=prefs,
    )


def unsubscribed(
    look: Look, scope: Scope, standing: Standing, undo: Form | None, prefs: str
) -> str:
    """After the page's button: done, and a way back for a slipped finger."""
    return _page(
        "unsubscribed",
        look,
        look.say("unsubscribed_title"),
        scope=scope_words(look, scope),
        address=_address(look, standing.address),
        undo=undo,
        prefs=prefs,
    )


def preferences(look: Look, standing: Standing, action: str, status: str | None) -> str:
    """The preference page: one row per list, and everything at once."""
    resume = Form(action, (("action", "resubscribe-all"),), look.say("resubscribe_all"))
    stop = Form(action, (("action", "unsubscribe-all"),), look.say("unsubscribe_all"))
    return _page(
        "preferences",
        look,
        look.say("preferences_title"),
        status=status,
        address=_address(look, standing.address),
        standing=standing,
        rows=[_row(look, topic, action) for topic in standing.topics],
        resume_all=resume if standing.all_off and standing.can_resume_all else None,
        stop_all=None if standing.all_off else stop,
    )


def confirm(look: Look, purpose: str, address: str, button: Form | None) -> str:
    """GET /c: confirm a subscription someone asked for (or see it is already confirmed)."""
    return _page(
        "confirm",
        look,
        look.say("confirm_title"),
        purpose=look.topic(purpose),
        address=_address(look, address),
        button=button,
    )


def confirmed(look: Look, purpose: str, current: bool) -> str:
    """After POST /c: confirmed, or a link older than the recipient's latest choice."""
    shown = look.topic(purpose)
    if current:
        text = look.say("confirmed_text", purpose=shown, company=look.company)
        return _page("message", look, look.say("confirmed_title"), text=text, status=True)
    text = look.say("outdated_text")
    return _page("message", look, look.say("outdated_title"), text=text, status=True)


def held(look: Look, action: str, address: str, button: Form | None) -> str:
    """GET /r: what a mailed link would do, and the button that does it (none: done).

    In English only so far: the wording tables do not have these sentences yet."""
    shown = _address(look, address)
    if action == "unsubscribe":
        title = "Stop our e-mail"
        ask = Markup("We received an e-mail asking {} to stop sending marketing e-mail to {}.")
        done_text = "This address is unsubscribed from all our marketing e-mail."
    else:
        title = "Receive our e-mail again"
        ask = Markup(
            "A report that mail to {1} could not be delivered, or a complaint about it, "
            "stopped {0}'s marketing e-mail to it."
        )
        done_text = "You receive the e-mail you subscribed to again."
    question = ask.format(look.company, _strong(shown))
    return _page("held", look, title, question=question, button=button, done=done_text)


def held_done(look: Look, action: str) -> str:
    """After POST /r: done."""
    if action == "unsubscribe":
        title, text = "You are unsubscribed", "You will no longer receive our marketing e-mail."
    else:
        title, text = "Welcome back", "You receive the e-mail you subscribed to again."
    return _page("message", look, title, text=text, status=True)


def lift_form(look: Look, action: str) -> str:
    """GET /lift: ask for a link that lifts a stop caused by a delivery report."""
    return _page("lift", look, "Not receiving our e-mail?", action=action)


def lift_sent(look: Look) -> str:
    """After POST /lift: the same words whatever was found, so nobody learns about others."""
    text = (
        "If such a report stopped our e-mail to this address, we have mailed it a link. "
        "It works for 7 days."
    )
    return _page("message", look, "Check your inbox", text=text, status=True)


def problem(look: Look, title: str, text: str, **values: str) -> str:
    """An error page: what happened, in one sentence. ``title`` and ``text`` are wording
    keys (``bad_link_title``), or else shown as they are."""
    words = WORDS[look.language]
    heading = words[title].format(**values) if title in words else title
    sentence = words[text].format(**values) if text in words else text
    return _page("message", look, heading, text=sentence, status=False)


def _row(look: Look, topic: Topic, action: str) -> _Row:
    shown = look.topic(topic.name)
    if topic.subscribed:
        state, verb, label = "state_subscribed", "unsubscribe", "unsubscribe_from"
    elif topic.can_resubscribe:
        state, verb, label = "state_unsubscribed", "resubscribe", "resubscribe_to"
    else:
        return _Row(shown, look.say("state_not_sent"), None)
    fields = (("action", verb), ("topic", topic.name))
    return _Row(shown, look.say(state), Form(action, fields, look.say(label, topic=shown)))


def _address(look: Look, masked: str) -> str:
    return masked or look.say("your_address")


def _strong(text: str) -> Markup:
    return Markup("<strong>{}</strong>").format(text)


def _page(template: str, look: Look, title: str, **context: object) -> str:
    words = WORDS[look.language]

    def t(key: str, **values: object) -> Markup:
        """A sentence of the wording, its values escaped unless they are Markup."""
        return escape(words[key]).format(**values)

    style = _STYLE.replace("ACCENT", look.accent)
    return ENVIRONMENT.get_template(f"pages/{template}.html").render(
        look=look,
        title=title,
        t=t,
        strong=_strong,
        style=Markup(style),  # noqa: S704 - our style sheet; the accent is a checked colour
        **context,
    )


_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:1.0625rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1f1f1f;background:#f6f7f9}
header{background:ACCENT;color:#fff;padding:.75rem 1.25rem;font-weight:600}
main{max-width:36rem;margin:1.5rem auto;padding:1.5rem 1.25rem;background:#fff;
border-radius:.5rem;box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{font-size:1.5rem;line-height:1.25;margin:0 0 1rem;color:ACCENT}
h2{font-size:1.125rem;margin:1.5rem 0 .5rem}
button{font:inherit;font-weight:600;color:#fff;background:ACCENT;border:2px solid ACCENT;
border-radius:.375rem;padding:.625rem 1.25rem;min-height:2.75rem;cursor:pointer}
button.quiet{color:ACCENT;background:#fff}
button:focus-visible,a:focus-visible{outline:3px solid #1f1f1f;outline-offset:2px}
a{color:ACCENT}
form{margin:.75rem 0}
.topics{list-style:none;padding:0}
.topics li{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1rem;
padding:.5rem 0;border-bottom:1px solid #e3e3e3}
.topics span{font-weight:600;flex:1 1 8rem}
.topics form{margin:0}
.status{background:#eef6ee;border-left:4px solid #1e7e34;padding:.5rem .75rem}
footer{max-width:36rem;margin:0 auto 2rem;padding:0 1.25rem;color:#555;font-size:.875rem}
"""
