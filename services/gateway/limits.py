"""Body size limits per route, enforced before a body is read (and while it streams).

A JSON spec has no business being megabytes; a predict request carries at most
``MIDRE_SERVE_MAX_IMAGES`` images of ``MIDRE_SERVE_MAX_IMAGE_BYTES``; uploads (datasets, models)
stream to disk under their own caps. A declared ``Content-Length`` past the route's limit is a 413
before a byte is read; a chunked body is cut off at the limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import ApiError, FieldError, problem_response

#: Routes that stream their body to disk under their own cap (``MIDRE_MAX_UPLOAD_BYTES``, ``..._MODEL_BYTES``).
STREAMED = (("POST", re.compile(r"^/v1/datasets/?$")), ("POST", re.compile(r"^/v1/models/?$")),
            ("POST", re.compile(r"^/ui/datasets/?$")))  # the dashboard's upload form
#: Routes that carry images (the dashboard's "try it" form too).
IMAGES = (("POST", re.compile(r"^/v1/models/[^/]+/predict$")), ("POST", re.compile(r"^/v2/models/[^/]+/infer$")),
          ("POST", re.compile(r"^/ui/models/[^/]+/try$")))
BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def route_limits(json_bytes: int, image_bytes: int) -> Callable[[str, str], int | None]:
    """``(method, path) -> the most body bytes accepted`` (None: the route enforces its own cap)."""

    def limit(method: str, path: str) -> int | None:
        if any(m == method and p.match(path) for m, p in STREAMED):
            return None
        if any(m == method and p.match(path) for m, p in IMAGES):
            return image_bytes
        return json_bytes

    return limit


def _too_large(limit: int) -> ApiError:
    message = f"the request body is larger than the {limit} bytes this operation accepts"
    return ApiError(413, "too_large", message, errors=[FieldError(field="body", message=message)])


class BodyLimitMiddleware:
    """Pure ASGI middleware applying :func:`route_limits`."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS:
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            error = _too_large(limit)
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
                    raise _too_large(limit)
            return message

        await self.app(scope, limited, send)
