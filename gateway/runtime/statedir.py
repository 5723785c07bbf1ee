"""The state directory: where the embedded store and the key files live by default.

One place for both, whatever the current directory: ``[store] state_dir`` if
set, else ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; the first of
its colon-separated paths), else ``/var/lib/optgate`` for root, else
``$XDG_STATE_HOME/optgate`` (``~/.local/state/optgate``). Only ``optgate serve``
and ``optgate store migrate`` create it (mode 0700).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from suppression.errors import ConfigError

ROOT = Path("/var/lib/optgate")
STORE_FILE = "optgate.db"
KEY_FILE = "optgate.key"  # [unsubscribe] key_file: the token keys
AUDIT_KEY_FILE = "optgate-audit.key"  # [store] audit_key_file
AUDIT_ANCHOR_FILE = "optgate-audit.head"  # [store] audit_anchor_file


def default(environ: Mapping[str, str], euid: int) -> tuple[Path, str]:
    """The state directory when ``[store] state_dir`` is not set, and where it came from."""
    systemd = environ.get("STATE_DIRECTORY", "")
    if systemd:
        first = Path(systemd.split(":")[0])
        if not first.is_absolute():
            raise ConfigError(f"$STATE_DIRECTORY {systemd!r} is not an absolute path")
        return first, "derived from $STATE_DIRECTORY"
    if euid == 0:
        return ROOT, "derived: the default when run as root"
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is ignored
        return Path(xdg) / "optgate", "derived from $XDG_STATE_HOME"
    home = environ.get("HOME") or _passwd_home()
    if not home or not Path(home).is_absolute():
        raise ConfigError(
            "cannot find a state directory: neither $XDG_STATE_HOME nor $HOME is set; "
            "set [store] state_dir (or OPTGATE_STORE_STATE_DIR)"
        )
    return Path(home) / ".local" / "state" / "optgate", "derived from $HOME (~/.local/state)"


def _passwd_home() -> str | None:
    """The home directory of this uid in the passwd database (none in some containers)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None
