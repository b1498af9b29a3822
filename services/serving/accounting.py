"""Query accounting per API key and model, with the model's optional budget (one atomic upsert).

A query is one image. ``charge`` adds ``n`` to the key's count only while the count stays within
the budget (``INSERT .. ON CONFLICT DO UPDATE .. WHERE`` on PostgreSQL and SQLite alike), so
concurrent requests on several API replicas can never overspend it; a refused request adds 1 to
``rejected`` instead.

A model *without* a budget has nothing to protect, so its counts need not hit the database on
every request: :class:`UsageMeter` counts them in memory per (API key, model) and writes them in
one transaction every ``MIDRE_SERVE_USAGE_FLUSH_S`` (and before anything reads the table, and at
shutdown). Budgeted models always take the exact per-request ``charge``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.db.models import ModelUsage
from services.db.types import utcnow

log = logging.getLogger(__name__)

Pair = tuple[str, str]


@dataclass(frozen=True)
class Charge:
    """The outcome of a charge: ``allowed`` and the key's count of queries after it."""

    allowed: bool
    queries: int
    budget: int | None

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(self.budget - self.queries, 0)


def _insert(session: Session):  # noqa: ANN202 - dialect-specific Insert
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(ModelUsage)
    if name == "sqlite":
        return sqlite.insert(ModelUsage)
    raise RuntimeError(f"query accounting needs PostgreSQL or SQLite, not {name}")


def charge(session: Session, key_id: str, job_id: str, n: int, budget: int | None) -> Charge:
    """Count ``n`` queries of ``key_id`` on ``job_id`` unless that would exceed ``budget``; commits."""
    now = utcnow()
    table = ModelUsage.__table__
    stmt = _insert(session).values(key_id=key_id, job_id=job_id, queries=n, rejected=0, last_at=now)
    where = None if budget is None else (table.c.queries + n <= budget)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.key_id, table.c.job_id],
        set_={"queries": table.c.queries + n, "last_at": now},
        where=where,
    ).returning(table.c.queries)
    if budget is not None and n > budget:
        count = None
    else:
        count = session.execute(stmt).scalar()
    if count is not None:
        session.commit()
        return Charge(True, int(count), budget)
    # Over budget: remember the refusal (the row exists unless n alone exceeds the budget).
    refused = _insert(session).values(key_id=key_id, job_id=job_id, queries=0, rejected=1, last_at=now)
    refused = refused.on_conflict_do_update(
        index_elements=[table.c.key_id, table.c.job_id],
        set_={"rejected": table.c.rejected + 1, "last_at": now},
    ).returning(table.c.queries)
    current = int(session.execute(refused).scalar() or 0)
    session.commit()
    return Charge(False, current, budget)


def reset(session: Session, job_id: str) -> None:
    """Zero every key's count on ``job_id`` (the owner granted a fresh budget)."""
    session.execute(update(ModelUsage).where(ModelUsage.job_id == job_id).values(queries=0, rejected=0))


def _add(session: Session, rows: list[tuple[Pair, int]]) -> dict[Pair, int]:
    """Add each row's count to its (key_id, job_id) in one statement; returns the counts after it."""
    now = utcnow()
    table = ModelUsage.__table__
    stmt = _insert(session).values(
        [{"key_id": k, "job_id": j, "queries": n, "rejected": 0, "last_at": now} for (k, j), n in rows]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.key_id, table.c.job_id],
        set_={"queries": table.c.queries + stmt.excluded.queries, "last_at": now},
    ).returning(table.c.key_id, table.c.job_id, table.c.queries)
    return {(k, j): int(q) for k, j, q in session.execute(stmt)}


class UsageMeter:
    """Write-behind query counts of models without a budget, per process.

    The first request of an (API key, model) pair in this process is charged in the database
    (:meth:`charge`, which also learns the pair's count); later ones are counted in memory by
    :meth:`add` and written by :meth:`flush` in one transaction (sorted rows: replicas flushing the
    same rows cannot deadlock). The count a request is told is the database count at this
    process's last flush plus what this process has counted since, so it is exact on a single
    replica and never lower than this process's own queries; other replicas' queries show after
    the next flush. A failed flush keeps its counts for the next one.

    Args:
        sessions: session factory of the service database.
        enabled: False charges every request in the database (write-through).
    """

    #: Pairs whose count is remembered; past this the memory is cleared (they re-sync on demand).
    MAX_PAIRS = 100_000

    def __init__(self, sessions: Callable[[], Session], *, enabled: bool = True) -> None:
        self.sessions = sessions
        self.enabled = enabled
        self._lock = threading.Lock()  # guards the dicts below (held for microseconds)
        self._flush_lock = threading.Lock()  # one flush at a time
        self._base: dict[Pair, int] = {}  # the DB count last seen by this process
        self._pending: dict[Pair, int] = {}  # counted here, not yet written
        self._inflight: dict[Pair, int] = {}  # being written by the running flush
        self.flushes = 0

    @property
    def dirty(self) -> bool:
        """True while counts wait to be written."""
        return bool(self._pending)

    def pending(self, key_id: str | None = None, job_id: str | None = None) -> int:
        """Queries counted here and not yet written (all, or of one key and/or model)."""
        with self._lock:
            return sum(
                n
                for (k, j), n in (*self._pending.items(), *self._inflight.items())
                if (key_id is None or k == key_id) and (job_id is None or j == job_id)
            )

    def add(self, key_id: str, job_id: str, n: int) -> int | None:
        """Count ``n`` queries in memory; returns the pair's count, or None when this process has
        not learnt the pair's count yet (then call :meth:`charge`). Never blocks on the database."""
        if not self.enabled:
            return None
        pair = (key_id, job_id)
        with self._lock:
            base = self._base.get(pair)
            if base is None:
                return None
            pending = self._pending.get(pair, 0) + n
            self._pending[pair] = pending
            return base + self._inflight.get(pair, 0) + pending

    def charge(self, session: Session, key_id: str, job_id: str, n: int, budget: int | None) -> Charge:
        """The exact, atomic :func:`charge` (blocking). A budgeted charge first writes what this
        process counted for the pair, so the budget check sees every query; an unbudgeted one
        teaches :meth:`add` the pair's count."""
        pair = (key_id, job_id)
        if budget is not None and self.pending(key_id, job_id):
            self.flush()
        spent = charge(session, key_id, job_id, n, budget)
        if budget is None and self.enabled and spent.allowed:
            with self._lock:
                if len(self._base) >= self.MAX_PAIRS and not self._pending and not self._inflight:
                    self._base.clear()
                self._base.setdefault(pair, spent.queries)
        return spent

    def flush(self) -> int:
        """Write the counted queries in one transaction (blocking); returns the pairs written.

        Raises:
            SQLAlchemyError: when the database cannot be written (the counts are kept).
        """
        with self._flush_lock:
            with self._lock:
                if not self._pending:
                    return 0
                batch, self._pending = self._pending, {}
                self._inflight = batch
            try:
                counts = self._write(sorted(batch.items()))
            except BaseException:
                with self._lock:
                    for pair, n in batch.items():
                        self._pending[pair] = self._pending.get(pair, 0) + n
                    self._inflight = {}
                raise
            with self._lock:
                self._inflight = {}
                self._base.update(counts)
                for pair in batch.keys() - counts.keys():  # the key or the model is gone
                    self._base.pop(pair, None)
                self.flushes += 1
            return len(batch)

    def _write(self, rows: list[tuple[Pair, int]]) -> dict[Pair, int]:
        with self.sessions() as session:
            try:
                counts = _add(session, rows)
                session.commit()
                return counts
            except IntegrityError:
                # An API key or a job was deleted since its queries were counted: write the
                # others one by one and drop those (their rows would have been deleted with them).
                session.rollback()
            counts = {}
            for pair, n in rows:
                try:
                    with session.begin_nested():
                        counts.update(_add(session, [(pair, n)]))
                except IntegrityError:
                    log.info("dropping %d queries of key %s on %s: the key or the model is gone", n, *pair)
            session.commit()
            return counts

    def forget(self, job_id: str) -> None:
        """Drop what this process knows of ``job_id``'s counts (after a reset): they re-sync."""
        with self._lock:
            for pair in [p for p in self._base if p[1] == job_id]:
                del self._base[pair]
