"""The layout rules the code relies on: the science package never imports the service, and the
gateway never imports the worker (both talk through services.queue and the database)."""

from __future__ import annotations

import ast
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
    jobspec = imported_modules(REPO / "services")["services/jobspec.py"]
    assert not any(name.startswith(("services.worker", "services.gateway")) for name in jobspec)
