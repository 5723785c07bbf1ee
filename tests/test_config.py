"""gateway.config.load: defaults, one TOML file, OPTGATE_* overrides; errors name the key."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.config import Config, host_port, load
from suppression.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI tests read os.environ: no OPTGATE_* setting of the caller leaks in."""
    for name in list(os.environ):
        if name.startswith("OPTGATE_"):
            monkeypatch.delenv(name)


def sections() -> dict[str, type[Any]]:
    """The sections with keys; [topics.NAME] tables are tested apart (test_footers.py)."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "topics"}


def keys() -> list[tuple[str, str, Any]]:
    """Every (section, key, declared type)."""
    return [
        (section, key, kind)
        for section, cls in sections().items()
        for key, kind in typing.get_type_hints(cls).items()
    ]


def write(tmp_path: Path, text: str, name: str = "optgate.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_need_no_file_and_match_the_spec() -> None:
    config = load(None, {})
    assert config.smtp.listen == "127.0.0.1:10025"
    assert config.smtp.allowed_clients == ["127.0.0.0/8", "::1/128"]
    assert config.smtp.max_message_size == 26214400
    assert config.relay.next_hop == "127.0.0.1:10026"
    assert config.store.url == "sqlite:///optgate.db"
    assert config.policy.action == "drop"
    assert config.policy.require_consent is True
    assert config.policy.default_topic == "marketing"
    assert config.unsubscribe.base_url == "http://127.0.0.1:8080"
    assert config.unsubscribe.mailto == "unsubscribe@example.com"
    assert config.web.listen == "127.0.0.1:8080"
    assert config == Config()


def test_list_and_table_defaults_are_not_shared() -> None:
    one, two = load(None, {}), load(None, {})
    one.smtp.allowed_clients.append("10.0.0.0/8")
    one.policy.consent_versions["news"] = "2"
    assert two.smtp.allowed_clients == ["127.0.0.0/8", "::1/128"]
    assert two.policy.consent_versions == {}
    assert Config().smtp.allowed_clients == ["127.0.0.0/8", "::1/128"]


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [smtp]
        listen = "0.0.0.0:25"
        allowed_clients = ["10.0.0.0/8"]
        max_message_size = 1048576
        [relay]
        next_hop = "mx.internal:25"
        starttls = "required"
        [store]
        url = "sqlite:////var/lib/optgate/optgate.db"
        keep_addresses = false
        [policy]
        action = "reject"
        require_consent = false
        consent_versions = { news = "2024-05", "partner-offers" = "3" }
        """,
    )
    config = load(path, {})
    assert config.smtp.listen == "0.0.0.0:25"
    assert config.smtp.allowed_clients == ["10.0.0.0/8"]
    assert config.smtp.max_message_size == 1048576
    assert config.smtp.max_recipients == 1000  # untouched keys keep their defaults
    assert config.relay.next_hop == "mx.internal:25"
    assert config.relay.starttls == "required"
    assert config.store.url == "sqlite:////var/lib/optgate/optgate.db"
    assert config.store.keep_addresses is False
    assert config.policy.action == "reject"
    assert config.policy.require_consent is False
    assert config.policy.consent_versions == {"news": "2024-05", "partner-offers": "3"}
    assert config.web == Config().web


def test_optgate_config_names_the_file_and_an_explicit_path_wins(tmp_path: Path) -> None:
    from_env = write(tmp_path, '[relay]\nnext_hop = "env.example:25"\n', "env.toml")
    explicit = write(tmp_path, '[relay]\nnext_hop = "flag.example:25"\n', "flag.toml")
    assert load(None, {"OPTGATE_CONFIG": from_env}).relay.next_hop == "env.example:25"
    assert load(explicit, {"OPTGATE_CONFIG": from_env}).relay.next_hop == "flag.example:25"
    assert load(None, {"OPTGATE_CONFIG": ""}) == Config()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[relay]\nnext_hop = "file.example:25"\npool_size = 4\n')
    config = load(path, {"OPTGATE_RELAY_NEXT_HOP": "env.example:2525"})
    assert config.relay.next_hop == "env.example:2525"
    assert config.relay.pool_size == 4


def sample(kind: Any) -> tuple[str, Any]:
    """An environment text for a declared type and the value it must become."""
    if kind is str:
        return "from-env value", "from-env value"
    if kind is int:
        return "4242", 4242
    if kind is bool:
        return "false", False
    if typing.get_origin(kind) is list:
        return "10.1.0.0/16, 10.2.0.0/16", ["10.1.0.0/16", "10.2.0.0/16"]
    return '{ news = "7", "partner-offers" = "2024-05" }', {
        "news": "7",
        "partner-offers": "2024-05",
    }


CHOICES = {
    ("relay", "starttls"): "never",
    ("policy", "action"): "reject",
    ("dkim", "canonicalization"): "simple/simple",
    ("partners", "tls"): "implicit",
}


@pytest.mark.parametrize(("section", "key", "kind"), keys(), ids=lambda v: str(v))
def test_every_key_has_an_environment_override(section: str, key: str, kind: Any) -> None:
    text, value = sample(kind)
    if (section, key) in CHOICES:
        text = value = CHOICES[section, key]
    if kind is bool and value == getattr(getattr(Config(), section), key):
        text, value = "true", True  # a switch that is off by default
    config = load(None, {f"OPTGATE_{section.upper()}_{key.upper()}": text})
    assert getattr(getattr(config, section), key) == value
    assert getattr(getattr(config, section), key) != getattr(getattr(Config(), section), key)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
    ],
)
def test_environment_booleans(text: str, value: bool) -> None:
    assert load(None, {"OPTGATE_POLICY_REQUIRE_CONSENT": text}).policy.require_consent is value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10.0.0.0/8", ["10.0.0.0/8"]),
        ("10.0.0.0/8,::1/128", ["10.0.0.0/8", "::1/128"]),
        (" 10.0.0.0/8 , , ::1/128 ", ["10.0.0.0/8", "::1/128"]),
        ('["10.0.0.0/8", "::1/128"]', ["10.0.0.0/8", "::1/128"]),
        ("[]", []),
        ("", []),
    ],
)
def test_environment_lists(text: str, value: list[str]) -> None:
    assert load(None, {"OPTGATE_SMTP_ALLOWED_CLIENTS": text}).smtp.allowed_clients == value


def test_environment_tables_and_integers() -> None:
    config = load(
        None,
        {
            "OPTGATE_POLICY_CONSENT_VERSIONS": '{marketing="3"}',
            "OPTGATE_POLICY_SENDER_TOPICS": '{"news@example.com"="news", "@shop.example"="deals"}',
            "OPTGATE_SMTP_MAX_MESSAGE_SIZE": "0",
            "OPTGATE_SMTP_MAX_RECIPIENTS": "1_000",
        },
    )
    assert config.policy.consent_versions == {"marketing": "3"}
    assert config.policy.sender_topics == {"news@example.com": "news", "@shop.example": "deals"}
    assert config.smtp.max_message_size == 0
    assert config.smtp.max_recipients == 1000


def error(path: str | None, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, environ)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[nope]\n", ["[nope]"]),
        ("[policy]\nbounce = true\n", ["'bounce'", "[policy]"]),
        ("policy = 1\n", ["[policy]", "table"]),
        ('[policy]\naction = "bounce"\n', ["[policy] action", "'bounce'"]),
        ('[relay]\nstarttls = "sometimes"\n', ["[relay] starttls"]),
        ('[policy]\nrequire_consent = "yes"\n', ["[policy] require_consent", "true or false"]),
        ("[smtp]\nmax_message_size = true\n", ["[smtp] max_message_size", "integer"]),
        ('[smtp]\nmax_message_size = "25M"\n', ["[smtp] max_message_size"]),
        ("[smtp]\nmax_message_size = -1\n", ["[smtp] max_message_size"]),
        ("[smtp]\nmax_message_size = 1.5\n", ["[smtp] max_message_size"]),
        ("[smtp]\nlisten = 25\n", ["[smtp] listen", "a string"]),
        ('[smtp]\nallowed_clients = "10.0.0.0/8"\n', ["[smtp] allowed_clients", "list"]),
        ("[smtp]\nallowed_clients = [1, 2]\n", ["[smtp] allowed_clients"]),
        ("[policy]\nconsent_versions = { news = 3 }\n", ["[policy] consent_versions", "table"]),
        ('[policy]\nconsent_versions = ["3"]\n', ["[policy] consent_versions"]),
        ('[web]\n[web.extra]\nx = "y"\n', ["'extra'", "[web]"]),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, text: str, names: list[str]) -> None:
    message = error(write(tmp_path, text), {})
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("OPTGATE_SMTP_MAX_RECIPIENTS", "twelve"),
        ("OPTGATE_SMTP_MAX_RECIPIENTS", "-1"),
        ("OPTGATE_SMTP_MAX_RECIPIENTS", "1.5"),
        ("OPTGATE_SMTP_MAX_RECIPIENTS", "true"),
        ("OPTGATE_SMTP_MAX_RECIPIENTS", ""),
        ("OPTGATE_STORE_KEEP_ADDRESSES", "maybe"),
        ("OPTGATE_STORE_KEEP_ADDRESSES", ""),
        ("OPTGATE_SMTP_ALLOWED_CLIENTS", "[1, 2]"),
        ("OPTGATE_SMTP_ALLOWED_CLIENTS", "[10.0.0.0/8]"),  # a TOML array of bare words
        ("OPTGATE_POLICY_CONSENT_VERSIONS", "marketing=3"),  # not an inline table
        ("OPTGATE_POLICY_CONSENT_VERSIONS", '{marketing="3"'),
        ("OPTGATE_POLICY_CONSENT_VERSIONS", "{marketing=3}"),
        ("OPTGATE_POLICY_CONSENT_VERSIONS", '{a={b="c"}}'),
        ("OPTGATE_POLICY_ACTION", "bounce"),
        ("OPTGATE_RELAY_STARTTLS", "sometimes"),
    ],
)
def test_environment_errors_name_the_key(name: str, text: str) -> None:
    message = error(None, {name: text})
    section, key = name.removeprefix("OPTGATE_").lower().split("_", 1)
    assert name in message or f"[{section}] {key}" in message


@pytest.mark.parametrize(
    "name", ["OPTGATE_POLICY_NOPE", "OPTGATE_NOPE", "OPTGATE_SMTP", "OPTGATE_policy_action"]
)
def test_unknown_environment_variables_are_errors(name: str) -> None:
    message = error(None, {name: "x"})
    assert name in message


def test_other_environment_variables_are_ignored() -> None:
    assert load(None, {"PATH": "/bin", "OPTGATEWAY": "x", "HOME": "/root"}) == Config()


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert missing in error(missing, {})
    assert missing in error(None, {"OPTGATE_CONFIG": missing})


def test_directory_is_named(tmp_path: Path) -> None:
    message = error(str(tmp_path), {})
    assert str(tmp_path) in message


def test_invalid_toml_is_named_with_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, '[smtp]\nlisten = "127.0.0.1:25"\n[policy\n')
    message = error(path, {})
    assert path in message
    assert "not valid TOML" in message
    assert "line 3" in message


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[unsubscribe]\ncompany = "M\xfcller GmbH"\n')
    assert str(path) in error(str(path), {})


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"OPTGATE_POLICY_ACTION": "bounce"}, "action"),
        ({"OPTGATE_NOPE": "1"}, "OPTGATE_NOPE"),
        ({"OPTGATE_CONFIG": "/nonexistent/optgate.toml"}, "/nonexistent/optgate.toml"),
    ],
)
def test_cli_with_a_bad_configuration_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    environ: dict[str, str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["suppress", "check", "a@example.com"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("optgate: ")
    assert needle in captured.err
    assert not (tmp_path / "optgate.db").exists(), "no store is opened with a bad config"


def test_cli_config_option_before_and_after_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = write(tmp_path, "[policy]\nunknown_key = 1\n")
    for argv in (
        ["--config", bad, "suppress", "check", "a@example.com"],
        ["suppress", "check", "--config", bad, "a@example.com"],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert bad in err
        assert "unknown_key" in err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:10025", ("127.0.0.1", 10025)),
        ("[::1]:25", ("::1", 25)),
        (":2525", ("127.0.0.1", 2525)),
        ("mx.example.com:0", ("mx.example.com", 0)),
    ],
)
def test_host_port(value: str, expected: tuple[str, int]) -> None:
    assert host_port(value, "[relay] next_hop") == expected


@pytest.mark.parametrize("value", ["localhost", "host:", "host:port", "host:65536", "host:-1"])
def test_host_port_errors_name_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[relay\] next_hop"):
        host_port(value, "[relay] next_hop")
