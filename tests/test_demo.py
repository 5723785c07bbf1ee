"""`optgate demo` runs end to end on a fresh temporary store and says what happened."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sockets


def test_demo_prints_each_verdict_and_what_was_added(tmp_path: Path) -> None:
    optgate = Path(sys.executable).with_name("optgate")
    result = subprocess.run(  # noqa: S603
        [str(optgate), "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert "fan@example.com (consented to 'marketing'): RELAYED" in out
    assert "gone@example.com (consented, then unsubscribed): dropped" in out
    assert "stranger@example.com (never consented): dropped: there is no consent" in out
    assert "gone@example.com (consented, then unsubscribed): RELAYED: transactional" in out
    assert "bounced@example.com (consented, then hard-bounced): dropped" in out
    assert out.count("+ List-Unsubscribe-Post: List-Unsubscribe=One-Click") == 2
    assert "[html footer]" in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind
