"""A stored artifact as an HTTP download: what ``/v1/jobs/{id}/artifacts/{name}`` and the dashboard send."""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi.responses import FileResponse

from services.db.models import Artifact


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
