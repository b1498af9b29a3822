"""Job states and the few writes the API and the worker both make."""

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
STATUSES = (QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: ``upload`` is a model a client uploaded (``POST /v1/models``): a job that succeeded when it was
#: stored, so uploaded and trained models share one id space, serving, policies and audits.
KINDS = ("train", "attack_eval", "pipeline", "sweep", "harden", "upload")
#: Kinds whose job produced one model (what ``model``, ``init_from`` and ``pretrained_job`` may name).
MODEL_KINDS = ("train", "upload")
#: Unit statuses of a fanned-out study (``job_units.status``).
UNIT_STATUSES = ("pending", "queued", "running", "succeeded", "failed", "cancelled")


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


def set_status(
    session: Session,
    job: Job,
    status: str,
    message: str = "",
    *,
    error_code: str | None = None,
) -> None:
    """Move a job to ``status``, stamp the times and log a ``status`` event."""
    now = utcnow()
    job.status = status
    if status == RUNNING and job.started_at is None:
        job.started_at = now
    if status in TERMINAL:
        job.finished_at = now
        job.cancel_requested = False if status != CANCELLED else job.cancel_requested
    if status == SUCCEEDED:
        job.progress = 1.0
    if error_code is not None:
        job.error_code = error_code
        job.error_message = message
    add_event(session, job, "status", message or status, stage=job.stage, data={"status": status})


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
