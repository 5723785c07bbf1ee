"""The shared e-mail corpus: where it is, its files by folder and kind, each read as bytes
(as stored or as delivered), and its folders' labels (``expected.json``).

The corpus sits beside the repository (``../shared/corpus``) or where $OPTGATE_CORPUS
points. Without it the tests that need it skip (:data:`needed`, :func:`require`); the
rest of the suite runs. Files are read as bytes: some use CRLF on purpose.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

SISIMAI = "sisimai-set-of-emails"
BOUNCEPARSER = "mail-deliverystatus-bounceparser"
MIMEKIT = "mimekit"
EMAIL_ARF = "email-arf"
STALWART_AUTH = "stalwart-mail-auth"
STALWART_PARSER = "stalwart-mail-parser"
DKIMPY = "dkimpy"

MISSING = "no corpus: set OPTGATE_CORPUS to the shared e-mail corpus"

# the suffixes of message files, and what a message's first lines look like (an mbox
# "From " line, then a header field followed by another field or a continuation)
_SUFFIXES = (".eml", ".msg", ".txt", ".message")
_FIRST_HEADER = re.compile(
    rb"(From [^\n]*\n)?[\x21-\x39\x3b-\x7e]+:[^\n]*\n([\x21-\x39\x3b-\x7e]+:|[ \t])"
)


def _find() -> Path | None:
    beside = Path(__file__).resolve().parents[3] / "shared" / "corpus"
    if beside.is_dir():
        return beside
    configured = os.environ.get("OPTGATE_CORPUS")
    return Path(configured) if configured and Path(configured).is_dir() else None


ROOT = _find()
needed = pytest.mark.skipif(ROOT is None, reason=MISSING)


def require() -> Path:
    """The corpus root; the test skips without it."""
    if ROOT is None:
        pytest.skip(MISSING)
    return ROOT


def path(relative: str | Path) -> Path:
    """A corpus file by its path under the root (a path outside the corpus stays as it is)."""
    return (ROOT or Path()) / relative


def read(relative: str | Path) -> bytes:
    """A corpus file's bytes, line ends as stored."""
    return path(relative).read_bytes()


def delivered(relative: str | Path) -> bytes:
    """A corpus message as an MTA delivers it: without the mbox "From " line some begin with."""
    raw = read(relative)
    return raw.split(b"\n", 1)[1] if raw.startswith(b"From ") else raw


def expected(folder: str, name: str = "expected.json") -> Any:
    """A folder's labels: its ``expected.json`` (or another JSON file there)."""
    return json.loads((path(folder) / name).read_text())


def files(folder: str, pattern: str = "*") -> list[Path]:
    """A folder's files matching a glob pattern, sorted; [] without the corpus."""
    if ROOT is None:
        return []
    return sorted(p for p in (ROOT / folder).glob(pattern) if p.is_file())


def is_message(file: Path) -> bool:
    """Whether a file is an e-mail message: a message suffix, and a header block first."""
    return file.suffix in _SUFFIXES and bool(
        _FIRST_HEADER.match(file.read_bytes().replace(b"\r\n", b"\n"))
    )


@functools.cache
def _messages() -> tuple[Path, ...]:
    if ROOT is None:
        return ()
    return tuple(p for p in sorted(ROOT.rglob("*")) if p.is_file() and is_message(p))


def messages() -> list[Path]:
    """Every message of the corpus, every folder, sorted by path; [] without the corpus."""
    return list(_messages())


def relative(file: Path) -> str:
    """A corpus file's path under the root, as a test id."""
    return file.relative_to(ROOT or Path()).as_posix()


def sweep(paths: Iterable[Path]) -> list[Any]:
    """Parameters for a test over many corpus files: the first file of each folder stays in
    the test's own tier (pure: one message of every source and kind, CRLF and malformed
    ones included), the rest are tier ``corpus``; each is named by its path under the root."""
    folders: set[Path] = set()
    params = []
    for file in paths:
        marks = [pytest.mark.corpus] if file.parent in folders else []
        folders.add(file.parent)
        params.append(pytest.param(file, marks=marks, id=relative(file)))
    return params


def ids(paths: Iterable[Path]) -> list[str]:
    """Test ids for corpus files: their paths under the root."""
    return [relative(p) for p in paths]
