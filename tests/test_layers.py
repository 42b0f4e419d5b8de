"""The package's layers (../shared/DESIGN.md "Layers"): no package imports one of a higher layer.

Read from the source with ``ast``: every ``import poisonlab.X`` / ``from poisonlab.X import``,
lazy imports inside functions included. Packages of one layer may import each other, but no two
packages may import each other (no circle between packages).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "poisonlab"
LAYERS = [
    {"errors", "registry", "utils"},
    {"models", "data", "triggers", "augment"},
    {"train"},
    {"metrics"},
    {"attacks", "defenses", "detect"},
    {"bench"},
    {"report"},
    {"cli", "demo", "__main__", "__init__"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_imports() -> dict[str, set[tuple[str, str]]]:
    """``{package: {(imported package, file), ...}}`` for imports between packages of poisonlab."""
    out: dict[str, set[tuple[str, str]]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        pkg = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "poisonlab" and len(parts) > 1 and parts[1] != pkg:
                    out.setdefault(pkg, set()).add((parts[1], str(rel)))
    return out


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py")}
    assert packages <= set(RANK), f"no layer for {sorted(packages - set(RANK))}"


def test_no_import_goes_up_a_layer():
    upward = [f"{where}: {pkg} -> {target}" for pkg, found in package_imports().items()
              for target, where in found if RANK[target] > RANK[pkg]]
    assert not upward, upward


def test_no_two_packages_import_each_other():
    edges = {(pkg, t) for pkg, found in package_imports().items() for t, _ in found}
    assert not [(a, b) for a, b in edges if (b, a) in edges and a < b]
