"""One body-size policy for every route and content type, enforced before a body is read (and while it streams).

A JSON spec has no business being megabytes; a predict request carries at most
``MIDRE_SERVE_MAX_IMAGES`` images of ``MIDRE_SERVE_MAX_IMAGE_BYTES``; an upload (``multipart/form-data``
to a dataset or model upload route) carries one file under its own cap plus a few small fields.
Every other body, whatever its content type (a JSON registration sent to the upload route
included), gets the JSON cap. A declared ``Content-Length`` past the limit is a 413 before a byte
is read; a chunked body is cut off at the limit. The upload routes apply the same caps again, per
part, while they parse (:mod:`services.gateway.uploads`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import ApiError, FieldError, problem_response
from services.gateway.uploads import FRAMING_BYTES, MAX_CARD_BYTES, MAX_FIELD_BYTES
from services.settings import Settings

_DATASETS = re.compile(r"^/(?:v1|ui)/datasets/?$")  # the API's and the dashboard's upload form
_MODELS = re.compile(r"^/v1/models/?$")
#: Routes that carry images (the dashboard's "try it" form too).
IMAGES = (("POST", re.compile(r"^/v1/models/[^/]+/predict$")), ("POST", re.compile(r"^/v2/models/[^/]+/infer$")),
          ("POST", re.compile(r"^/ui/models/[^/]+/try$")))
BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

#: ``(method, path, content type) -> (the most body bytes accepted, the field a 413 names)``.
LimitFor = Callable[[str, str, str], tuple[int, str]]


def route_limits(settings: Settings, image_bytes: int) -> LimitFor:
    """The policy for ``settings``: upload caps for uploads, the image cap for images, else the JSON cap."""
    uploads = settings.max_upload_bytes + MAX_FIELD_BYTES + FRAMING_BYTES
    models = settings.max_model_bytes + MAX_CARD_BYTES + FRAMING_BYTES

    def limit(method: str, path: str, content_type: str) -> tuple[int, str]:
        if method == "POST" and content_type.startswith("multipart/form-data"):
            if _DATASETS.match(path):
                return uploads, "file"
            if _MODELS.match(path):
                return models, "file"
        if any(m == method and p.match(path) for m, p in IMAGES):
            return image_bytes, "body"
        return settings.max_json_bytes, "body"

    return limit


def _too_large(limit: int, field: str) -> ApiError:
    message = f"the request body is larger than the {limit} bytes this operation accepts"
    return ApiError(413, "too_large", message, errors=[FieldError(field=field, message=message)])


class BodyLimitMiddleware:
    """Pure ASGI middleware applying :func:`route_limits`."""

    def __init__(self, app: ASGIApp, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        limit, field = self.limit_for(scope["method"], scope["path"], content_type)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            error = _too_large(limit, field)
            response = problem_response(Request(scope), 413, error.code, error.detail, error.errors)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit, field)
            return message

        await self.app(scope, limited, send)
