"""Query accounting per API key and model, with the model's optional budget (one atomic upsert).

A query is one image. ``charge`` adds ``n`` to the key's count only while the count stays within
the budget (``INSERT .. ON CONFLICT DO UPDATE .. WHERE`` on PostgreSQL and SQLite alike), so
concurrent requests on several API replicas can never overspend it; a refused request adds 1 to
``rejected`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.db.models import ModelUsage
from services.db.types import utcnow


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
