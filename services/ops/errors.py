"""The errors a request answers with, raised by the application layer and the transports alike.

:class:`ApiError` carries an HTTP status, a stable machine-readable ``code``, a sentence, and the
fields at fault; the gateway answers it as RFC 9457 problem details (:mod:`services.gateway.errors`),
the dashboard shows it on the page.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class FieldError(BaseModel):
    """One invalid field."""

    field: str = Field(description="Dotted path of the field, e.g. `defense.a_h`.")
    message: str


class ApiError(Exception):
    """An error the API answers with a problem-details body.

    Args:
        status: HTTP status code.
        code: machine-readable code (also the last part of ``type``).
        detail: human-readable explanation of this occurrence.
        errors: field errors, for validation failures.
        headers: extra response headers (e.g. ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.headers = headers


def not_found(what: str, ident: str) -> ApiError:
    """404 for a missing resource (or one that belongs to another tenant: same answer)."""
    return ApiError(404, "not_found", f"{what} {ident!r} was not found")


def forbidden(detail: str) -> ApiError:
    """403 for a valid key that lacks the scope (or the model) an operation needs."""
    return ApiError(403, "forbidden", detail)


def validation_error(field: str, message: str) -> ApiError:
    """422 naming one invalid field."""
    return ApiError(
        422,
        "validation_error",
        f"{field}: {message}",
        errors=[FieldError(field=field, message=message)],
    )


__all__ = ["ApiError", "FieldError", "forbidden", "not_found", "validation_error"]
