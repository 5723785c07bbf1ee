"""The Jinja2 environment of the footers and the web pages (gateway/templates/).

Autoescaping is on for ``.html`` templates, so every value a template shows is
escaped unless it is Markup; ``.txt`` templates (the plain-text footer) are not
escaped. An undefined name is an error, not an empty string.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

# where the recipient's URL goes in a rendered footer, which is then split there: private-use
# characters no template or configured word holds
URL_MARK = "\ue000optgate-url\ue001"

ENVIRONMENT = Environment(
    loader=PackageLoader("gateway", "templates"),
    autoescape=select_autoescape(("html",), default_for_string=True),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
