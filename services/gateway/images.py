"""The images of a predict request, read from its body: multipart ``files`` parts or JSON ``images``
(base64), with the per-request caps (``MIDRE_SERVE_MAX_IMAGES``, ``MIDRE_SERVE_MAX_IMAGE_BYTES``).

Shared by ``POST /v1/models/{id}/predict`` and the dashboard's "try it" form; what the images then
become (preprocessing, the query charge, the forward pass) is :func:`services.ops.serving.predict_images`.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from services.ops.errors import ApiError, FieldError, validation_error
from services.ops.serving import input_error
from services.serving.preprocess import InputError, RawImage, decode_base64
from services.serving.runtime import ServingRuntime
from services.serving.schemas import PredictJSON


def _json_images(raw: bytes, max_image_bytes: int) -> tuple[list[RawImage], int | None]:
    """The images and ``top_k`` of a JSON predict body (validated, base64-decoded)."""
    try:
        body = PredictJSON.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            FieldError(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"]) for e in exc.errors()
        ]
        raise ApiError(
            422, "validation_error", "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        ) from exc
    images = []
    for i, item in enumerate(body.images):
        field = f"images[{i}]"
        name, text = ("", item) if isinstance(item, str) else (item.name or "", item.data)
        try:
            data = decode_base64(field, text, max_image_bytes, name)
        except InputError as exc:
            raise input_error(exc) from exc
        images.append(RawImage(field, name, data))
    return images, body.top_k


async def read_images(request: Request, rt: ServingRuntime) -> tuple[list[RawImage], int | None]:
    """The submitted images (multipart ``files`` parts or JSON ``images``) and the body's ``top_k``."""
    limits = rt.settings
    ctype = request.headers.get("content-type", "")
    images: list[RawImage] = []
    top_k: int | None = None
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=limits.max_images + 1)
        parts = [v for k, v in form.multi_items() if k in ("files", "file")]
        if not parts:
            raise validation_error("files", "send one or more image files as multipart parts named `files`")
        for i, part in enumerate(parts):
            field = f"files[{i}]"
            if not isinstance(part, UploadFile):
                raise validation_error(field, "must be a file part, not a text field")
            data = await part.read(limits.max_image_bytes + 1)
            if len(data) > limits.max_image_bytes:
                raise input_error(InputError(field, f"{part.filename} is larger than {limits.max_image_bytes} bytes",
                                             status=413))
            images.append(RawImage(field, part.filename or "", data))
        raw_k = form.get("top_k")
        if isinstance(raw_k, str) and raw_k.strip():
            if not raw_k.strip().isdigit() or not 1 <= int(raw_k) <= 100_000:
                raise validation_error("top_k", "must be an integer in [1, 100000]")
            top_k = int(raw_k)
    elif ctype.startswith("application/json"):
        # Parsing and base64-decoding megabytes is CPU work: a worker thread, not the event loop.
        images, top_k = await run_in_threadpool(_json_images, await request.body(), limits.max_image_bytes)
    else:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data `files` or JSON `images` (base64)")
    if len(images) > limits.max_images:
        raise validation_error("files" if ctype.startswith("multipart") else "images",
                               f"at most {limits.max_images} images per request, got {len(images)}")
    return images, top_k
