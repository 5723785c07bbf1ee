"""gateway.config.load: defaults, one TOML file, OPTGATE_* overrides; errors name the key."""

from __future__ import annotations

import ipaddress
import os
import pwd
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import configshow
from gateway.cli import main as cli
from gateway.config import Config, HostPort, effective, load, options, sections
from gateway.runtime import statedir
from suppression.errors import ConfigError

pytestmark = pytest.mark.pure


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI tests read os.environ: no OPTGATE_* setting of the caller leaks in."""
    for name in list(os.environ):
        if name.startswith("OPTGATE_"):
            monkeypatch.delenv(name)


def keys() -> list[tuple[str, str, Any]]:
    """Every (section, key, type as TOML holds it)."""
    return [(option.section, option.key, option.kind) for option in options()]


def text(section: str, key: str, value: Any) -> Any:
    """A loaded value as TOML holds it (``host:port``, networks as text)."""
    [option] = [o for o in options() if (o.section, o.key) == (section, key)]
    return option.text(value)


def write(tmp_path: Path, text: str, name: str = "optgate.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_need_no_file_and_match_the_spec() -> None:
    config = load(None, {"STATE_DIRECTORY": "/var/lib/x"})
    assert config.smtp.listen == HostPort("127.0.0.1", 10025)
    assert text("smtp", "allowed_clients", config.smtp.allowed_clients) == [
        "127.0.0.0/8",
        "::1/128",
    ]
    assert config.smtp.max_message_size == 26214400
    assert config.relay.next_hop == HostPort("127.0.0.1", 10026)
    assert Config().store.url == Config().store.state_dir == ""  # derived, below
    assert config.store.url == "sqlite:////var/lib/x/optgate.db"
    assert config.unsubscribe.key_file == "/var/lib/x/optgate.key"
    assert config.policy.action == "drop"
    assert config.policy.require_consent is True
    assert config.policy.default_topic == "marketing"
    assert config.unsubscribe.base_url == "http://127.0.0.1:8080"
    assert config.unsubscribe.mailto == "unsubscribe@example.com"
    assert config.web.listen == HostPort("127.0.0.1", 8080)
    assert config.api.listen == HostPort("127.0.0.1", 8081)
    assert config.inbound.listen is None  # empty: off
    derived = {"store", "unsubscribe"}
    assert all(getattr(config, s) == getattr(Config(), s) for s in sections() if s not in derived)


def test_list_and_table_defaults_are_not_shared() -> None:
    one, two = load(None, {}), load(None, {})
    one.dkim.extra_headers.append("x-mine")
    one.policy.consent_versions["news"] = "2"
    assert two.dkim.extra_headers == []
    assert two.policy.consent_versions == {}
    assert Config().dkim.extra_headers == []
    assert isinstance(Config().smtp.allowed_clients, tuple)  # parsed networks: never changed


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
    assert config.smtp.listen == HostPort("0.0.0.0", 25)  # noqa: S104
    assert config.smtp.allowed_clients == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.smtp.max_message_size == 1048576
    assert config.smtp.max_recipients == 1000  # untouched keys keep their defaults
    assert config.relay.next_hop == HostPort("mx.internal", 25)
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
    assert str(load(None, {"OPTGATE_CONFIG": from_env}).relay.next_hop) == "env.example:25"
    assert str(load(explicit, {"OPTGATE_CONFIG": from_env}).relay.next_hop) == "flag.example:25"
    assert load(None, {"OPTGATE_CONFIG": ""}) == load(None, {})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[relay]\nnext_hop = "file.example:25"\npool_size = 4\n')
    config = load(path, {"OPTGATE_RELAY_NEXT_HOP": "env.example:2525"})
    assert config.relay.next_hop == HostPort("env.example", 2525)
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
        return "10.1.0.0/16, 10.2.0.0/16", ["10.1.0.0/16", "10.2.0.0/16"]  # (also resolvers)
    return '{ news = "7", "partner-offers" = "2024-05" }', {
        "news": "7",
        "partner-offers": "2024-05",
    }


PATHS = {
    ("store", "state_dir"),
    ("store", "audit_key_file"),
    ("store", "audit_anchor_file"),
    ("unsubscribe", "key_file"),
    ("inbound", "keep_raw"),
    ("partners", "tls_cert"),
    ("partners", "tls_key"),
    ("relay", "tls_ca_file"),
}
CHOICES = {
    ("relay", "starttls"): "never",
    ("relay", "tls_verify"): "never",
    ("relay", "uncertain"): "resend",
    ("policy", "action"): "reject",
    ("dkim", "canonicalization"): "simple/simple",
    ("partners", "tls"): "implicit",
}
HOST_PORTS = {
    ("smtp", "listen"),
    ("relay", "next_hop"),
    ("web", "listen"),
    ("api", "listen"),
    ("inbound", "listen"),
    ("partners", "listen"),
}
RESOLVERS = {
    ("inbound", "dns_servers"): (
        "10.1.0.1, [2001:db8::1]:5353",
        ["10.1.0.1:53", "[2001:db8::1]:5353"],
    ),
}

SENDER_LISTS = {  # addresses or domains, lower-cased at load
    ("policy", "transactional_senders"): (
        "noreply@shop.example, Billing@Shop.Example",
        ["noreply@shop.example", "billing@shop.example"],
    ),
    ("policy", "marketing_senders"): ("news@shop.example", ["news@shop.example"]),
    ("policy", "transactional_domains"): (
        "@Shop.example, mail.shop.example",
        ["shop.example", "mail.shop.example"],
    ),
}


@pytest.mark.parametrize(("section", "key", "kind"), keys(), ids=lambda v: str(v))
def test_every_key_has_an_environment_override(section: str, key: str, kind: Any) -> None:
    given, value = sample(kind)
    if (section, key) in CHOICES:
        given = value = CHOICES[section, key]
    if (section, key) in HOST_PORTS:
        given = value = "192.0.2.1:2525"
    if (section, key) in RESOLVERS:
        given, value = RESOLVERS[section, key]
    if (section, key) in SENDER_LISTS:
        given, value = SENDER_LISTS[section, key]
    if (section, key) in PATHS:
        value = str(Path.cwd() / given)  # a relative path in the environment: from here
    if kind is bool and value == getattr(getattr(Config(), section), key):
        given, value = "true", True  # a switch that is off by default
    config = load(None, {f"OPTGATE_{section.upper()}_{key.upper()}": given})
    loaded = getattr(getattr(config, section), key)
    assert text(section, key, loaded) == value
    assert loaded != getattr(getattr(Config(), section), key)


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
    loaded = load(None, {"OPTGATE_SMTP_ALLOWED_CLIENTS": text}).smtp.allowed_clients
    assert [str(network) for network in loaded] == value


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


# every option typed at load, with values of the right TOML type that do not parse
NETWORK_OPTIONS = {
    ("smtp", "allowed_clients"),
    ("web", "trusted_proxies"),
    ("inbound", "allowed_clients"),
    ("inbound", "trusted_relays"),
    ("policy", "transactional_networks"),
}
BAD_VALUES: dict[str, list[Any]] = {
    "host:port": ["localhost", "host:", "host:port", "host:65536", "host:-1", "[::1]"],
    "networks": [["10.0.0.0/33"], ["not a network"], ["127.0.0.0/8", "10.0.0.1/8/2"], [""]],
    "resolvers": [["not-an-ip"], ["dns.example:53"], ["10.0.0.1:port"], ["[::1]"]],
    "choice": ["sometimes", "", "DROP"],
    "addresses": [["noreply"], ["@shop.example"], ["no reply@shop.example"], ["a@localhost"]],
    "domains": [["shop"], ["shop..example"], ["shop example"], [""]],
}


def typed_options() -> list[tuple[str, str, str]]:
    found = []
    for option in options():
        where = (option.section, option.key)
        if where in HOST_PORTS:
            found.append((*where, "host:port"))
        elif where in NETWORK_OPTIONS:
            found.append((*where, "networks"))
        elif where in RESOLVERS:
            found.append((*where, "resolvers"))
        elif where in SENDER_LISTS:
            found.append((*where, "domains" if where[1].endswith("domains") else "addresses"))
        elif option.choices:
            found.append((*where, "choice"))
    return found


def test_the_typed_options_are_all_tested() -> None:
    typed = {(o.section, o.key) for o in options() if o.parsed or o.choices}
    assert typed == {(section, key) for section, key, _ in typed_options()}
    # 6 host:port, 5 network lists, the resolvers, 6 choices, 3 sender lists
    assert len(typed) == 21


@pytest.mark.parametrize(
    ("section", "key", "kind", "bad"),
    [(s, k, kind, bad) for s, k, kind in typed_options() for bad in BAD_VALUES[kind]],
    ids=str,
)
def test_a_value_that_does_not_parse_names_its_key(
    tmp_path: Path, section: str, key: str, kind: str, bad: Any
) -> None:
    """In the file and in the environment: a ConfigError naming the key, never a
    ValueError from deep inside (a bad allowed_clients once ended in a traceback)."""
    path = write(tmp_path, f"[{section}]\n{key} = {configshow.toml_value(bad)}\n")
    assert error(path, {}).startswith(f"[{section}] {key}: ")
    env = f"OPTGATE_{section.upper()}_{key.upper()}"
    given = ", ".join(bad) if isinstance(bad, list) else bad
    named = f"[{section}] {key}" if kind == "choice" else env  # a choice: the key, as ever
    if given or not isinstance(bad, list):  # an empty list item is no item in the environment
        assert error(None, {env: given}).startswith(f"{named}: ")


def test_a_bad_network_stops_the_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTGATE_SMTP_ALLOWED_CLIENTS", "10.0.0.0/8, 10.0.0.0/33")
    assert cli.main(["doctor"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "optgate: OPTGATE_SMTP_ALLOWED_CLIENTS: '10.0.0.0/33' does not appear to be an IPv4 "
        "or IPv6 network\n"
    )


def test_typed_values() -> None:
    config = load(
        None,
        {
            "OPTGATE_SMTP_ALLOWED_CLIENTS": "10.1.2.3/8, ::ffff:0:0/96",
            "OPTGATE_INBOUND_DNS_SERVERS": "9.9.9.9, 192.0.2.1:5353, [2001:db8::53]:53, ::1",
            "OPTGATE_PARTNERS_LISTEN": "[::]:587",
            "OPTGATE_API_LISTEN": "",
        },
    )
    assert config.smtp.allowed_clients == (
        ipaddress.ip_network("10.0.0.0/8"),  # host bits dropped, as before
        ipaddress.ip_network("::ffff:0:0/96"),
    )
    assert config.inbound.dns_servers == (
        HostPort("9.9.9.9", 53),
        HostPort("192.0.2.1", 5353),
        HostPort("2001:db8::53", 53),
        HostPort("::1", 53),
    )
    assert config.partners.listen == HostPort("::", 587)
    assert config.api.listen is None


@pytest.mark.parametrize(
    "name", ["OPTGATE_POLICY_NOPE", "OPTGATE_NOPE", "OPTGATE_SMTP", "OPTGATE_policy_action"]
)
def test_unknown_environment_variables_are_errors(name: str) -> None:
    message = error(None, {name: "x"})
    assert name in message


def test_other_environment_variables_are_ignored() -> None:
    others = {"PATH": "/bin", "OPTGATEWAY": "x", "STATE_DIRECTORY": "/s"}
    assert load(None, others) == load(None, {"STATE_DIRECTORY": "/s"})


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
    ("value", "expected", "shown"),
    [
        ("127.0.0.1:10025", ("127.0.0.1", 10025), "127.0.0.1:10025"),
        ("[::1]:25", ("::1", 25), "[::1]:25"),
        (":2525", ("127.0.0.1", 2525), "127.0.0.1:2525"),
        ("mx.example.com:0", ("mx.example.com", 0), "mx.example.com:0"),
    ],
)
def test_host_port(value: str, expected: tuple[str, int], shown: str) -> None:
    parsed = load(None, {"OPTGATE_RELAY_NEXT_HOP": value}).relay.next_hop
    assert parsed == HostPort(*expected)
    assert (parsed.host, parsed.port) == expected
    assert str(parsed) == shown
    assert HostPort.parse(shown) == parsed


# the state directory ----------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "euid", "expected", "origin"),
    [
        ({"STATE_DIRECTORY": "/var/lib/optgate"}, 0, "/var/lib/optgate", "$STATE_DIRECTORY"),
        ({"STATE_DIRECTORY": "/s/one:/s/two", "HOME": "/h"}, 1000, "/s/one", "$STATE_DIRECTORY"),
        ({"HOME": "/home/ann", "XDG_STATE_HOME": "/x"}, 0, "/var/lib/optgate", "root"),
        ({"HOME": "/home/ann", "XDG_STATE_HOME": "/x/state"}, 1000, "/x/state/optgate", "XDG"),
        ({"HOME": "/home/ann"}, 1000, "/home/ann/.local/state/optgate", "$HOME"),
        # the XDG spec: a relative $XDG_STATE_HOME is ignored
        ({"HOME": "/home/ann", "XDG_STATE_HOME": "st"}, 1000, "/home/ann/.local/state/optgate", ""),
    ],
)
def test_state_directory(environ: dict[str, str], euid: int, expected: str, origin: str) -> None:
    directory, where = statedir.default(environ, euid)
    assert directory == Path(expected)
    assert where.startswith("derived")
    assert origin in where


def test_state_directory_errors_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"\$STATE_DIRECTORY 'rel/dir'"):
        statedir.default({"STATE_DIRECTORY": "rel/dir"}, 1000)

    def no_entry(uid: int) -> None:  # a uid unknown to /etc/passwd (containers)
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(ConfigError, match=r"set \[store\] state_dir"):
        statedir.default({}, 1000)
    # where nothing lives in the state directory, it need not be found
    broken = {"STATE_DIRECTORY": "rel/dir"}
    with pytest.raises(ConfigError, match="STATE_DIRECTORY"):
        load(None, broken | {"OPTGATE_STORE_URL": "postgresql://db/optgate"})
    explicit = {
        "OPTGATE_STORE_URL": "postgresql://db/optgate",
        "OPTGATE_UNSUBSCRIBE_KEY_FILE": "/k",
        "OPTGATE_STORE_AUDIT_KEY_FILE": "/a",
        "OPTGATE_STORE_AUDIT_ANCHOR_FILE": "/h",
    }
    config = load(None, broken | explicit)
    assert config.store.state_dir == ""


def test_the_store_and_key_file_follow_the_state_directory(tmp_path: Path) -> None:
    state = {"STATE_DIRECTORY": "/run/state"}
    assert load(None, state).store.url == "sqlite:////run/state/optgate.db"
    chosen = write(tmp_path, '[store]\nstate_dir = "/srv/optgate"\n')
    config = load(chosen, state)  # [store] state_dir wins over $STATE_DIRECTORY
    assert config.store.state_dir == "/srv/optgate"
    assert config.store.url == "sqlite:////srv/optgate/optgate.db"
    assert config.unsubscribe.key_file == "/srv/optgate/optgate.key"
    env = state | {"OPTGATE_STORE_STATE_DIR": "/env/dir"}
    assert load(chosen, env).unsubscribe.key_file == "/env/dir/optgate.key"
    both = write(
        tmp_path,
        '[store]\nurl = "postgresql://optgate@db/optgate"\n[unsubscribe]\nkey_file = "/k/x.key"\n',
        "both.toml",
    )
    config = load(both, state)
    assert (config.store.url, config.unsubscribe.key_file) == (
        "postgresql://optgate@db/optgate",
        "/k/x.key",
    )


def test_relative_paths_in_a_file_are_relative_to_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    chosen = write(
        etc,
        """
        [store]
        state_dir = "state"
        url = "sqlite:///data/optgate.db"
        [unsubscribe]
        key_file = "keys/optgate.key"
        [inbound]
        keep_raw = "raw"
        [partners]
        tls_cert = "/abs/cert.pem"
        tls_key = "tls/key.pem"
        [dkim]
        keys = ["shop.example:s1:rsa:dkim/s1.pem", "shop.example:s2:ed25519:/abs/s2.pem"]
        """,
    )
    monkeypatch.chdir(tmp_path)
    config = load("etc/optgate.toml", {})  # a relative --config too
    assert config.store.state_dir == str(etc / "state")
    assert config.store.url == f"sqlite:///{etc / 'data' / 'optgate.db'}"
    assert config.unsubscribe.key_file == str(etc / "keys" / "optgate.key")
    assert config.inbound.keep_raw == str(etc / "raw")
    assert config.partners.tls_cert == "/abs/cert.pem"
    assert config.partners.tls_key == str(etc / "tls" / "key.pem")
    assert config.dkim.keys == [
        f"shop.example:s1:rsa:{etc / 'dkim' / 's1.pem'}",
        "shop.example:s2:ed25519:/abs/s2.pem",
    ]
    assert load(chosen, {}) == config


def test_relative_paths_in_the_environment_are_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load(
        None,
        {
            "OPTGATE_STORE_URL": "sqlite:///here.db",
            "OPTGATE_UNSUBSCRIBE_KEY_FILE": "here.key",
            "OPTGATE_INBOUND_KEEP_RAW": "",
        },
    )
    assert config.store.url == f"sqlite:///{tmp_path / 'here.db'}"
    assert config.unsubscribe.key_file == str(tmp_path / "here.key")
    assert config.inbound.keep_raw == ""  # empty is off, not the current directory
    for url in ("sqlite:////abs/x.db", "postgresql://u@h/db", "sqlite:///:memory:"):
        assert load(None, {"OPTGATE_STORE_URL": url}).store.url == url


def test_every_value_says_where_it_came_from(tmp_path: Path) -> None:
    chosen = write(tmp_path, '[relay]\nnext_hop = "file.example:25"\npool_size = 4\n')
    loaded = effective(
        chosen, {"OPTGATE_RELAY_POOL_SIZE": "8", "XDG_STATE_HOME": "/x", "HOME": "/h"}
    )
    assert loaded.file == chosen
    origins = loaded.origins
    assert origins["relay", "next_hop"] == f"file {chosen}"
    assert origins["relay", "pool_size"] == "env OPTGATE_RELAY_POOL_SIZE"
    assert origins["smtp", "listen"] == "default"
    assert origins["store", "url"] == "derived from the state directory"
    assert origins["unsubscribe", "key_file"] == "derived from the state directory"
    assert origins["store", "state_dir"].startswith("derived")
    assert set(origins) == {(o.section, o.key) for o in options()}


# config example -----------------------------------------------------------------


def test_the_example_loads_to_the_defaults_and_documents_every_option(tmp_path: Path) -> None:
    text = configshow.sample()
    parsed = tomllib.loads(text)
    assert {(s, k) for s, table in parsed.items() for k in table} == {
        (o.section, o.key) for o in options()
    }
    for option in options():
        assert parsed[option.section][option.key] == option.default, option
        assert option.doc.split()[0] in text
    env = {"STATE_DIRECTORY": "/var/lib/optgate"}
    assert load(write(tmp_path, text), env) == load(None, env)
    assert "(one of: drop, reject)" in text


@pytest.mark.parametrize(
    "value",
    [
        'quote " and backslash \\ and tab \t',
        "new\nline and \x7f and \x00",
        "unicode é ✓ 😀",
        ["a", 'b"c'],
        {"news@shop.example": "news", "bare_key-1": "x", "": "empty", "a.b": 'q"'},
        {},
        [],
        0,
        True,
    ],
)
def test_toml_values_round_trip(value: Any) -> None:
    assert tomllib.loads(f"v = {configshow.toml_value(value)}")["v"] == value
