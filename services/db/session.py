"""Engines and sessions, one engine per database URL per process (safe after a fork)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """A new engine for ``url`` with the per-backend settings the service relies on.

    Args:
        url: SQLAlchemy database URL.
        pooled: keep connections open between uses; False opens one per checkout (migrations).
    """
    extra: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **extra)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if pooled:
        extra.update(pool_size=10, max_overflow=20)
    return create_engine(url, pool_pre_ping=True, **extra)


def get_engine(url: str) -> Engine:
    """The engine of ``url`` in this process (created on first use; a forked child gets its own)."""
    key = (url, os.getpid())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url)
        return engine


def dispose_all() -> None:
    """Forget every engine of this process (used by tests and by worker children after fork)."""
    with _lock:
        for (_, pid), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()


def session_factory(url: str) -> sessionmaker[Session]:
    """A session factory bound to the engine of ``url``."""
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


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
