"""The layout shows the architecture: the engine (vaekit/*.py, ops/, arch/, integrations/) never imports
the tools around it (vaekit/tools/, the CLI), and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaekit"
AROUND = ("vaekit.tools", "vaekit.cli", "vaekit.__main__")


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of vaekit that ``path`` imports, at the top or inside functions."""
    here = _name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            found |= {f"{module}.{a.name}" for a in node.names}  # a submodule, when the name is one
            if node.module:  # `from . import kl` imports kl, not (in this sense) the package
                found.add(module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    modules = {_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != _name(path)}


GRAPH = {_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _around(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in AROUND)


def test_the_engine_never_imports_the_tools_around_it():
    for module, imports in GRAPH.items():
        if not _around(module) and module != "vaekit":
            assert not [m for m in imports if _around(m)], module


def test_no_two_modules_import_each_other():
    pairs = {tuple(sorted((a, b))) for a, deps in GRAPH.items() for b in deps
             if a in GRAPH.get(b, ()) and "vaekit" not in (a, b)}
    assert not pairs
