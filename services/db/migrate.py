"""Apply Alembic migrations from code (``midre serve``, ``midre migrate``, the API's start-up, tests).

The migrations ship inside the package (``services/db/migrations``) and the Alembic config is built
here in code, so an installed wheel migrates its database from any working folder; the root
``alembic.ini`` of a source checkout is only a convenience for developers (``uv run alembic
revision --autogenerate -m "..."``) and points at the same folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

#: The Alembic script folder (env.py, script.py.mako, versions/), part of the installed package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


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
    """An Alembic config for ``url`` that uses the packaged ``migrations/`` folder (no ini file)."""
    with _quiet_alembic():  # importing alembic logs one INFO line per built-in plugin
        from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
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
