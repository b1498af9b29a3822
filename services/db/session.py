"""Engines and sessions, one engine per database URL per process (safe after a fork)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

_lock = threading.Lock()
_engines: dict[tuple[str, int], Engine] = {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing on a lock.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@dataclass(frozen=True)
class PoolOptions:
    """Connection pool of each process (``MIDRE_DB_POOL_SIZE``, ``MIDRE_DB_MAX_OVERFLOW``,
    ``MIDRE_DB_POOL_TIMEOUT_S``): a request waits at most ``timeout_s`` for a connection, in a worker
    thread (never on the event loop), then fails with 503 instead of hanging."""

    size: int = 10
    max_overflow: int = 20
    timeout_s: float = 10.0


def make_engine(url: str, *, pooled: bool = True, pool: PoolOptions | None = None) -> Engine:
    """A new engine for ``url`` with the per-backend settings the service relies on.

    Args:
        url: SQLAlchemy database URL.
        pooled: keep connections open between uses; False opens one per checkout (migrations).
        pool: pool size and wait for a connection (SQLite too: its writers still take turns).
    """
    extra: dict[str, Any] = {"poolclass": NullPool}
    if pooled:
        pool = pool or PoolOptions()
        extra = {"pool_size": pool.size, "max_overflow": pool.max_overflow, "pool_timeout": pool.timeout_s}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **extra)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **extra)


def get_engine(url: str, pool: PoolOptions | None = None) -> Engine:
    """The engine of ``url`` in this process (created on first use, with ``pool``; a forked child
    gets its own)."""
    key = (url, os.getpid())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url, pool=pool)
        return engine


def dispose_all() -> None:
    """Forget every engine of this process (used by tests and by worker children after fork)."""
    with _lock:
        for (_, pid), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()


def session_factory(url: str, pool: PoolOptions | None = None) -> sessionmaker[Session]:
    """A session factory bound to the engine of ``url``."""
    return sessionmaker(bind=get_engine(url, pool), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
