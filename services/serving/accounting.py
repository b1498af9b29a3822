"""Query accounting per API key and model, with the model's optional budget (one atomic upsert).

A query is one image. ``charge`` adds ``n`` to the key's count only while the count stays within
the budget (``INSERT .. ON CONFLICT DO UPDATE .. WHERE`` on PostgreSQL and SQLite alike), so
concurrent requests on several API replicas can never overspend it; a refused request adds 1 to
``rejected`` instead. The budget the ``WHERE`` compares with is read from ``model_policies`` in
that very statement, not from a replica's cache: a budget set or lowered on one replica binds
every database charge on every replica at once.

A model *without* a budget has nothing to protect, so its counts need not hit the database on
every request: :class:`UsageMeter` counts them in memory per (API key, model) and writes them in
one transaction every ``MIDRE_SERVE_USAGE_FLUSH_S`` (and before anything reads the table, and at
shutdown). A replica learns that a model got a budget when its cached view of the model expires
(2 s); meanwhile its in-memory counting is a lease of at most ``MIDRE_SERVE_USAGE_LEASE`` queries
per key, after which the next request takes the exact database charge. A budget set under load is
therefore overspent by at most that many queries per key and replica (0: never).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.db.models import ModelPolicy, ModelUsage
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


#: Stands for "no budget" in the SQL comparison (larger than any count).
_UNLIMITED = 2**62


def charge(session: Session, key_id: str, job_id: str, n: int, budget: int | None = None) -> Charge:
    """Count ``n`` queries of ``key_id`` on ``job_id`` unless that would exceed the model's budget; commits.

    The budget that binds is the one in the database when the statement runs (``budget``, what the
    caller's cache believes, is not used for the check); the answer carries it.
    """
    now = utcnow()
    table = ModelUsage.__table__
    current = select(ModelPolicy.budget).where(ModelPolicy.job_id == job_id)
    budget = session.scalar(current)
    stmt = _insert(session).values(key_id=key_id, job_id=job_id, queries=n, rejected=0, last_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.key_id, table.c.job_id],
        set_={"queries": table.c.queries + n, "last_at": now},
        where=table.c.queries + n <= func.coalesce(current.scalar_subquery(), _UNLIMITED),
    ).returning(table.c.queries)
    count = None if budget is not None and n > budget else session.execute(stmt).scalar()
    if count is not None:
        session.commit()
        return Charge(True, int(count), budget)
    # Over budget: remember the refusal (the row exists unless n alone exceeds the budget).
    refused = _insert(session).values(key_id=key_id, job_id=job_id, queries=0, rejected=1, last_at=now)
    refused = refused.on_conflict_do_update(
        index_elements=[table.c.key_id, table.c.job_id],
        set_={"rejected": table.c.rejected + 1, "last_at": now},
    ).returning(table.c.queries)
    current_count = int(session.execute(refused).scalar() or 0)
    now_budget = session.scalar(current)  # the one that refused it (it may have changed since the read above)
    budget = budget if now_budget is None else now_budget
    session.commit()
    return Charge(False, current_count, budget)


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

    The in-memory count of a pair is a lease: after ``lease`` queries counted here since this process
    last charged the pair in the database, :meth:`add` answers None and the next request takes the
    database charge, which sees a budget set meanwhile on any replica. So a budget set on another
    replica is overspent by at most ``lease`` queries per key here, before this process's cached
    view of the model expires.

    Args:
        sessions: session factory of the service database.
        enabled: False charges every request in the database (write-through).
        lease: queries of a pair counted in memory between two database charges (0: every request).
    """

    #: Pairs whose count is remembered; past this the memory is cleared (they re-sync on demand).
    MAX_PAIRS = 100_000

    def __init__(self, sessions: Callable[[], Session], *, enabled: bool = True, lease: int = 100) -> None:
        self.sessions = sessions
        self.enabled = enabled
        self.lease = lease
        self._lock = threading.Lock()  # guards the dicts below (held for microseconds)
        self._flush_lock = threading.Lock()  # one flush at a time
        self._base: dict[Pair, int] = {}  # the DB count last seen by this process
        self._pending: dict[Pair, int] = {}  # counted here, not yet written
        self._inflight: dict[Pair, int] = {}  # being written by the running flush
        self._since: dict[Pair, int] = {}  # counted here since the pair's last database charge (the lease)
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
            since = self._since.get(pair, 0) + n
            if base is None or since > self.lease:
                return None
            self._since[pair] = since
            pending = self._pending.get(pair, 0) + n
            self._pending[pair] = pending
            return base + self._inflight.get(pair, 0) + pending

    def charge(self, session: Session, key_id: str, job_id: str, n: int, budget: int | None) -> Charge:
        """The exact, atomic :func:`charge` (blocking). It first writes what this process counted,
        so the database's budget check sees every query; a pair the database says is unbudgeted
        then gets a fresh lease for :meth:`add` (with its count), a budgeted one none."""
        pair = (key_id, job_id)
        if self.pending(key_id, job_id):
            self.flush()
        spent = charge(session, key_id, job_id, n, budget)
        with self._lock:
            self._since.pop(pair, None)
            if spent.budget is not None or not self.enabled:
                self._base.pop(pair, None)
            elif spent.allowed:
                if len(self._base) >= self.MAX_PAIRS and not self._pending and not self._inflight:
                    self._base.clear()
                    self._since.clear()
                self._base[pair] = max(self._base.get(pair, 0), spent.queries)
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
                self._since.pop(pair, None)
