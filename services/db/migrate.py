"""Apply Alembic migrations from code (``midre serve``, ``midre migrate``, the API's start-up, tests).

The migrations live at the top of the repository (``migrations/``: ``env.py``, ``versions/``), where
Alembic users look for them; the wheel maps that folder into the package as
``services/db/migrations`` (``[tool.hatch.build.targets.wheel.force-include]`` in pyproject.toml),
so an installed copy carries them. :func:`migrations_dir` finds the folder in either layout, and the
Alembic config is built here in code, so an installed wheel migrates its database from any working
folder; the root ``alembic.ini`` of a source checkout is only a convenience for developers (``uv run
alembic revision --autogenerate -m "..."``) and points at the same folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

#: Where the wheel puts the Alembic script folder (env.py, script.py.mako, versions/).
PACKAGED_DIR = Path(__file__).resolve().parent / "migrations"
#: Where it is in a source checkout (an editable install runs from there): ``<repo>/migrations``.
CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "migrations"


def migrations_dir() -> Path:
    """The Alembic script folder: the packaged copy of an installed wheel, else the checkout's.

    The packaged copy wins so that a wheel installed next to an unrelated ``migrations/`` folder
    never runs someone else's scripts.
    """
    for folder in (PACKAGED_DIR, CHECKOUT_DIR):
        if (folder / "env.py").is_file():
            return folder
    raise FileNotFoundError(f"no Alembic migrations at {PACKAGED_DIR} (installed) or {CHECKOUT_DIR} (checkout)")


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Hide Alembic's INFO lines ("Context impl SQLiteImpl", one per revision) unless debugging.

    ``midre serve`` and ``midre admin create-key`` migrate on every start; their users want the
    key or the URL, not the migration log. ``midre -v`` (root logger at DEBUG) shows it again.
    """
    logger = logging.getLogger("alembic")
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that uses the ``migrations/`` folder (no ini file)."""
    with _quiet_alembic():  # importing alembic logs one INFO line per built-in plugin
        from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    with _quiet_alembic():
        from alembic import command

        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    with _quiet_alembic():
        from alembic import command

        command.downgrade(alembic_config(url), revision)
