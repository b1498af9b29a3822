"""``/v1/jobs/{id}/artifacts``: list and download (with sha256, size and range requests), over
:mod:`services.ops.artifacts`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from services.gateway.deps import DB, Ctx, CurrentTenant, scoped
from services.gateway.downloads import send_artifact
from services.gateway.errors import PROBLEM_RESPONSES
from services.ops import artifacts as ops
from services.ops.schemas import ArtifactList
from services.ops.views import artifact_view

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="List a job's artifacts")
def list_artifacts(session: DB, tenant: CurrentTenant, job_id: str) -> ArtifactList:
    """Checkpoint (``model.safetensors`` + ``model.json``), reports and plots, each with sha256 and size."""
    return ArtifactList(items=[artifact_view(a) for a in ops.list_artifacts(session, tenant, job_id)])


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    summary="Download an artifact",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes"},
        206: {"description": "Part of the file (`Range` request)"},
        307: {"description": "With MIDRE_S3_PRESIGNED_DOWNLOADS: the object's presigned URL (`Location`)"},
        503: {"description": "The object store cannot be reached now (`Retry-After`)"},
    },
)
def download_artifact(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str, name: str) -> Response:
    """Exactly the bytes whose sha256 the listing shows (``ETag`` and ``Repr-Digest`` carry it too).

    Supports ``Range: bytes=...`` for resuming big downloads. With an object store and
    ``MIDRE_S3_PRESIGNED_DOWNLOADS``, a 307 to a short-lived presigned URL of the object instead; while the
    store cannot be reached, 503 with ``Retry-After``.
    """
    artifact = ops.find_artifact(session, tenant, job_id, name)
    return send_artifact(ctx, artifact, lambda: ops.artifact_file(ctx, artifact))
