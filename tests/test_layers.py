"""The package's layers (../shared/DESIGN.md "Layers"): no package imports one of a higher layer.

Read from the source with ``ast``: every ``import poisonlab.X`` / ``from poisonlab.X import``,
lazy imports inside functions included. Packages of one layer may import each other, but no two
packages may import each other (no circle between packages), and no module reaches itself through
the modules it imports (no circle between modules, inside a package either).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "poisonlab"
LAYERS = [
    {"errors", "glossary", "registry", "utils"},
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


def module_imports() -> dict[str, set[str]]:
    """``{module: {poisonlab modules it imports}}``, lazy imports included; ``from poisonlab.x import y``
    counts as an import of the submodule ``poisonlab.x.y`` where there is one, else of ``poisonlab.x``."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("poisonlab"):
                found = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name.startswith("poisonlab")]
            else:
                continue
            for name in found:
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != module:
                    edges[module].add(name)
    return edges


def test_no_module_reaches_itself_through_its_imports():
    edges = module_imports()
    circles = []
    for start in edges:
        seen, todo = set(), list(edges[start])
        while todo:
            module = todo.pop()
            if module == start:
                circles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo += edges[module]
    assert not circles, f"modules on an import circle: {sorted(circles)}"
