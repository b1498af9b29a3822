"""Engines and sessions, one engine per database URL per process (safe after a fork).

SQLite has one writer at a time per database. Left to itself, every thread that wants to write
polls for the lock in SQLite's busy handler, which sleeps up to 100 ms between tries even when the
lock has just been freed: under a burst of submissions the writers spend most of their time asleep
while holding pooled connections, the pool runs dry and requests answer 503. So each process has
**one writer path** per SQLite database: a statement that writes (``INSERT``, ``UPDATE``,
``DELETE``, ``REPLACE``) first takes the process's write lock, held until its transaction commits
or rolls back (:class:`_SqliteConnection`). Threads queue on that lock and are woken the moment it
is free; only the holder contends, through ``busy_timeout``, with other processes (workers). Reads
never wait (WAL).
"""

from __future__ import annotations

import os
import sqlite3
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


#: Fewest connections an SQLite pool may open: more than the threads that can hold a session at once
#: (the API's thread pool of 40, the upload checks, the serving threads), so a burst of requests
#: never waits for a connection (and answers 503) while the writers take their turns.
SQLITE_CONNECTIONS = 100
#: Seconds a writer waits for its turn (the process's lock, then SQLite's lock) before "database is locked".
SQLITE_BUSY_S = 30.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")
_write_locks: dict[tuple[str, int], threading.Lock] = {}


def _write_lock(database: str) -> threading.Lock:
    """The write lock of ``database`` in this process (a forked child gets a fresh one)."""
    key = (os.path.realpath(database), os.getpid())
    with _lock:
        return _write_locks.setdefault(key, threading.Lock())


class _SqliteCursor(sqlite3.Cursor):
    """A cursor that takes its connection's turn to write before a writing statement."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.connection.before_statement(sql)  # type: ignore[attr-defined]
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self.connection.before_statement(sql)  # type: ignore[attr-defined]
        return super().executemany(sql, parameters)


class _SqliteConnection(sqlite3.Connection):
    """A connection holding the process's write lock from its first writing statement until its
    transaction ends (commit, rollback or close), so the process writes through one path."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self.write_lock = _write_lock(database)
        self.writing = False

    def cursor(self, factory: Any = _SqliteCursor) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory)

    def before_statement(self, sql: str) -> None:
        if self.writing or not sql.lstrip()[:6].upper().startswith(_WRITES):
            return
        if not self.write_lock.acquire(timeout=SQLITE_BUSY_S):
            raise sqlite3.OperationalError(f"database is locked (no turn to write within {SQLITE_BUSY_S:g} s)")
        self.writing = True

    def _release(self) -> None:
        if self.writing:
            self.writing = False
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()


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
    sqlite = url.startswith("sqlite")
    if pooled:
        pool = pool or PoolOptions()
        overflow = pool.max_overflow
        if sqlite:  # a connection is a file handle: never make a request wait for one (see SQLITE_CONNECTIONS)
            overflow = max(overflow, SQLITE_CONNECTIONS - pool.size)
        extra = {"pool_size": pool.size, "max_overflow": overflow, "pool_timeout": pool.timeout_s}
    if sqlite:
        connect = {"check_same_thread": False, "timeout": SQLITE_BUSY_S, "factory": _SqliteConnection}
        engine = create_engine(url, connect_args=connect, **extra)
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
