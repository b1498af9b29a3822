"""ORM rows -> the public shapes of :mod:`services.ops.schemas`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.jobs import unit_counts
from services.db.models import Artifact, Dataset, Job, JobEvent, Metric
from services.ops.schemas import (
    ArtifactPublic,
    DatasetPublic,
    EventPublic,
    JobError,
    JobPublic,
    UnitCounts,
)


def metrics_of(session: Session, job_ids: list[str]) -> dict[str, dict[str, float]]:
    """Final metrics of each job (one query); while a job runs, the latest per-epoch values."""
    rows = session.execute(
        select(Metric.job_id, Metric.name, Metric.value, Metric.epoch)
        .where(Metric.job_id.in_(job_ids))
        .order_by(Metric.id)
    ).all()
    latest: dict[str, dict[str, float]] = {}
    final: dict[str, dict[str, float]] = {}
    for job_id, name, value, epoch in rows:
        (latest if epoch is not None else final).setdefault(job_id, {})[name] = value
    return {job_id: final.get(job_id) or latest.get(job_id) or {} for job_id in job_ids}


def final_metrics(session: Session, job_id: str) -> dict[str, float]:
    """Final metrics of a job; while it runs, the latest per-epoch value of each name."""
    return metrics_of(session, [job_id])[job_id]


def job_view(session: Session, job: Job, metrics: dict[str, float] | None = None) -> JobPublic:
    """The public view of a job (``metrics`` when already loaded, e.g. for a page of jobs)."""
    error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    units = None
    if job.status != "queued":  # a job is planned into its units when a worker takes it
        counts = unit_counts(session, job.id)
        units = UnitCounts(**counts) if counts["total"] else None
    return JobPublic(
        units=units,
        id=job.id,
        kind=job.kind,
        status=job.status,  # type: ignore[arg-type]
        spec=job.spec,
        resolved=job.resolved,
        progress=min(max(job.progress, 0.0), 1.0),
        stage=job.stage,
        message=job.message,
        error=error,
        metrics=final_metrics(session, job.id) if metrics is None else metrics,
        attempt=job.attempt,
        queue=job.queue,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        trigger=job.trigger,
    )


def event_view(event: JobEvent) -> EventPublic:
    """The public view of an event."""
    return EventPublic(
        id=event.id,
        created_at=event.created_at,
        type=event.type,
        attempt=event.attempt,
        stage=event.stage,
        message=event.message,
        data=event.data or {},
    )


def artifact_view(artifact: Artifact) -> ArtifactPublic:
    """The public view of an artifact, with its download URL."""
    return ArtifactPublic(
        name=artifact.name,
        size=artifact.size,
        sha256=artifact.sha256,
        content_type=artifact.content_type,
        created_at=artifact.created_at,
        url=f"/v1/jobs/{artifact.job_id}/artifacts/{artifact.name}",
    )


def dataset_view(dataset: Dataset) -> DatasetPublic:
    """The public view of a dataset."""
    return DatasetPublic(
        id=dataset.id,
        name=dataset.name,
        source_type=dataset.source_type,  # type: ignore[arg-type]
        size_bytes=dataset.size_bytes,
        sha256=dataset.sha256,
        summary=dataset.summary or {},
        created_at=dataset.created_at,
    )
