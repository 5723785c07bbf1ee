"""[inbound] addresses: which envelope recipients are optgate's own, and bad settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.config import Inbound
from gateway.inbound.mailboxes import Mailboxes, Role
from suppression.errors import ConfigError

pytestmark = pytest.mark.pure

TOKEN = "a" * 40


def mailboxes(**settings: Any) -> Mailboxes:
    found = Mailboxes.from_config(dataclasses.replace(Inbound(["in.example.com"]), **settings))
    assert found is not None
    return found


def test_inbound_is_off_without_domains() -> None:
    assert Mailboxes.from_config(Inbound()) is None


@pytest.mark.parametrize(
    ("address", "role"),
    [
        ("unsubscribe@in.example.com", Role.UNSUBSCRIBE),
        (f"unsubscribe+{TOKEN}@in.example.com", Role.UNSUBSCRIBE),
        (f"<Unsubscribe+{TOKEN.upper()}@IN.example.com>", Role.UNSUBSCRIBE),
        (f"bounce+{TOKEN}@in.example.com", Role.BOUNCE),
        ("bounce@in.example.com", Role.BOUNCE),
        ("fbl@in.example.com", Role.FEEDBACK),
        ("unsubscribe@example.com", None),
        ("news@in.example.com", None),
        ("unsubscribes@in.example.com", None),
        ("in.example.com", None),
        ("", None),
    ],
)
def test_role(address: str, role: Role | None) -> None:
    assert mailboxes().role(address) == role


def test_custom_local_parts_and_several_domains() -> None:
    boxes = mailboxes(
        domains=["a.example", "b.example"], bounce_local="return", feedback_local="abuse-fbl"
    )
    assert boxes.role("return+x@b.example") is Role.BOUNCE
    assert boxes.role("abuse-fbl@a.example") is Role.FEEDBACK
    assert boxes.role("bounce@a.example") is None
    assert (boxes.domains[0], boxes.local(Role.BOUNCE), boxes.local(Role.UNSUBSCRIBE)) == (
        "a.example",
        "return",
        "unsubscribe",
    )


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"domains": ["not a domain"]}, r"\[inbound\] domains"),
        ({"bounce_local": "bounce+x"}, r"\[inbound\] bounce_local: 'bounce\+x' is not a local"),
        ({"unsubscribe_local": ""}, "unsubscribe_local"),
        ({"feedback_local": "fbl@x"}, "feedback_local"),
        ({"unsubscribe_local": "u" * 24}, "exceed 64 characters; use at most 23"),
        ({"feedback_local": "bounce"}, "differ"),
    ],
)
def test_bad_settings_are_one_line_errors(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        mailboxes(**settings)
