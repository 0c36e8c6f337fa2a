"""The layers stack one way: the library never imports the CLI or the server; the server never the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(folder: Path, skip: str | None = None) -> dict[str, set[str]]:
    found = {}
    for path in folder.rglob("*.py"):
        if (skip and skip in path.relative_to(ROOT).parts) or path.name == "__main__.py":
            continue  # `python -m textebm` is the CLI's entry point
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_library_imports_neither_cli_nor_server():
    for path, names in _imports(ROOT / "textebm", skip="cli").items():
        bad = {n for n in names if n.startswith("textebm.cli") or n.split(".")[0] == "server"}
        assert not bad, f"{path} imports {bad}"


def test_server_does_not_import_the_cli():
    for path, names in _imports(ROOT / "server").items():
        bad = {n for n in names if n.startswith("textebm.cli")}
        assert not bad, f"{path} imports {bad}"
