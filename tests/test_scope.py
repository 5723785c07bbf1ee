"""suppression.scope.Scope: parsed once at the edge, text only for the store."""

from __future__ import annotations

import pytest

from suppression.errors import OptgateError
from suppression.scope import GLOBAL, InvalidScope, Scope

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("global", GLOBAL),
        ("topic:news", Scope("topic", "news")),
        ("partner:acme", Scope("partner", "acme")),
        ("topic:a.long_name-2", Scope.topic("a.long_name-2")),
        ("topic:partner-offers", Scope.topic("partner-offers")),
    ],
)
def test_parse_and_render_round_trip(text: str, scope: Scope) -> None:
    assert Scope.parse(text) == scope
    assert str(scope) == text
    assert Scope.parse(str(scope)) == scope


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "use global, topic:NAME or partner:NAME"),
        ("everything", "use global, topic:NAME or partner:NAME"),
        ("Global", "use global, topic:NAME or partner:NAME"),
        ("global:x", "use global, topic:NAME or partner:NAME"),
        ("list:news", "use global, topic:NAME or partner:NAME"),
        ("topic:", "topic '' is not valid"),
        ("topic:Bad Name", "topic 'Bad Name' is not valid"),
        ("partner:two words", "partner 'two words' is not valid"),
        ("topic:" + "x" * 65, "is not valid"),
    ],
)
def test_bad_text_is_an_error_that_says_what_to_use(text: str, problem: str) -> None:
    with pytest.raises(OptgateError, match=problem):
        Scope.parse(text)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("global", "x"), ("topic", ""), ("partner", ""), ("topic", "A B"), ("list", "news")],
)
def test_no_scope_holds_a_bad_name(kind: str, name: str) -> None:
    with pytest.raises(OptgateError):
        Scope(kind, name)  # type: ignore[arg-type]


def test_scopes_are_values() -> None:
    assert Scope.topic("news") == Scope.parse("topic:news")
    assert len({GLOBAL, Scope.parse("global"), Scope.topic("news")}) == 2
    assert GLOBAL.is_global
    assert not Scope.partner("acme").is_global
    assert sorted([Scope.topic("b"), GLOBAL, Scope.partner("a")]) == [
        GLOBAL,
        Scope.partner("a"),
        Scope.topic("b"),
    ]
    assert issubclass(InvalidScope, OptgateError)
