"""Fixtures: an in-process API on SQLite, API keys, and the real PostgreSQL/Redis/RabbitMQ servers.

The server fixtures skip their tests when the server is not reachable, or fail them under
``MIDRE_REQUIRE_SERVERS=1`` (see ``tests/_requirements.py``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.db.keys import create_api_key
from services.db.session import dispose_all, session_scope
from services.gateway.app import create_app
from services.settings import Settings
from tests._requirements import need_server
from tests.service._support import FAST

PG_ADMIN_URL = os.environ.get("MIDRE_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MIDRE_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("MIDRE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Embedded settings under ``home`` with fast heartbeats, plus ``overrides``."""
    values: dict[str, Any] = {"home": home, "max_upload_bytes": 2 * 1024 * 1024, **FAST}
    values.update(overrides)
    return Settings(**values)


class Api:
    """An in-process API (``TestClient``) with helpers for authenticated calls."""

    def __init__(self, settings: Settings, client: TestClient) -> None:
        self.settings = settings
        self.client = client

    def key(self, tenant: str) -> str:
        with session_scope(self.settings.db_url) as session:
            return create_api_key(session, tenant)

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """A fresh embedded-mode API (SQLite + file broker, no worker) in a temporary folder."""
    settings = make_settings(tmp_path / "home")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(settings, client)
    dispose_all()


@pytest.fixture
def key_a(api: Api) -> str:
    return api.key("tenant-a")


@pytest.fixture
def key_b(api: Api) -> str:
    return api.key("tenant-b")


class PgDatabases:
    """Creates throw-away PostgreSQL databases and drops them all at the end of the session."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.names: list[str] = []

    def create(self) -> str:
        import sqlalchemy as sa

        name = f"midre_test_{secrets.token_hex(4)}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    def drop_all(self) -> None:
        import sqlalchemy as sa

        dispose_all()
        with self.admin.connect() as conn:
            for name in self.names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    """Factory of PostgreSQL databases private to this test run."""
    need_server("PostgreSQL", PG_ADMIN_URL, "MIDRE_TEST_PG_ADMIN")
    factory = PgDatabases()
    try:
        yield factory
    finally:
        factory.drop_all()


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The RabbitMQ broker URL (``$MIDRE_TEST_AMQP``), once it accepts connections."""
    need_server("RabbitMQ", AMQP_URL, "MIDRE_TEST_AMQP")
    return AMQP_URL


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A unique Redis key/queue prefix for this test run; its keys are deleted afterwards."""
    need_server("Redis", REDIS_URL, "MIDRE_TEST_REDIS")
    import redis

    prefix = f"midre-test-{secrets.token_hex(4)}-"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()
