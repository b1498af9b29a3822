"""A stored artifact as an HTTP download: what ``/v1/jobs/{id}/artifacts/{name}`` and the dashboard send."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from fastapi.responses import FileResponse, RedirectResponse, Response

from services.db.models import Artifact
from services.ops.context import ServiceContext


def download_response(artifact: Artifact, path: Path) -> FileResponse:
    """The file's bytes, with its sha256 in ``ETag``, ``Repr-Digest`` and ``X-Checksum-Sha256``; range
    requests resume big downloads (Starlette's :class:`FileResponse`)."""
    digest = base64.b64encode(bytes.fromhex(artifact.sha256)).decode()
    return FileResponse(
        path,
        media_type=artifact.content_type,
        filename=artifact.name.rsplit("/", 1)[-1],
        headers={
            "ETag": f'"{artifact.sha256}"',
            "Repr-Digest": f"sha-256=:{digest}:",
            "X-Checksum-Sha256": artifact.sha256,
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )


def send_artifact(ctx: ServiceContext, artifact: Artifact, path_of: Callable[[], Path]) -> Response:
    """What a download route answers: with ``MIDRE_S3_PRESIGNED_DOWNLOADS`` on an object store, a 307 to a
    presigned URL of the object (the bytes never pass through the API); otherwise the file, streamed from
    this machine's copy (``path_of``: the store's file, brought to the local cache first where need be)."""
    if ctx.store.remote and ctx.settings.s3_presigned_downloads:
        url = ctx.store.presigned_url(artifact.sha256, artifact.name.rsplit("/", 1)[-1], artifact.content_type)
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store",
                                                               "X-Checksum-Sha256": artifact.sha256})
    return download_response(artifact, path_of())
