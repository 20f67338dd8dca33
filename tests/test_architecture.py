"""The layering of DESIGN.md, enforced on the source text.

- ``transport`` and ``security`` never import ``flrt``, and never import each other.
- Every module under ``transport/protocol/`` is sans-IO: no anyio, trio, asyncio, ssl, socket,
  select, selectors, threading or time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {
    "anyio",
    "trio",
    "asyncio",
    "ssl",
    "socket",
    "select",
    "selectors",
    "threading",
    "time",
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("transport", {"flrt", "security"}), ("security", {"flrt", "transport"})],
)
def test_lower_layers_do_not_import_upwards_or_sideways(package: str, forbidden: set[str]) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if _top(name) in forbidden
    ]
    assert offenders == []


def test_sans_io_modules_import_no_io() -> None:
    protocol = _modules("transport/protocol")
    assert protocol, "transport/protocol/ holds the sans-IO core and must not be empty"
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in protocol
        for name in _imports(path)
        if _top(name) in IO_MODULES
    ]
    assert offenders == []


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import anyio\nfrom ssl import SSLContext\nfrom . import sibling\n")
    assert list(_imports(probe)) == ["anyio", "ssl"]
