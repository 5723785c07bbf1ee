"""deploy/: the Dockerfile, compose.yaml and systemd unit parse and match the config contract.

Docker cannot run here, so nothing is built or started: the files are parsed, and
every OPTGATE_* variable they set must be a real setting with a valid value
(gateway.config.load raises ConfigError for anything else).
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import shlex
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Config, load
from suppression.errors import ConfigError

pytestmark = pytest.mark.pure

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
UNIT = DEPLOY / "systemd" / "optgate.service"
NODES = ("optgate-a", "optgate-b")
KEY_DIR = "/var/lib/optgate"
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - what a container must listen on


def settings() -> set[str]:
    """Every OPTGATE_<SECTION>_<KEY> name the config contract declares."""
    names = {"OPTGATE_CONFIG"}
    for section in dataclasses.fields(Config):
        if section.name == "topics":  # [topics.NAME] tables: the file only
            continue
        cls = typing.get_type_hints(Config)[section.name]
        names |= {
            f"OPTGATE_{section.name.upper()}_{f.name.upper()}" for f in dataclasses.fields(cls)
        }
    return names


def check_setting(name: str, value: str) -> Config:
    """The variable names a setting and its value is valid for it."""
    assert name in settings(), f"{name} is not a setting of gateway/config.py"
    return load(None, {name: value})


# -- Dockerfile ---------------------------------------------------------------


def dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continuation
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        pending += line
        word, _, rest = pending.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, f"the Dockerfile ends inside a continuation: {pending!r}"
    return instructions


def env_pairs(args: str) -> dict[str, str]:
    """ENV A=1 B="2 3" (or the legacy ENV A 1)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_parser_joins_continuations() -> None:
    text = "# c\nFROM x\nRUN a \\\n    # inner\n    && b\n\nenv A=1 \\\n  B='2 3'\n"
    assert dockerfile(text) == [("FROM", "x"), ("RUN", "a && b"), ("ENV", "A=1 B='2 3'")]
    assert env_pairs("A=1 B='2 3'") == {"A": "1", "B": "2 3"}


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def all_of(instructions: list[tuple[str, str]], name: str) -> list[str]:
    return [args for word, args in instructions if word == name]


def docker_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in all_of(instructions, "ENV"):
        env |= env_pairs(args)
    return env


def test_dockerfile_base_user_and_entrypoint(docker: list[tuple[str, str]]) -> None:
    assert docker[0][0] == "FROM"
    assert docker[0][1].startswith("python:3.11-slim")
    assert any("pip install ." in run for run in all_of(docker, "RUN"))
    users = all_of(docker, "USER")
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert exec_form(all_of(docker, "ENTRYPOINT")[-1]) == ["optgate"]
    assert exec_form(all_of(docker, "CMD")[-1]) == ["serve"]
    assert all_of(docker, "VOLUME")
    assert KEY_DIR in json.loads(all_of(docker, "VOLUME")[-1])


def test_dockerfile_settings_are_the_config_contract(docker: list[tuple[str, str]]) -> None:
    env = docker_env(docker)
    optgate = {k: v for k, v in env.items() if k.startswith("OPTGATE_")}
    for name, value in optgate.items():
        check_setting(name, value)
    config = load(None, optgate)
    assert config.smtp.listen.host == EVERY_INTERFACE
    assert config.web.listen.host == EVERY_INTERFACE
    # the state directory is the volume, for `docker exec ... optgate ...` as for serve
    assert config.store.state_dir == KEY_DIR
    assert config.store.url == f"sqlite:///{KEY_DIR}/optgate.db"
    assert config.unsubscribe.key_file == f"{KEY_DIR}/optgate.key"
    ports = {config.smtp.listen.port, config.web.listen.port}
    assert {int(p) for p in all_of(docker, "EXPOSE")[-1].split()} == ports


def test_dockerfile_healthcheck_asks_healthz(docker: list[tuple[str, str]]) -> None:
    check = all_of(docker, "HEALTHCHECK")[-1]
    options, _, command = check.partition("CMD ")
    assert re.fullmatch(r"(--[a-z-]+=\S+\s*)*", options.strip())
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")  # the script is valid Python
    assert "urllib" in argv[2]
    web_port = load(None, docker_env(docker)).web.listen.port
    assert f"http://127.0.0.1:{web_port}/healthz" in argv[2]


# -- compose.yaml -------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}: every optgate setting here must have a default."""

    def one(match: re.Match[str]) -> str:
        default = match.group("default")
        assert default is not None, f"{match.group(0)} has no default"
        return default

    return re.sub(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}", one, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["postgres"]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    for node in NODES:
        service = services[node]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"] / "pyproject.toml").exists()
    published = [
        port.rsplit(":", 2)[-2] for node in NODES for port in services[node].get("ports", [])
    ]
    assert published, "each node publishes its ports"
    assert len(published) == len(set(published)), f"two nodes publish one port: {published}"


def test_compose_settings_are_the_config_contract(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if key.startswith("OPTGATE_"):
                check_setting(key, interpolate(value))
        assert name  # every service was looked at


def test_compose_nodes_share_postgres_and_the_key(compose: dict[str, Any]) -> None:
    services = compose["services"]
    configs = {}
    for node in NODES:
        env = environment(services[node])
        optgate = {k: interpolate(v) for k, v in env.items() if k.startswith("OPTGATE_")}
        config = load(None, optgate)
        configs[node] = config
        assert config.store.url.startswith("postgresql://")
        assert "@postgres/" in config.store.url
        assert ":" not in config.store.url.split("//", 1)[1].split("@", 1)[0], "no password in URL"
        assert "PGPASSWORD" in env
        assert config.smtp.allowed_clients != Config().smtp.allowed_clients
        assert config.smtp.listen.host == EVERY_INTERFACE
        published = {p.rsplit(":", 1)[-1] for p in services[node]["ports"]}
        assert published == {
            str(config.smtp.listen.port),
            str(config.web.listen.port),
        }
        # the key files lie on a named volume every node mounts
        assert config.unsubscribe.key_file.startswith(f"{KEY_DIR}/")
        assert config.store.audit_key_file.startswith(f"{KEY_DIR}/")
    a, b = (configs[node] for node in NODES)
    assert a.store.url == b.store.url
    assert a.unsubscribe.key_file == b.unsubscribe.key_file
    assert a.store.audit_key_file == b.store.audit_key_file
    assert a.unsubscribe.base_url == b.unsubscribe.base_url
    mounts = [
        {v for v in services[node]["volumes"] if v.split(":")[1] == KEY_DIR} for node in NODES
    ]
    assert mounts[0] == mounts[1] != set()
    volume = next(iter(mounts[0])).split(":")[0]
    assert volume in compose["volumes"], "a named volume, shared, not a per-node directory"


def test_compose_migrates_once_before_the_nodes(compose: dict[str, Any]) -> None:
    """One `optgate store migrate` makes the shared key file and the schema, then the
    nodes start: two nodes making the key at once would each sign with their own."""
    services = compose["services"]
    migrate = services["optgate-migrate"]
    assert migrate["command"] == ["store", "migrate"]
    assert "entrypoint" not in migrate  # the image's: optgate
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = {k: interpolate(v) for k, v in environment(migrate).items()}
    made = load(None, {k: v for k, v in env.items() if k.startswith("OPTGATE_")})
    assert "PGPASSWORD" in env
    for node in NODES:
        service = services[node]
        assert service["depends_on"]["optgate-migrate"]["condition"] == (
            "service_completed_successfully"
        )
        node_env = {k: interpolate(v) for k, v in environment(service).items()}
        config = load(None, {k: v for k, v in node_env.items() if k.startswith("OPTGATE_")})
        assert (config.store.url, config.unsubscribe.key_file, config.store.audit_key_file) == (
            made.store.url,
            made.unsubscribe.key_file,
            made.store.audit_key_file,
        )
        assert set(service["volumes"]) == set(migrate["volumes"])


def test_compose_subnet_is_the_allowed_clients(compose: dict[str, Any]) -> None:
    subnets = [
        interpolate(pool["subnet"])
        for network in compose["networks"].values()
        for pool in network["ipam"]["config"]
    ]
    for node in NODES:
        allowed = interpolate(
            environment(compose["services"][node])["OPTGATE_SMTP_ALLOWED_CLIENTS"]
        )
        loaded = load(None, {"OPTGATE_SMTP_ALLOWED_CLIENTS": allowed}).smtp.allowed_clients
        assert [str(network) for network in loaded] == subnets


def test_no_stray_optgate_names_anywhere() -> None:
    """Any OPTGATE_* word in the three files (comments, ${...} too) is a real setting."""
    for path in (DOCKERFILE, COMPOSE, UNIT):
        for name in set(re.findall(r"\bOPTGATE_[A-Z0-9_]+", path.read_text(encoding="utf-8"))):
            assert name in settings(), f"{path.name}: {name} is not a setting"


def test_check_setting_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="OPTGATE_STORE_PATH"):
        load(None, {"OPTGATE_STORE_PATH": "x"})
    with pytest.raises(ConfigError):
        load(None, {"OPTGATE_SMTP_MAX_SESSIONS": "many"})


# -- systemd ------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def unit_values(key: str) -> list[str]:
    """Every value of a key that may repeat (Environment=, SystemCallFilter=)."""
    prefix = f"{key}="
    return [
        line.removeprefix(prefix)
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith(prefix)
    ]


def test_unit_is_hardened(unit: configparser.ConfigParser) -> None:
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "optgate",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert "@system-service" in unit_values("SystemCallFilter")
    assert service["ExecStart"] == "/usr/local/bin/optgate serve --config /etc/optgate/optgate.toml"
    timeout = service["TimeoutStopSec"]
    assert re.fullmatch(r"\d+s?", timeout)
    assert int(timeout.rstrip("s")) > 30, "room for the 30 s drain"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_settings_are_the_config_contract() -> None:
    env: dict[str, str] = {}
    for line in unit_values("Environment"):
        env |= dict(word.split("=", 1) for word in shlex.split(line))
    optgate = {k: v for k, v in env.items() if k.startswith("OPTGATE_")}
    for name, value in optgate.items():
        check_setting(name, value)
    # StateDirectory=optgate is /var/lib/optgate, the only place the service may write;
    # systemd names it in $STATE_DIRECTORY, optgate's state directory: the store and
    # key file are not set apart from it (root's optgate commands find them there too)
    assert not {"OPTGATE_STORE_URL", "OPTGATE_UNSUBSCRIBE_KEY_FILE"} & set(optgate)
    assert not {"OPTGATE_STORE_AUDIT_KEY_FILE", "OPTGATE_STORE_AUDIT_ANCHOR_FILE"} & set(optgate)
    assert "OPTGATE_STORE_STATE_DIR" not in optgate
    config = load(None, optgate | {"STATE_DIRECTORY": KEY_DIR})
    assert config.store.url == f"sqlite:///{KEY_DIR}/optgate.db"
    assert config.unsubscribe.key_file == f"{KEY_DIR}/optgate.key"
    assert config.store.audit_key_file == f"{KEY_DIR}/optgate-audit.key"
    assert config == load(None, optgate | {"STATE_DIRECTORY": f"{KEY_DIR}:/var/lib/other"})
