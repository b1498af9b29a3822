"""Artifacts: the files a job produced, each stored once by its sha256."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import Artifact, Job
from services.ops.context import ServiceContext, TenantRef
from services.ops.errors import ApiError, not_found
from services.ops.jobs import get_job


def list_artifacts(session: Session, tenant: TenantRef, job_id: str) -> list[Artifact]:
    """Every artifact of the tenant's job ``job_id``, by name (404 when the job is not the tenant's)."""
    job = get_job(session, tenant, job_id)
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name)).all())


def find_artifact(session: Session, tenant: TenantRef, job_id: str, name: str) -> Artifact:
    """The artifact ``name`` of the tenant's job ``job_id``; 404 when either is missing."""
    job = get_job(session, tenant, job_id)
    artifact = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
    if artifact is None:
        raise not_found("artifact", name)
    return artifact


def artifact_file(ctx: ServiceContext, artifact: Artifact) -> Path:
    """The stored file holding an artifact's bytes (from an object store: its copy in this machine's cache);
    410 when the file is no longer in storage, 503 (StoreUnavailable) when the store cannot be reached."""
    try:
        return ctx.store.path(artifact.sha256)
    except FileNotFoundError as exc:
        raise ApiError(410, "artifact_missing", f"artifact {artifact.name!r} is no longer in storage") from exc


def stored_file(ctx: ServiceContext, session: Session, tenant: TenantRef, job_id: str,
                name: str) -> tuple[Artifact, Path]:
    """The artifact ``name`` of the tenant's job ``job_id`` and the stored file holding its bytes: 404 when
    either is missing, 410 when the file is no longer in storage."""
    artifact = find_artifact(session, tenant, job_id, name)
    return artifact, artifact_file(ctx, artifact)


def jobs_with(session: Session, tenant: TenantRef, name: str, limit: int = 200) -> list[Job]:
    """The tenant's jobs that hold an artifact called ``name`` (``report.json``: its studies), newest first."""
    return list(session.scalars(
        select(Job).join(Artifact, Artifact.job_id == Job.id)
        .where(Job.tenant_id == tenant.id, Artifact.name == name)
        .order_by(Job.id.desc()).limit(limit)
    ))


__all__ = ["artifact_file", "find_artifact", "jobs_with", "list_artifacts", "stored_file"]
