"""ORM rows -> public API shapes."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import Artifact, Dataset, Job, JobEvent, Metric
from services.gateway.schemas import (
    ArtifactPublic,
    DatasetPublic,
    EventPublic,
    JobError,
    JobPublic,
)


def final_metrics(session: Session, job_id: str) -> dict[str, float]:
    """Final metrics of a job; while it runs, the latest per-epoch value of each name."""
    rows = session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)).all()
    latest: dict[str, float] = {}
    final: dict[str, float] = {}
    for row in rows:
        (latest if row.epoch is not None else final)[row.name] = row.value
    return final or latest


def job_view(session: Session, job: Job) -> JobPublic:
    """The public view of a job."""
    error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,  # type: ignore[arg-type]
        spec=job.spec,
        progress=min(max(job.progress, 0.0), 1.0),
        stage=job.stage,
        message=job.message,
        error=error,
        metrics=final_metrics(session, job.id),
        attempt=job.attempt,
        queue=job.queue,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
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
