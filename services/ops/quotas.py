"""Per-tenant quotas: what one tenant may hold or run at once, so no tenant can exhaust the service.

Each check answers 429 with a problem-details body naming the quota (``quota``), the limit, what
the tenant uses, and the setting that sets it. Jobs and studies are checked at submit time, storage
when a dataset or model is uploaded.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.db import jobs as jobstate
from services.db.models import Artifact, Dataset, Job
from services.jobspec import get_kind
from services.ops.errors import ApiError, FieldError
from services.settings import Settings

ACTIVE = (jobstate.QUEUED, jobstate.RUNNING, jobstate.CANCELLING)


def quota_error(quota: str, used: int, limit: int, setting: str, retry_after_s: int | None = 30) -> ApiError:
    """429 naming the quota."""
    message = f"quota {quota!r} reached: {used} of {limit} ({setting})"
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None
    return ApiError(429, "quota_exceeded", message, errors=[FieldError(field=quota, message=message)], headers=headers)


def check_job_quotas(session: Session, settings: Settings, tenant_id: str, resolved: dict[str, Any]) -> None:
    """Active jobs of the tenant, and the training and attack runs of one job (its kind's ``runs``)."""
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    ) or 0
    if active >= settings.max_active_jobs:
        raise quota_error("active_jobs", active, settings.max_active_jobs, "MIDRE_MAX_ACTIVE_JOBS")
    runs = get_kind(resolved["kind"]).runs(resolved.get("config") or {})
    if runs > settings.max_study_runs:
        raise quota_error("study_runs", runs, settings.max_study_runs, "MIDRE_MAX_STUDY_RUNS", None)


def check_storage_quota(session: Session, settings: Settings, tenant_id: str, incoming: int) -> None:
    """Bytes the tenant's datasets and job artifacts hold, plus ``incoming``."""
    datasets = session.scalar(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.tenant_id == tenant_id)
    ) or 0
    artifacts = session.scalar(
        select(func.coalesce(func.sum(Artifact.size), 0)).join(Job, Job.id == Artifact.job_id)
        .where(Job.tenant_id == tenant_id)
    ) or 0
    used = int(datasets) + int(artifacts)
    if used + incoming > settings.max_storage_bytes:
        raise quota_error("storage_bytes", used + incoming, settings.max_storage_bytes, "MIDRE_MAX_STORAGE_BYTES",
                          None)


def check_storage(sessions: sessionmaker[Session], settings: Settings, tenant_id: str, incoming: int) -> None:
    """:func:`check_storage_quota` in its own session (called from a worker thread by the upload routes)."""
    with sessions() as session:
        check_storage_quota(session, settings, tenant_id, incoming)
