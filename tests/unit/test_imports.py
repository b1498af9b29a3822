"""The import graph of ``midre`` has no cycles, counting imports inside functions too.

An import moved into a function to dodge a cycle still ties the two modules together (the cycle
returns as soon as one of them is imported at the top); layering keeps it a tree of one direction:
``attacks -> priors -> target / progress``, ``services -> midre``, never back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import midre
from tests.test_layout import cycles as find_cycles

ROOT = Path(midre.__file__).resolve().parent.parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _imported_names(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
                    modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
    return [source, *(f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules)]


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``module -> modules of the package it imports``; importing ``a.b.c`` also runs ``a`` and ``a.b``."""
    files = {_module_name(path, package_dir.parent): path for path in package_dir.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for name in _imported_names(module, path.name == "__init__.py", node, modules):
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    candidate = ".".join(parts[:i])
                    # a module's own packages are already being imported when it runs
                    if candidate in modules and candidate != module and not module.startswith(candidate + "."):
                        targets.add(candidate)
        graph[module] = targets
    return graph


def test_cycle_finder_finds_cycles_through_functions_and_packages(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "c.py").write_text("from .a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == set()  # TYPE_CHECKING imports do not run
    assert find_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub"]]


def test_midre_has_no_import_cycles():
    graph = import_graph(ROOT / "midre")
    assert "midre.attacks.gan_attacks" in graph and graph["midre.priors.prior"]
    assert find_cycles(graph) == []


def test_priors_do_not_import_attacks():
    graph = import_graph(ROOT / "midre")
    leaks = {m: sorted(t for t in targets if t.startswith("midre.attacks"))
             for m, targets in graph.items() if m.startswith("midre.priors")}
    assert not any(leaks.values()), leaks
