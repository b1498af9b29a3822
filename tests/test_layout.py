"""The layout rules the code relies on: the science package never imports the service; the gateway never
imports the worker (both talk through services.queue and the database); the transports (REST routers, the
dashboard, the integrations) meet in the application layer (services.ops), never in each other; no two
modules import each other (directly or round a longer loop); modules and functions stay small; each job
kind is named in a few places only; and the REST commands of ``midre`` start without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every module each ``.py`` file under ``folder`` imports (at any depth of the file)."""
    out: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(REPO))] = names
    return out


def offenders(folder: str, forbidden: str) -> list[str]:
    return sorted(
        f"{path} imports {name}"
        for path, names in imported_modules(REPO / folder).items()
        for name in names
        if name == forbidden or name.startswith(forbidden + ".")
    )


def test_midre_never_imports_services() -> None:
    assert offenders("midre", "services") == []


def test_the_gateway_never_imports_the_worker() -> None:
    assert offenders("services/gateway", "services.worker") == []
    assert offenders("services/queue", "services.worker") == []
    assert offenders("services/jobspec", "services.worker") == []
    assert offenders("services/jobspec", "services.gateway") == []


def test_transports_meet_in_the_application_layer() -> None:
    assert offenders("services/ops", "services.gateway") == []  # the application layer knows no transport
    assert offenders("services/ops", "services.worker") == []
    assert offenders("services/integrations", "services.gateway") == []
    assert offenders("services/serving", "services.cli") == []
    assert offenders("services/gateway/ui", "services.gateway.routers") == []
    routers = REPO / "services" / "gateway" / "routers"
    for path in routers.glob("*.py"):
        others = [name for name in imported_modules(routers)[str(path.relative_to(REPO))]
                  if name.startswith("services.gateway.routers") and name != f"services.gateway.routers.{path.stem}"]
        assert others == [], f"{path.name} imports another router: {others}"


def _sources() -> list[Path]:
    return [p for package in ("midre", "services") for p in (REPO / package).rglob("*.py")]


def test_files_and_functions_stay_small() -> None:
    """At most 600 lines a module and 80 a function (60 is the aim), Alembic's revisions aside."""
    big = [f"{p.relative_to(REPO)}: {n}" for p in _sources() if (n := len(p.read_text().splitlines())) > 600]
    assert big == []
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert long == []


def test_each_job_kind_is_named_in_a_few_files() -> None:
    """A kind is its registration, its spec, its library study and its CLI command: adding one touches that
    few files. ``train`` is left out: it is also the name of a data split and of a progress stage."""
    from services.jobspec import kind_names

    for kind in kind_names():
        if kind == "train":
            continue
        files = sorted(str(p.relative_to(REPO)) for p in _sources()
                       if f'"{kind}"' in p.read_text() or f"'{kind}'" in p.read_text())
        assert len(files) <= 5, f"{kind!r} is spelled in {len(files)} files: {files}"


def module_names() -> dict[str, Path]:
    """Every module of ``midre/`` and ``services/`` by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for package in ("midre", "services"):
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at any depth of the file (inside functions too).

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``;
    ``import a.b.c`` counts as importing the longest project module that names a prefix of it.
    """
    modules = module_names()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else known(base))
        graph[module] = {name for name in found if name is not None and name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_cycle_finder_sees_imports_inside_functions() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    # a function-level import (services.cli.jobs imports midre.commands.progress_bar inside follow())
    assert "midre.commands.progress_bar" in graph["services.cli.jobs"]
    # `from services.db import jobs` names the module services.db.jobs
    assert "services.db.jobs" in graph["services.ops.keys"]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_rest_commands_import_neither_torch_nor_torchvision() -> None:
    """``midre jobs list --help`` loads the CLI without the science layer: what ``-X importtime``
    reports (one line per module imported) names neither torch nor torchvision."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "midre.cli", "jobs", "list", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "services.cli.jobs" in imported, "importtime lists the modules"
    heavy = sorted(name for name in imported if name.split(".")[0] in ("torch", "torchvision"))
    assert heavy == []
