"""``optgate config show`` and ``optgate config example``, made from the option declarations.

``show`` prints the effective settings, each with where it came from, and the
state directory, store and token key file in use. ``example`` prints a
commented TOML file of every option at its default, which loads back to the
defaults. Both read ``gateway.config.options()``: an option declared there is
shown and documented here with nothing else to write.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path
from typing import Any

from gateway.config import Config, Effective, Option, effective, options, sections
from suppression.opening import sqlite_path

HIDDEN = "<hidden>"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """A declared option's value (str, int, bool, list or table of strings) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # JSON's string escapes are TOML's, but for DEL, which TOML wants escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = [f"{_key(k)} = {toml_value(v)}" for k, v in value.items()]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    raise TypeError(value)  # pragma: no cover - every declared type is handled above


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else toml_value(name)


def _comment(text: str, width: int = 88) -> list[str]:
    return textwrap.wrap(text, width - 2, initial_indent="# ", subsequent_indent="# ")


def sample() -> str:
    """The commented TOML of every option at its default."""
    lines = [
        "# optgate configuration: every option at its default (optgate config example).",
        "# Use it with `optgate --config FILE ...` or $OPTGATE_CONFIG=FILE. The environment",
        "# variable OPTGATE_<SECTION>_<KEY> overrides a key of this file. Relative paths",
        "# here are relative to this file's directory; `optgate config show` prints what",
        "# is in effect and where each value came from.",
    ]
    docs = {name: (cls.__doc__ or "").strip() for name, cls in sections().items()}
    section = ""
    for option in options():
        if option.section != section:
            section = option.section
            lines += ["", f"[{section}]", *_comment(docs[section])]
        doc = option.doc + (f" (one of: {', '.join(option.choices)})" if option.choices else "")
        lines += ["", *_comment(doc), f"{option.key} = {toml_value(option.default)}"]
    return "\n".join(lines) + "\n"


async def example(args: argparse.Namespace, config: Config) -> int:
    """optgate config example: a sample file, every option at its default."""
    print(sample(), end="")
    return 0


def _shown(option: Option, value: Any) -> Any:
    """A loaded value as it may be printed, as TOML holds it: secrets hidden, no password
    in a store URL."""
    value = option.text(value)
    if option.secret:
        return [HIDDEN for _ in value] if isinstance(value, list) else HIDDEN
    if (option.section, option.key) == ("store", "url") and "@" in value:
        from suppression.postgres import safe_url

        return safe_url(value)
    return value


def _files(loaded: Effective) -> dict[str, dict[str, Any]]:
    """The state directory, store and key files in use, where they came from, and whether
    they exist yet."""
    config, origins = loaded.config, loaded.origins
    url = config.store.url
    store_file = Path(sqlite_path(url)) if url.startswith("sqlite://") else None
    state = Path(config.store.state_dir) if config.store.state_dir else None
    key_file, audit_key = Path(config.unsubscribe.key_file), Path(config.store.audit_key_file)
    return {
        "state_dir": {
            "path": str(state) if state else None,
            "from": origins["store", "state_dir"],
            "exists": state.is_dir() if state else False,
        },
        "store": {
            "url": _shown(_option("store", "url"), url),
            "from": origins["store", "url"],
            "path": str(store_file) if store_file else None,
            "exists": store_file.exists() if store_file else None,  # a database: not asked
        },
        "key_file": {
            "path": str(key_file),
            "from": origins["unsubscribe", "key_file"],
            "exists": key_file.exists(),
        },
        "audit_key_file": {
            "path": str(audit_key),
            "from": origins["store", "audit_key_file"],
            "exists": audit_key.exists(),
        },
    }


def _option(section: str, key: str) -> Option:
    return next(o for o in options() if (o.section, o.key) == (section, key))


def _state(exists: bool | None, made_by: str) -> str:
    if exists is None:
        return ""
    return "exists" if exists else f"missing ({made_by})"


def _text(loaded: Effective) -> str:
    files = _files(loaded)
    made_by = "optgate store migrate makes it"
    state, store = files["state_dir"], files["store"]
    keys, audit = files["key_file"], files["audit_key_file"]
    head = [
        "# the effective configuration; on the right of each value, where it came from",
        f"# config file: {loaded.file or 'none (built-in defaults and the environment)'}",
        f"# state directory: {state['path'] or 'none'} ({state['from']}): "
        + _state(state["exists"], made_by),
        f"# store: {store['url']} ({store['from']})"
        + (f": {_state(store['exists'], made_by)}" if store["exists"] is not None else ""),
        f"# token key file: {keys['path']} ({keys['from']}): {_state(keys['exists'], made_by)}",
        f"# audit key file: {audit['path']} ({audit['from']}): " + _state(audit["exists"], made_by),
    ]
    lines, section = head, ""
    for option in options():
        if option.section != section:
            section = option.section
            lines += ["", f"[{section}]"]
        value = _shown(option, getattr(getattr(loaded.config, section), option.key))
        origin = loaded.origins[section, option.key]
        lines.append(f"{option.key} = {toml_value(value)}  # {origin}")
    return "\n".join(lines) + "\n"


def _json(loaded: Effective) -> dict[str, Any]:
    settings: dict[str, dict[str, Any]] = {}
    for option in options():
        value = getattr(getattr(loaded.config, option.section), option.key)
        settings.setdefault(option.section, {})[option.key] = {
            "value": _shown(option, value),
            "from": loaded.origins[option.section, option.key],
        }
    return {"config_file": loaded.file, **_files(loaded), "settings": settings}


async def show(args: argparse.Namespace, config: Config) -> int:
    """optgate config show: the effective settings and where each came from."""
    loaded = effective(getattr(args, "config", None))
    if args.json:
        print(json.dumps(_json(loaded), indent=2))
    else:
        print(_text(loaded), end="")
    return 0
