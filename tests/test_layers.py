"""The layers stack one way: the library never imports the CLI or the server; the server never the CLI;
inside the library each group imports only the groups below it (docs/code-map.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _names(source: str) -> set[str]:
    """The modules a source imports; `from textebm import cli` counts as textebm.cli."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports(folder: Path, skip: str | None = None) -> dict[str, set[str]]:
    found = {}
    for path in folder.rglob("*.py"):
        if (skip and skip in path.relative_to(ROOT).parts) or path.name == "__main__.py":
            continue  # `python -m textebm` is the CLI's entry point
        found[str(path.relative_to(ROOT))] = _names(path.read_text(encoding="utf-8"))
    return found


def test_library_imports_neither_cli_nor_server():
    for path, names in _imports(ROOT / "textebm", skip="cli").items():
        bad = {n for n in names if n.startswith("textebm.cli") or n.split(".")[0] == "server"}
        assert not bad, f"{path} imports {bad}"


def test_server_does_not_import_the_cli():
    for path, names in _imports(ROOT / "server").items():
        bad = {n for n in names if n.startswith("textebm.cli")}
        assert not bad, f"{path} imports {bad}"


LAYERS = ("data", "generation", "model", "inference", "training", "evaluation", "experiments")  # bottom first


def _group(name: str) -> str | None:
    """The library group a module name belongs to (textebm.model.decoder -> model); None for the top-level
    modules (config, io, ...), which serve every group."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "textebm" and parts[1] in LAYERS else None


def test_each_group_imports_only_the_groups_below_it():
    for path, names in _imports(ROOT / "textebm", skip="cli").items():
        own = _group(path.removesuffix(".py").replace("/", "."))
        height = -1 if own is None else LAYERS.index(own)  # a top-level module may import no group
        bad = {n for n in names if (g := _group(n)) is not None and g != own and LAYERS.index(g) > height}
        assert not bad, f"{path} imports {bad}, above its layer"


def test_the_layer_check_sees_every_group_and_both_import_forms():
    groups = {p.name for p in (ROOT / "textebm").iterdir() if (p / "__init__.py").is_file()}
    assert groups == {*LAYERS, "presets", "cli"}  # a new group must be given its place in LAYERS
    names = _names("from textebm import cli, evaluation\nfrom textebm.model import decoder\nimport textebm.training\n")
    assert {"textebm.cli", "textebm.evaluation", "textebm.model.decoder", "textebm.training"} <= names
    assert [_group(n) for n in ("textebm.model.decoder", "textebm.evaluation", "textebm.training", "textebm.config",
                                "torch.nn")] == ["model", "evaluation", "training", None, None]
