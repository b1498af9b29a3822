"""One error shape for every 4xx/5xx answer: RFC 9457 problem details (``application/problem+json``).

The errors themselves (:class:`~services.ops.errors.ApiError`) are raised by the application layer
(:mod:`services.ops`) and the routes alike; this module turns them (and FastAPI's own) into responses.

``{"type", "title", "status", "detail", "instance", "code", "errors": [{"field", "message"}]}`` —
``code`` is a stable machine-readable name, ``errors`` lists field errors (dotted paths such as
``defense.a_h``) for validation failures.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.jobspec import kind_names
from services.ops.errors import ApiError, FieldError, not_found, validation_error  # noqa: F401  (re-exported)
from services.storage import StoreUnavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = Field("about:blank", description="URI naming the problem type.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str = Field(description="Stable machine-readable error code.")
    errors: list[FieldError] = Field(default_factory=list)


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build the problem-details response."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(
        type=f"urn:midre:problem:{code}",
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        code=code,
        errors=errors or [],
    )
    return JSONResponse(
        body.model_dump(), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    # Drop the discriminated-union tag pydantic inserts (e.g. body.<kind>.arch -> arch).
    if parts and parts[0] in kind_names() and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _error_field(err: dict[str, Any]) -> str:
    field = _loc_to_field(tuple(err.get("loc", ())))
    if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        tag = str((err.get("ctx") or {}).get("discriminator", "kind")).strip("'")
        field = f"{field}.{tag}" if field != "body" else tag
    return field


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return problem_response(request, exc.status, exc.code, exc.detail, exc.errors, exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "too_large"}
    detail = exc.detail if isinstance(exc.detail, str) else None
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, ApiError):  # e.g. a body cut off at its size limit
        return problem_response(request, cause.status, cause.code, cause.detail, cause.errors, cause.headers)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # A body that is not UTF-8 never reaches JSON parsing; answer it like malformed JSON (422).
        message = "the request body is not UTF-8 JSON"
        return problem_response(request, 422, "invalid_body", message, [FieldError(field="body", message=message)])
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.url.path}"
    return problem_response(
        request,
        exc.status_code,
        codes.get(exc.status_code, f"http_{exc.status_code}"),
        detail,
        headers=getattr(exc, "headers", None),
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [FieldError(field=_error_field(err), message=str(err.get("msg", "invalid"))) for err in exc.errors()]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return problem_response(request, 422, "validation_error", detail, errors)


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    """No database connection within the pool timeout (or SQLite's lock wait): a clean 503 that says
    when to retry, instead of a hung request or a 500."""
    log.warning("database busy on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem_response(request, 503, "database_busy", "the database is busy; retry shortly",
                            headers={"Retry-After": "1"})


async def _store_down(request: Request, exc: Exception) -> JSONResponse:
    """The object store cannot be reached: a 503 that says to retry; nothing stored is affected."""
    log.warning("object store unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(request, 503, "storage_unavailable",
                            "the object store is unavailable; nothing stored is lost, retry shortly",
                            headers={"Retry-After": "5"})


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "internal_error", "an unexpected error occurred")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through :func:`problem_response`."""
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _busy)
    app.add_exception_handler(StoreUnavailable, _store_down)
    app.add_exception_handler(Exception, _unhandled)


#: ``responses=`` entry documenting the problem body on routes.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": desc}
    for code, desc in {
        401: "Missing or invalid API key",
        403: "The API key lacks the scope (or the model) this operation needs",
        404: "Not found (or owned by another tenant)",
        422: "Invalid request; `errors` names the fields",
    }.items()
}

#: ``responses=`` entry of operations on a job's model: 409 while the job has not succeeded.
NO_MODEL_YET: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": "The job has not succeeded: no model yet"}
}
