"""The HTML of the web endpoint: small functions that return escaped, self-contained pages.

Plain HTML and one inline style sheet: no JavaScript, no external resources
(the Content-Security-Policy allows neither), readable on a phone, every
button labelled with what it does. Nothing here shows an address in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape


@dataclass(frozen=True, slots=True)
class Look:
    """What every page is dressed in: the company's name, accent colour and closing words."""

    company: str
    accent: str  # a checked #rgb / #rrggbb value: it goes into the style sheet
    note: str = ""
    postal_address: str = ""


@dataclass(frozen=True, slots=True)
class Topic:
    """One list on the preference page."""

    name: str
    subscribed: bool
    can_resubscribe: bool  # the recipient unsubscribed; nothing else blocks it


@dataclass(frozen=True, slots=True)
class Standing:
    """What a recipient receives, as far as the pages tell it."""

    address: str  # already masked
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


INVALID_LINK = "This link is not valid. Nothing was changed."


def mask(address: str | None) -> str:
    """``j***@example.com``; without a stored address, "your address"."""
    if not address or "@" not in address:
        return "your address"
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def scope_words(scope: str, company: str) -> str:
    """A scope as a reader would say it."""
    kind, _, name = scope.partition(":")
    if kind == "topic":
        return f"the “{name}” e-mails from {company}"
    if kind == "partner":
        return f"offers {company} sends on behalf of {name}"
    return f"all marketing e-mail from {company}"


def unsubscribe(
    look: Look,
    scope: str,
    standing: Standing,
    button: Form,
    prefs: str,
    wider: Form | None = None,
) -> str:
    """GET /u: what the link would do, one button to do it (and a wider second choice),
    what the recipient gets now."""
    also = f"<p>Or, wider:</p>{_form(wider)}" if wider else ""
    body = (
        f"<h1>Unsubscribe</h1>"
        f"<p>Stop {_e(scope_words(scope, look.company))} to <strong>{_e(standing.address)}"
        f"</strong>?</p>{_form(button)}{also}{_receives(standing)}"
        f'<p><a href="{_e(prefs)}">Choose what you receive</a></p>'
    )
    return _page(look, "Unsubscribe", body)


def unsubscribed(look: Look, scope: str, standing: Standing, undo: Form | None, prefs: str) -> str:
    """After the page's button: done, and a way back for a slipped finger."""
    again = f"<p>Did not mean to?</p>{_form(undo)}" if undo else ""
    body = (
        f'<h1>You are unsubscribed</h1><p role="status">{_e(standing.address)} will no longer '
        f"receive {_e(scope_words(scope, look.company))}.</p>{again}"
        f'<p><a href="{_e(prefs)}">Choose what you receive</a></p>'
    )
    return _page(look, "You are unsubscribed", body)


def preferences(look: Look, standing: Standing, action: str, status: str | None) -> str:
    """The preference page: one row per list, and everything at once."""
    note = f'<p class="status" role="status">{_e(status)}</p>' if status else ""
    rows = "".join(_topic_row(topic, action) for topic in standing.topics)
    lists = f'<ul class="topics">{rows}</ul>' if rows else "<p>You are on no lists with us.</p>"
    body = (
        f"<h1>Your e-mail preferences</h1>{note}"
        f"<p>For <strong>{_e(standing.address)}</strong>.</p>"
        f"{_all_off(standing, action, look.company)}{lists}{_stop_all(standing, action)}"
    )
    return _page(look, "Your e-mail preferences", body)


def confirm(look: Look, purpose: str, address: str, button: Form | None) -> str:
    """GET /c: confirm a subscription someone asked for (or see it is already confirmed)."""
    ask = (
        f"<p>Someone, hopefully you, asked {_e(look.company)} to send “{_e(purpose)}” e-mail "
        f"to <strong>{_e(address)}</strong>.</p>{_form(button)}"
        "<p>If it was not you, close this page: nothing will be sent.</p>"
        if button
        else f"<p>“{_e(purpose)}” e-mail to <strong>{_e(address)}</strong> is already "
        "confirmed.</p>"
    )
    return _page(look, "Confirm your subscription", f"<h1>Confirm your subscription</h1>{ask}")


def confirmed(look: Look, purpose: str, current: bool) -> str:
    """After POST /c: confirmed, or a link older than the recipient's latest choice."""
    text = (
        f"Thank you: you will receive “{purpose}” e-mail from {look.company}."
        if current
        else "You changed this subscription after this link was sent. Nothing was changed."
    )
    title = "Subscription confirmed" if current else "This link is out of date"
    return _page(look, title, f'<h1>{_e(title)}</h1><p role="status">{_e(text)}</p>')


def held(look: Look, action: str, address: str, button: Form | None) -> str:
    """GET /r: what a mailed link would do, and the button that does it (none: done)."""
    if action == "unsubscribe":
        title = "Stop our e-mail"
        ask = (
            f"<p>We received an e-mail asking {_e(look.company)} to stop sending marketing "
            f"e-mail to <strong>{_e(address)}</strong>.</p>"
        )
        done = "This address is unsubscribed from all our marketing e-mail."
    else:
        title = "Receive our e-mail again"
        ask = (
            f"<p>A report that mail to <strong>{_e(address)}</strong> could not be delivered, "
            f"or a complaint about it, stopped {_e(look.company)}'s marketing e-mail to it.</p>"
        )
        done = "You receive the e-mail you subscribed to again."
    body = f"{ask}{_form(button)}" if button else f'<p role="status">{_e(done)}</p>'
    return _page(look, title, f"<h1>{_e(title)}</h1>{body}")


def held_done(look: Look, action: str) -> str:
    """After POST /r: done."""
    if action == "unsubscribe":
        title, text = "You are unsubscribed", "You will no longer receive our marketing e-mail."
    else:
        title, text = "Welcome back", "You receive the e-mail you subscribed to again."
    return _page(look, title, f'<h1>{_e(title)}</h1><p role="status">{_e(text)}</p>')


def lift_form(look: Look, action: str) -> str:
    """GET /lift: ask for a link that lifts a stop caused by a delivery report."""
    form = (
        f'<form method="post" action="{_e(action)}"><p><label for="address">Your e-mail '
        'address</label><br><input type="email" id="address" name="address" required '
        'autocomplete="email" style="font:inherit;width:100%;padding:.5rem"></p>'
        '<button type="submit">Mail me a link</button></form>'
    )
    body = (
        "<h1>Not receiving our e-mail?</h1><p>If a report that mail to your address could "
        f"not be delivered, or a complaint, stopped {_e(look.company)}'s e-mail to you, we mail "
        f"you a link that starts it again.</p>{form}"
    )
    return _page(look, "Not receiving our e-mail?", body)


def lift_sent(look: Look) -> str:
    """After POST /lift: the same words whatever was found, so nobody learns about others."""
    text = (
        "If such a report stopped our e-mail to this address, we have mailed it a link. "
        "It works for 7 days."
    )
    return _page(
        look, "Check your inbox", f'<h1>Check your inbox</h1><p role="status">{_e(text)}</p>'
    )


def problem(look: Look, title: str, text: str) -> str:
    """An error page: what happened, in one sentence."""
    return _page(look, title, f"<h1>{_e(title)}</h1><p>{_e(text)}</p>")


def _receives(standing: Standing) -> str:
    if standing.all_off:
        return "<p>You are unsubscribed from all our e-mail.</p>"
    if not standing.subscribed:
        return "<p>You are on no lists with us.</p>"
    items = "".join(f"<li>{_e(name)}</li>" for name in standing.subscribed)
    return f"<p>You receive:</p><ul>{items}</ul>"


def _all_off(standing: Standing, action: str, company: str) -> str:
    if not standing.all_off:
        return ""
    note = f"<p>You are unsubscribed from all e-mail from {_e(company)}.</p>"
    if not standing.can_resume_all:
        return note
    return note + _form(Form(action, (("action", "resubscribe-all"),), "Resubscribe to everything"))


def _stop_all(standing: Standing, action: str) -> str:
    if standing.all_off:
        return ""
    stop = Form(action, (("action", "unsubscribe-all"),), "Unsubscribe from everything")
    return f"<h2>Everything</h2>{_form(stop)}"


def _topic_row(topic: Topic, action: str) -> str:
    name = _e(topic.name)
    if topic.subscribed:
        state, verb, label = "subscribed", "unsubscribe", f"Unsubscribe from {topic.name}"
    elif topic.can_resubscribe:
        state, verb, label = "unsubscribed", "resubscribe", f"Resubscribe to {topic.name}"
    else:
        return f"<li><span>{name}</span> <em>not sent to you</em></li>"
    form = Form(action, (("action", verb), ("topic", topic.name)), label)
    return f"<li><span>{name}</span> <em>{state}</em>{_form(form)}</li>"


def _form(form: Form | None) -> str:
    if form is None:
        return ""
    hidden = "".join(
        f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">'
        for name, value in form.fields
    )
    kind = ' class="quiet"' if form.quiet else ""
    return (
        f'<form method="post" action="{_e(form.action)}">{hidden}'
        f'<button type="submit"{kind}>{_e(form.label)}</button></form>'
    )


def _e(text: str) -> str:
    return escape(text, quote=True)


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


def _page(look: Look, title: str, body: str) -> str:
    company = _e(look.company)
    style = _STYLE.replace("ACCENT", look.accent)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{_e(title)} · {company}</title><style>{style}</style></head>"
        f"<body><header>{company}</header><main>{body}</main>"
        f"<footer><p>{_e(look.note)}</p><p>{_e(look.postal_address)}</p></footer>"
        "</body></html>"
    )
