"""Job and unit states, and the few writes the API and the worker both make."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.db import mlflow, webhooks
from services.db.models import Job, JobEvent, JobUnit
from services.db.types import utcnow

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
#: A job's statuses.
STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: A job whose units may be running.
ACTIVE_RUN = (RUNNING, CANCELLING)
#: A unit waiting for its dependencies; then ``queued`` (sent), ``running``, and a terminal status.
PENDING = "pending"
#: A unit's statuses (``job_units.status``).
UNIT_STATUSES = (PENDING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
UNIT_TERMINAL = TERMINAL
#: A job's progress stays below this until it has finished (its last unit may report 1.0 before).
RUNNING_PROGRESS_CAP = 0.99


def unit_counts(session: Session, job_id: str) -> dict[str, int]:
    """``{"total", "pending", "queued", "running", "succeeded", "failed", "cancelled"}`` of a study's units."""
    rows = session.execute(
        select(JobUnit.status, func.count()).where(JobUnit.job_id == job_id).group_by(JobUnit.status)
    ).all()
    counts = dict.fromkeys(UNIT_STATUSES, 0)
    for status, n in rows:
        counts[status] = counts.get(status, 0) + int(n)
    counts["total"] = sum(int(n) for _, n in rows)
    return counts


def add_event(
    session: Session,
    job: Job,
    type_: str,
    message: str = "",
    *,
    stage: str | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append one event to a job's log (flushed, not committed)."""
    event = JobEvent(
        job_id=job.id,
        type=type_,
        attempt=job.attempt,
        stage=stage,
        message=message,
        data=data or {},
        created_at=utcnow(),
    )
    session.add(event)
    return event


def unit_event(session: Session, job: Job, row: JobUnit, status: str, message: str, **data: Any) -> None:
    """A ``unit`` event on the job: one unit changed status."""
    add_event(session, job, "unit", message, stage=job.stage,
                       data={"unit": row.key, "kind": row.kind, "status": status, "attempt": row.attempt, **data})


def weighted_progress(session: Session, job_id: str) -> float:
    """The job's progress from its units: finished weight plus running units' shares, over all weight."""
    rows = session.execute(select(JobUnit.weight, JobUnit.progress, JobUnit.status)
                           .where(JobUnit.job_id == job_id)).all()
    total = sum(max(w, 0.0) for w, _, _ in rows)
    if total <= 0:
        return 0.0
    done = sum(max(w, 0.0) * (1.0 if status == SUCCEEDED else min(max(p, 0.0), 1.0))
               for w, p, status in rows)
    return min(done / total, RUNNING_PROGRESS_CAP)


def transition(
    session: Session,
    job: Job,
    expected: Iterable[str],
    status: str,
    *,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Compare-and-set the status: move ``job`` to ``status`` only if it is still in ``expected``.

    A conditional UPDATE, so it is race-free on SQLite and PostgreSQL alike (the API cancelling
    while a worker claims). With ``attempt``, only that attempt of the job may make the move.
    Refreshes ``job``; returns whether the move happened (the caller then logs the event).
    A move to a final status also queues the job's webhook messages and its MLflow hand-off in the
    same transaction (:func:`services.db.webhooks.enqueue_job_end`,
    :func:`services.db.mlflow.enqueue_job_end`), so they commit, or not, with the status.
    """
    now = utcnow()
    if status in TERMINAL:
        values.setdefault("finished_at", now)
    if status == SUCCEEDED:
        values.setdefault("progress", 1.0)
    condition = (Job.id == job.id) & Job.status.in_(list(expected))
    if attempt is not None:
        condition = condition & (Job.attempt == attempt)
    result = session.execute(
        update(Job)
        .where(condition)
        .values(status=status, **values)
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    moved = result.rowcount == 1
    if moved and status in TERMINAL:
        webhooks.enqueue_job_end(session, job)
        mlflow.enqueue_job_end(session, job)
    return moved
