"""The footer of every marketing copy: in the reader's language, naming the topic as
readers know it, laid out to sit centred under a typical 600 px newsletter.

The language is the message's (see :func:`gateway.outbound.rewrite.prepare`: its
Content-Language, else its HTML's lang) when optgate has wording for it, else
``[footer] default_language``. The wording is ``[topics.NAME]``'s for that
language, else ``[footer]``'s, else the built-in one (gateway/wording.py); the
topic's display name is ``[topics.NAME] names`` for the language, else its
``name``, else the topic itself. The HTML comes from gateway/templates/footer.html
through Jinja2 with autoescaping, the text from footer.txt; ``[unsubscribe]
footer_text`` / ``footer_html``, when set, replace them in every language.

Each footer is rendered once per topic and language, with a marker where the
recipient's URL goes, and split there (:class:`gateway.outbound.rewrite.FooterPieces`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

from gateway import languages
from gateway.config import Config, Topic
from gateway.outbound.rewrite import FooterPieces, FooterTemplates
from gateway.templating import ENVIRONMENT, URL_MARK
from gateway.wording import FOOTER_KEYS, LANGUAGES, WORDS
from suppression.errors import ConfigError, OptgateError
from suppression.model import check_name

_PLACEHOLDERS = {"topic": "", "company": ""}
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*")
_CONFIG_KEYS = {"footer_reason": "reason", "footer_unsubscribe": "unsubscribe"}


@dataclass(frozen=True)
class Wording:
    """Configured footer words: key ("reason", "unsubscribe") -> language -> text."""

    words: Mapping[str, Mapping[str, str]]

    def get(self, key: str, language: str) -> str | None:
        return self.words.get(_CONFIG_KEYS[key], {}).get(language)


class Footers:
    """The footers of all topics, rendered on first use per topic and language."""

    def __init__(
        self,
        *,
        company: str,
        postal_address: str,
        default_language: str = "en",
        wording: Mapping[str, Mapping[str, str]] | None = None,
        topics: Mapping[str, Topic] | None = None,
        text_template: str = "",
        html_template: str = "",
    ) -> None:
        self.company, self.postal_address = company, postal_address
        self._wording = Wording(_lowered(wording or {}))
        self._topics = {name: _topic_lowered(topic) for name, topic in (topics or {}).items()}
        configured = {lang for table in self._wording.words.values() for lang in table}
        self.languages = tuple(dict.fromkeys([*LANGUAGES, *sorted(configured)]))
        self.default_language = default_language.strip().lower()
        self._text_template, self._html_template = text_template, html_template
        self._rendered: dict[tuple[str, str], FooterPieces] = {}
        self._check()

    @classmethod
    def from_config(cls, config: Config) -> Footers:
        """The footers ``[footer]``, ``[topics]`` and ``[unsubscribe]`` describe."""
        return cls(
            company=config.unsubscribe.company,
            postal_address=config.unsubscribe.postal_address,
            default_language=config.footer.default_language,
            wording={"reason": config.footer.reason, "unsubscribe": config.footer.unsubscribe},
            topics=config.topics,
            text_template=config.unsubscribe.footer_text,
            html_template=config.unsubscribe.footer_html,
        )

    def topic(self, topic: str) -> TopicFooter:
        """The footer of one topic, for :func:`gateway.outbound.rewrite.prepare`."""
        return TopicFooter(self, topic)

    def name(self, topic: str, language: str) -> str:
        """The topic's display name in a language."""
        settings = self._topics.get(topic)
        if settings is None:
            return topic
        return settings.names.get(language) or settings.name or topic

    def names(self) -> dict[str, dict[str, str]]:
        """topic -> language -> display name ("" for any language), for the web pages."""
        return {
            topic: {"": settings.name, **settings.names} for topic, settings in self._topics.items()
        }

    def pieces(self, topic: str, tag: str | None) -> FooterPieces:
        """The footer of a topic for text in the language ``tag`` (or the default)."""
        language = languages.best(tag, self.languages, self.default_language)
        key = (topic, language)
        if key not in self._rendered:
            self._rendered[key] = self._render(topic, language)
        return self._rendered[key]

    def word(self, topic: str, key: str, language: str) -> str:
        """One footer word: the topic's, else [footer]'s, else built in (else the default's)."""
        settings = self._topics.get(topic)
        own: Mapping[str, str] = {}
        if settings is not None:
            own = settings.reason if key == "footer_reason" else settings.unsubscribe
        found = own.get(language) or self._wording.get(key, language)
        if found:
            return found
        builtin = WORDS.get(language) or WORDS.get(self.default_language) or WORDS["en"]
        return builtin[key]

    def _render(self, topic: str, language: str) -> FooterPieces:
        name = self.name(topic, language)
        values = {
            "reason": self.word(topic, "footer_reason", language).format(
                topic=name, company=self.company
            ),
            "unsubscribe": self.word(topic, "footer_unsubscribe", language),
            "postal_address": self.postal_address,
            "company": self.company,
            "language": language,
            "url": Markup(URL_MARK),  # noqa: S704 - a constant, replaced by the escaped URL
        }
        text = ENVIRONMENT.get_template("footer.txt").render(values)
        page = ENVIRONMENT.get_template("footer.html").render(values)
        legacy = FooterTemplates(
            self._text_template.replace("{topic}", name),
            self._html_template.replace("{topic}", escape(name)),
            self.postal_address,
        ).pieces()
        return FooterPieces(
            legacy.text if self._text_template else tuple(text.split(URL_MARK)),
            legacy.html if self._html_template else tuple(page.split(URL_MARK)),
            language,
        )

    def _check(self) -> None:
        """Every configured word is usable; ConfigError names the one that is not."""
        if self.default_language not in self.languages:
            raise ConfigError(
                f"[footer] default_language: {self.default_language!r} is not one of "
                f"{', '.join(self.languages)} (or give [footer] reason and unsubscribe for it)"
            )
        for lang in self.languages:
            if lang not in LANGUAGES and not all(self._wording.get(k, lang) for k in FOOTER_KEYS):
                raise ConfigError(
                    f"[footer]: language {lang!r} needs both reason and unsubscribe wording"
                )
        tables = [("[footer]", key, table) for key, table in self._wording.words.items()]
        for topic, settings in self._topics.items():
            try:
                check_name(topic, "[topics] name")
            except OptgateError as exc:
                raise ConfigError(str(exc)) from None
            where = f"[topics.{topic}]"
            tables += [(where, "names", settings.names), (where, "reason", settings.reason)]
            tables.append((where, "unsubscribe", settings.unsubscribe))
        for where, key, table in tables:
            for lang, text in table.items():
                _check_word(where, key, lang, text, self.languages)


def _check_word(where: str, key: str, lang: str, text: str, known: tuple[str, ...]) -> None:
    if not _LANGUAGE.fullmatch(lang):
        raise ConfigError(f"{where} {key}: {lang!r} is not a language tag (en, de, pt-br, ...)")
    if lang not in known:
        raise ConfigError(
            f"{where} {key}: optgate has no wording in {lang!r}: give [footer] reason and "
            "unsubscribe for it"
        )
    if not text.strip() or "\n" in text or "\r" in text:
        raise ConfigError(f"{where} {key}.{lang}: must be one line of text")
    if key == "reason":
        try:
            text.format(**_PLACEHOLDERS)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"{where} reason.{lang}: {exc!s} is not a placeholder: use {{topic}} or "
                "{company} (write {{ and }} for braces)"
            ) from None


def _lowered(wording: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    return {
        key: {lang.lower(): text for lang, text in table.items()} for key, table in wording.items()
    }


def _topic_lowered(topic: Topic) -> Topic:
    def lower(table: Mapping[str, str]) -> dict[str, str]:
        return {lang.lower(): text for lang, text in table.items()}

    return Topic(topic.name, lower(topic.names), lower(topic.reason), lower(topic.unsubscribe))


@dataclass(frozen=True)
class TopicFooter:
    """One topic's footer in any language: what :func:`gateway.outbound.rewrite.prepare` asks."""

    footers: Footers
    topic: str

    def pieces(self, language: str | None) -> FooterPieces:
        """The footer for text in ``language`` (a tag as the message gives it)."""
        return self.footers.pieces(self.topic, language)
