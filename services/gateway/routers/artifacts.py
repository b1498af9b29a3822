"""``/v1/jobs/{id}/artifacts``: list and download (with sha256, size and range requests)."""

from __future__ import annotations

import base64

from fastapi import APIRouter
from fastapi.responses import FileResponse
from sqlalchemy import select

from services.db.models import Artifact
from services.gateway.deps import DB, Ctx, CurrentTenant, scoped
from services.gateway.errors import PROBLEM_RESPONSES, ApiError, not_found
from services.gateway.schemas import ArtifactList
from services.gateway.views import artifact_view
from services.ops.jobs import get_job

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="List a job's artifacts")
def list_artifacts(session: DB, tenant: CurrentTenant, job_id: str) -> ArtifactList:
    """Checkpoint (``model.safetensors`` + ``model.json``), reports and plots, each with sha256 and size."""
    job = get_job(session, tenant, job_id)
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name)).all()
    return ArtifactList(items=[artifact_view(a) for a in rows])


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    summary="Download an artifact",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes"},
        206: {"description": "Part of the file (`Range` request)"},
    },
)
def download_artifact(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str, name: str) -> FileResponse:
    """Exactly the bytes whose sha256 the listing shows (``ETag`` and ``Repr-Digest`` carry it too).

    Supports ``Range: bytes=...`` for resuming big downloads.
    """
    job = get_job(session, tenant, job_id)
    artifact = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
    if artifact is None:
        raise not_found("artifact", name)
    try:
        path = ctx.store.path(artifact.sha256)
    except FileNotFoundError as exc:
        raise ApiError(410, "artifact_missing", f"artifact {name!r} is no longer in storage") from exc
    digest = base64.b64encode(bytes.fromhex(artifact.sha256)).decode()
    return FileResponse(
        path,
        media_type=artifact.content_type,
        filename=name.rsplit("/", 1)[-1],
        headers={
            "ETag": f'"{artifact.sha256}"',
            "Repr-Digest": f"sha-256=:{digest}:",
            "X-Checksum-Sha256": artifact.sha256,
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )
