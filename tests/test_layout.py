"""The code's layout, read with ``ast``: imports go one way (no module of gateway/ or
suppression/ imports one that imports it back, at module level, in a function or for
types only), and the store's interfaces (suppression/store.py) are typed without ``Any``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "suppression")


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(tree: ast.Module, name: str, is_package: bool) -> Iterator[str]:
    """Every name each import statement of a module names, anywhere in it (in functions
    too): ``from a import b`` names both ``a.b`` and ``a``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".")
                anchor = package[: len(package) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of gateway/ and suppression/ with the modules of theirs it imports."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        named = _imported(tree, name, path.name == "__init__.py")
        graph[name] = {other for other in named if other in known and other != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each group of modules that import one another (Tarjan's strongly
    connected components of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def any_in_protocols(source: str) -> list[str]:
    """``Protocol.method`` (or ``.attribute``) for each annotation of a public Protocol of
    the module that names ``typing.Any`` (however it was imported)."""
    tree = ast.parse(source)
    aliases = {"Any"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "typing":
            aliases |= {alias.asname or alias.name for alias in node.names if alias.name == "Any"}
    protocols: set[str] = set()
    found = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {ast.unparse(base).rpartition(".")[2] for base in node.bases}
        if not bases & ({"Protocol"} | protocols):
            continue
        protocols.add(node.name)
        if node.name.startswith("_"):
            continue
        for member in node.body:
            if any(aliases & set(_names(a)) for a in _annotations(member)):
                found.append(f"{node.name}.{_member_name(member)}")
    return found


def _member_name(member: ast.stmt) -> str:
    if isinstance(member, ast.AnnAssign):
        return ast.unparse(member.target)
    return str(getattr(member, "name", type(member).__name__))


def _annotations(member: ast.stmt) -> Iterator[ast.expr]:
    if isinstance(member, ast.AnnAssign):
        yield member.annotation
    elif isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
        a = member.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None and arg.annotation is not None:
                yield arg.annotation
        if member.returns is not None:
            yield member.returns


def _names(annotation: ast.expr) -> Iterator[str]:
    """Every name an annotation uses (``typing.Any`` as ``Any``), quoted ones too."""
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield from _names(ast.parse(node.value, mode="eval").body)


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 100  # every module was read
    assert cycles(graph) == []


def test_store_protocols_have_no_any() -> None:
    source = (ROOT / "suppression" / "store.py").read_text(encoding="utf-8")
    assert "class Store(" in source
    assert any_in_protocols(source) == []


def test_a_function_level_import_back_is_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "suppression"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "driver.py").write_text(
        "def run() -> None:\n    from suppression import runs  # lazily\n"
    )
    (package / "runs.py").write_text("from suppression.driver import run\n")
    (package / "alone.py").write_text("from . import runs\n")
    graph = import_graph(tmp_path)
    assert graph["suppression.alone"] == {"suppression", "suppression.runs"}
    assert cycles(graph) == [["suppression.driver", "suppression.runs"]]


def test_any_in_a_protocol_is_found() -> None:
    source = (
        "from typing import Any as Loose, Protocol\n"
        "import typing\n"
        "class Reads(Protocol):\n"
        "    async def get(self, key: str) -> dict[str, Loose]: ...\n"
        "    async def fine(self, key: str) -> int: ...\n"
        "class Both(Reads, Protocol):\n"
        "    limit: 'typing.Any'\n"
        "class _Private(Protocol):\n"
        "    def put(self, value: Loose) -> None: ...\n"
        "class Plain:\n"
        "    def put(self, value: Loose) -> None: ...\n"
    )
    assert any_in_protocols(source) == ["Reads.get", "Both.limit"]
