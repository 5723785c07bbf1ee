"""Footers that belong to the message: the topic's display name, the reader's language,
a layout for a 600 px newsletter; and the pages in the browser's language."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import html as html_module
import re
import string
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import languages
from gateway.config import Topic, load
from gateway.outbound.footers import Footers
from gateway.outbound.rewrite import Links, prepare
from gateway.tokens import Confirmation
from gateway.web.endpoint import WebSettings
from gateway.wording import LANGUAGES, WORDS
from suppression.errors import ConfigError
from suppression.opening import open_store
from suppression.store import Store
from tests.support.keys import AUDIT_KEY
from tests.support.tiers import needs
from tests.test_rewrite import body_text_parts, content
from tests.test_web import JANE, SETTINGS, Site, seed, site_for

pytestmark = pytest.mark.pure

LINKS = Links("https://unsub.example.com/u/TOKEN", "unsubscribe+t@example.com")
POSTAL = "Shop & Co GmbH, Hauptstr. 1, 10115 Berlin"
NEWSLETTER = Topic(
    name="Our newsletter",
    names={"de": "Unser Newsletter", "fr": "Notre lettre d’information"},
)


def footers(**settings: object) -> Footers:
    options: dict[str, object] = {
        "company": "Shop & Co",
        "postal_address": POSTAL,
        "topics": {"news": NEWSLETTER},
    }
    options.update(settings)
    return Footers(**options)  # type: ignore[arg-type]


def html(language: str = "", lang_attribute: str = "") -> bytes:
    head = f"Content-Language: {language}\n" if language else ""
    attribute = f' lang="{lang_attribute}"' if lang_attribute else ""
    return (
        f"Subject: s\n{head}Content-Type: text/html; charset=utf-8\n\n"
        f"<html{attribute}><body><p>Hallo</p></body></html>\n"
    ).encode()


def footer_of(message: bytes, source: Footers | None = None, topic: str = "news") -> str:
    prepared = prepare(
        message, footer=(source or footers()).topic(topic), list_id=None, feedback_id=None
    )
    out = prepared.render(LINKS)
    assert LINKS.url.encode() in out
    assert max(map(len, re.split(rb"\r\n|\n", out))) <= 998
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    return content(body_text_parts(parsed)["1"])


# --- the wording -----------------------------------------------------------------------


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_has_every_sentence_with_the_same_placeholders(language: str) -> None:
    assert {"en", "de", "fr", "es", "it", "nl", "pt"} <= set(LANGUAGES)
    words, english = WORDS[language], WORDS["en"]
    assert words.keys() == english.keys()
    for key, text in words.items():
        assert placeholders(text) == placeholders(english[key]), key
        assert text.strip() == text, key
        assert text, key


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("de-DE,de;q=0.9,en;q=0.8", "de"),
        ("fr-CH, fr;q=0.9, en;q=0.8", "fr"),
        ("en;q=0.5, nl;q=0.9", "nl"),
        ("sv, pt-BR;q=0.7", "pt"),
        ("sv", "en"),
        ("*", "en"),
        ("it;q=0, es;q=0.1", "es"),
        ("", "en"),
        (None, "en"),
        ("de;q=bogus, fr", "fr"),
    ],
)
def test_accept_language_is_negotiated(header: str | None, expected: str) -> None:
    assert languages.negotiate(header, LANGUAGES, "en") == expected


# --- footers in the message's language --------------------------------------------------


@pytest.mark.parametrize(
    ("message", "sentence"),
    [
        (html("de-DE"), "Sie erhalten diese E-Mail, weil Sie „Unser Newsletter“ abonniert haben."),
        (html("", "fr"), "car vous êtes abonné(e) à « Notre lettre d’information »"),
        (html("nl, en"), "omdat u zich hebt aangemeld voor ‘Our newsletter’"),
        (html("es-MX"), "Recibe este correo porque se suscribió a «Our newsletter»."),
        (html("it", "de"), "Ricevi questa e-mail perché sei iscritto a «Our newsletter»."),
        (html("pt-BR"), "Recebe este e-mail porque se inscreveu em “Our newsletter”."),
        (html("xx"), "You receive this e-mail because you subscribed to “Our newsletter”."),
        (html(), "You receive this e-mail because you subscribed to “Our newsletter”."),
    ],
    ids=[
        "content-language",
        "lang-attribute",
        "first-of-list",
        "region",
        "header-first",
        "pt-br",
        "unknown",
        "none",
    ],
)
def test_the_footer_speaks_the_message_language(message: bytes, sentence: str) -> None:
    text = html_module.unescape(footer_of(message)).replace("\u00a0", " ")
    assert sentence.replace("\u00a0", " ") in text


def test_the_default_language_is_configurable() -> None:
    text = footer_of(html(), footers(default_language="es"))
    assert "Darse de baja" in text


def test_wording_per_language_and_per_topic() -> None:
    source = footers(
        wording={"reason": {"de": "Post von {company} zu {topic}."}},
        topics={
            "news": dataclasses.replace(NEWSLETTER, unsubscribe={"de": "Newsletter abbestellen"}),
            "deals": Topic(reason={"de": "Angebote: {topic}."}),
        },
    )
    german = footer_of(html("de"), source)
    assert "Post von Shop &amp; Co zu Unser Newsletter." in german
    assert "Newsletter abbestellen</a>" in german
    assert "Angebote: deals." in footer_of(html("de"), source, "deals")
    assert "Unsubscribe</a>" in footer_of(html("en"), source)  # other languages: built in


def test_a_language_optgate_lacks_can_be_configured() -> None:
    source = footers(
        wording={"reason": {"sv": "Du får detta om {topic}."}, "unsubscribe": {"sv": "Avsluta"}}
    )
    text = html_module.unescape(footer_of(html("sv-SE"), source))
    assert "Du får detta om Our newsletter." in text
    assert ">Avsluta</a>" in text


def test_display_names_and_postal_address_are_escaped_in_html() -> None:
    source = footers(topics={"news": Topic(name="<b>News</b> & more")})
    page = footer_of(html(), source)
    assert "&lt;b&gt;News&lt;/b&gt; &amp; more" in page
    assert "<b>" not in page
    assert "Shop &amp; Co GmbH" in page
    text = footer_of(b"Content-Type: text/plain; charset=utf-8\n\nHi\n", source)
    assert "<b>News</b> & more" in text  # plain text is not HTML-escaped


def test_the_html_footer_is_centred_and_styled_inline() -> None:
    page = footer_of(html())
    footer = page[page.index("<p>Hallo</p>") + len("<p>Hallo</p>") : page.index("</body>")]
    assert 'align="center"' in footer
    assert "max-width:600px" in footer
    assert "text-align:center" in footer
    assert "<style" not in footer
    assert "class=" not in footer
    assert f'href="{LINKS.url}"' in footer


def test_legacy_templates_replace_the_built_in_footer_with_the_display_name() -> None:
    source = footers(
        text_template="\n-- \n{topic}: {url}\n", html_template="<p>{topic} <a href={url}>x</a></p>"
    )
    page = footer_of(html("de"), source)
    assert "<p>Unser Newsletter <a href=https://unsub.example.com/u/TOKEN>x</a></p>" in page
    text = footer_of(b"Content-Type: text/plain; charset=utf-8\n\nHi\n", source)
    assert text.endswith("-- \nOur newsletter: https://unsub.example.com/u/TOKEN\n")


def test_a_message_without_a_body_part_gets_a_whole_html_document_in_its_language() -> None:
    image = (
        b"Subject: s\nContent-Language: de\nContent-Type: image/png\n"
        b"Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n"
    )
    prepared = prepare(image, footer=footers().topic("news"), list_id=None, feedback_id=None)
    assert prepared.footer_part
    links = Links("https://unsub.example.com/u/T?a=1&b=2", "unsubscribe+t@example.com")
    parsed = email.message_from_bytes(prepared.render(links), policy=email.policy.default)
    part = next(p for p in parsed.walk() if p.get_content_type() == "text/html")
    page = content(part)
    pieces = footers().pieces("news", "de")
    assert pieces.language == "de"
    assert page == (
        '<!DOCTYPE html><html lang="de"><head><meta charset="utf-8"></head><body>'
        + "https://unsub.example.com/u/T?a=1&amp;b=2".join(pieces.html)
        + "</body></html>"
    )


# --- text parts whose charset lacks the footer's characters -------------------------------


def text_message(charset: str, cte: str, body: str = "Bonjour") -> bytes:
    charset_param = f"; charset={charset}" if charset else ""
    cte_field = f"\nContent-Transfer-Encoding: {cte}" if cte else ""
    return (
        f"Subject: s\nContent-Language: fr\nContent-Type: text/plain{charset_param}{cte_field}"
        f"\n\n{body}\n"
    ).encode("latin-1")


def rewritten(message: bytes) -> tuple[bytes, str]:
    prepared = prepare(message, footer=footers().topic("news"), list_id=None, feedback_id=None)
    assert prepared.footer_paths == ("1",), prepared.skipped_parts
    assert not prepared.footer_part
    out = prepared.render(LINKS)
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    return out, content(body_text_parts(parsed)["1"])


def test_an_ascii_part_declares_utf8_for_a_french_footer() -> None:
    for charset in ("", "us-ascii"):
        out, text = rewritten(text_message(charset, ""))
        assert b'Content-Type: text/plain; charset="utf-8"\n' in out
        assert b"Content-Transfer-Encoding: quoted-printable\n" in out
        assert text.startswith("Bonjour\n")
        assert "vous êtes abonné(e) à" in text


def test_a_7bit_utf8_part_goes_quoted_printable_for_accents() -> None:
    out, text = rewritten(text_message("utf-8", "7bit"))
    assert (
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable"
        in out
    )
    assert "Notre lettre d’information" in text


def test_a_latin1_part_takes_plain_quotes_and_keeps_its_accents() -> None:
    out, text = rewritten(text_message("iso-8859-1", "8bit", "Déjà"))
    assert b"charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n" in out
    assert "abonn\xe9(e) \xe0".encode("latin-1") in out  # written in latin-1, unencoded
    assert text.startswith("Déjà\n")
    assert '" Notre lettre d\'information "' in text  # « » and ’ are not in latin-1


def test_an_english_footer_in_an_ascii_7bit_part_stays_7bit() -> None:
    message = b"Subject: s\nContent-Type: text/plain\n\nHello\n"
    out, text = rewritten(message)
    assert b"Content-Transfer-Encoding" not in out
    assert b"charset" not in out
    assert 'you subscribed to "Our newsletter".' in text
    assert out.isascii()


# --- configuration ---------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "optgate.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_topics_and_footer_wording_come_from_the_file(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            """
            [footer]
            default_language = "de"
            unsubscribe = { de = "Abbestellen" }
            [topics.news]
            name = "Our newsletter"
            names = { de = "Unser Newsletter", FR = "Notre lettre" }
            reason = { de = "Sie lesen {topic} von {company}." }
            """,
        ),
        {},
    )
    assert config.topics["news"].names == {"de": "Unser Newsletter", "FR": "Notre lettre"}
    source = Footers.from_config(config)
    assert source.name("news", "fr") == "Notre lettre"
    assert source.name("other", "de") == "other"
    text = footer_of(html(), source)
    assert "Sie lesen Unser Newsletter von Example Ltd." in text
    assert ">Abbestellen</a>" in text
    settings = WebSettings.from_config(config)
    assert settings.default_language == "de"
    assert settings.topic_names["news"]["de"] == "Unser Newsletter"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[topics]\nnews = 1\n", "one table per topic"),
        ("[topics.news]\ntitle = 'x'\n", "unknown key 'title' in [topics.news]"),
        ("[topics.news]\nnames = 'x'\n", "[topics.news] names: expected a table of strings"),
        ("[topics.news]\nreason = { en = '{url}' }\n", "'url' is not a placeholder"),
        ("[topics.news]\nreason = { en = 'a {' }\n", "is not a placeholder"),
        ("[topics.news]\nnames = { xx = 'x' }\n", "no wording in 'xx'"),
        ("[topics.news]\nnames = { 'e n' = 'x' }\n", "is not a language tag"),
        ("[topics.news]\nname = 'x'\nnames = { de = '' }\n", "must be one line of text"),
        ("[topics.'No Topic!']\nname = 'x'\n", "[topics] name"),
        ("[footer]\ndefault_language = 'sv'\n", "default_language: 'sv' is not one of"),
        ("[footer]\nreason = { sv = 'x {topic}' }\n", "needs both reason and unsubscribe"),
    ],
)
def test_bad_wording_is_a_clear_error(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Footers.from_config(load(write(tmp_path, toml), {}))


# --- the pages in the browser's language -----------------------------------------------


@pytest.fixture
@needs("sockets")
async def named_site(tmp_path: Path) -> AsyncIterator[Site]:
    store: Store = await open_store(f"sqlite:///{tmp_path / 'optgate.db'}", audit_key=AUDIT_KEY)
    await seed(store)
    settings = dataclasses.replace(
        SETTINGS,
        topic_names={
            "news": {"": "Our newsletter", "de": "Unser Newsletter"},
            "weekly": {"de": "Wochenpost"},
        },
    )
    try:
        async with site_for(store, settings) as running:
            yield running
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("accept", "language", "words"),
    [
        ("de-DE,de;q=0.9", "de", ["Abmelden", "Sollen wir die E-Mails „Unser Newsletter“"]),
        ("fr-FR", "fr", ["Se désabonner", "Ne plus envoyer les e-mails « Our newsletter »"]),
        ("es", "es", ["Darse de baja", "¿Dejar de enviar los correos «Our newsletter»"]),
        ("it", "it", ["Annulla l’iscrizione", "Non inviare più le e-mail «Our newsletter»"]),
        ("nl-BE", "nl", ["Afmelden", "Wilt u de e-mails ‘Our newsletter’"]),
        ("pt-PT", "pt", ["Cancelar inscrição", "Deixar de enviar os e-mails “Our newsletter”"]),
        ("sv", "en", ["Unsubscribe", "Stop the “Our newsletter” e-mails from Example Ltd"]),
    ],
)
async def test_the_unsubscribe_page_speaks_the_browser_language(
    named_site: Site, accept: str, language: str, words: list[str]
) -> None:
    token = named_site.token(JANE, "topic:news")
    response, page = await named_site.call(
        "GET", f"/u/{token}", headers={"Accept-Language": accept}
    )
    assert response.status == 200
    assert response.headers["Content-Language"] == language
    assert "Accept-Language" in response.headers["Vary"]
    assert f'<html lang="{language}">' in page
    for word in words:
        assert word.replace("\u00a0", " ") in page.replace("\u00a0", " ")


async def test_preferences_and_confirm_pages_in_german(named_site: Site) -> None:
    token = named_site.token(JANE, "topic:news")
    german = {"Accept-Language": "de"}
    _, page = await named_site.call("GET", f"/p/{token}", headers=german)
    assert "Ihre E-Mail-Einstellungen" in page
    assert "<span>Unser Newsletter</span>" in page
    assert 'value="news"' in page  # the form still names the topic itself
    assert "Von Unser Newsletter abmelden" in page
    response, page = await named_site.call(
        "POST", f"/p/{token}", data={"action": "unsubscribe", "topic": "news"}, headers=german
    )
    assert response.status == 303
    _, page = await named_site.call("GET", response.headers["Location"], headers=german)
    assert "Sie sind von „Unser Newsletter“ abgemeldet." in page
    confirm = named_site.signer.issue(
        dataclasses.replace(named_site.signer.verify(token), scope=Confirmation("weekly"))
    )
    _, page = await named_site.call("GET", f"/c/{confirm}", headers=german)
    assert "Bestätigen Sie Ihr Abonnement" in page
    assert "Ja, senden Sie mir E-Mails „Wochenpost“" in page


async def test_error_pages_are_localised_too(named_site: Site) -> None:
    response, page = await named_site.call("GET", "/u/forged", headers={"Accept-Language": "fr"})
    assert response.status == 400
    assert "Lien non valide" in page
    assert "Rien n’a été modifié." in page
    response, page = await named_site.call("GET", "/nowhere", headers={"Accept-Language": "nl"})
    assert response.status == 404
    assert "Op dit adres staat geen pagina." in page
