"""Service commands of the ``midre`` CLI, one module per group.

``midre/cli.py`` finds :func:`register` through the ``midre.commands`` entry point; each parser sets
``func(args) -> int``. The groups:

* :mod:`services.cli.processes`: ``serve``, ``migrate``, ``worker`` and ``admin create-key``, the
  commands that run next to the database, and the helpers that start and stop ``midre`` processes;
* :mod:`services.cli.demo`: ``demo``, the embedded service end to end;
* REST clients of a running service (:mod:`services.cli.rest` holds their shared plumbing):
  :mod:`services.cli.jobs` (``jobs``), :mod:`services.cli.models` (``datasets``, ``models``,
  ``predict``), :mod:`services.cli.access` (``keys``, ``webhooks``, ``integrations``).

Every module here imports only the standard library at load time: the wheel ships ``services/``
with the core, and without the ``service`` extra the commands must still show in ``midre --help``
and answer with one line that says what to install. The REST clients never import torch either, so
they start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.util import find_spec

from services.cli import access, demo, jobs, models, policies, processes

#: Import names of the ``service`` extra's packages (pyproject ``[project.optional-dependencies]``).
SERVICE_MODULES = (
    "fastapi", "fastapi_offline", "uvicorn", "python_multipart", "pydantic", "pydantic_settings", "sqlalchemy",
    "alembic", "psycopg", "celery", "redis", "httpx", "prometheus_client", "yaml", "standardwebhooks",
)

#: The groups' ``register`` functions, in the order ``midre --help`` lists their commands.
GROUPS = (processes.register, demo.register, processes.register_admin, jobs.register, models.register,
          access.register, policies.register)


def missing_service_modules() -> list[str]:
    """The ``service`` extra's modules that are not installed (cheap: nothing is imported)."""
    return [name for name in SERVICE_MODULES if find_spec(name) is None]


def _needs_service_extra(command: str, func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Wrap ``func`` so that, without the ``service`` extra, it prints one line instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        missing = missing_service_modules()
        if missing:
            print(f"midre {command}: needs the 'service' extra (missing: {', '.join(missing)}); "
                  "install it with: pip install 'midre[service]'", file=sys.stderr)
            return 2
        return func(args)

    run.__doc__ = func.__doc__
    return run


def _guard(parser: argparse.ArgumentParser, command: str) -> None:
    """Put :func:`_needs_service_extra` around every ``func`` of ``parser`` and its sub-parsers."""
    func = parser.get_default("func")
    if func is not None:
        parser.set_defaults(func=_needs_service_extra(command, func))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _guard(sub, f"{command} {name}")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the service sub-commands to the ``midre`` parser (each one checks the extra first)."""
    before = set(subparsers.choices)
    for add_group in GROUPS:
        add_group(subparsers)
    for name, parser in subparsers.choices.items():
        if name not in before:
            _guard(parser, name)
