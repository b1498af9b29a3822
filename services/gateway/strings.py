"""Refusing text the database cannot store, as a 422 naming the field, on SQLite and PostgreSQL alike.

PostgreSQL refuses a NUL character in ``text`` and ``jsonb`` values, and neither database driver can
encode a lone UTF-16 surrogate (``"\\ud800"`` in JSON) to UTF-8; left to the database, either is a
500 that also drops the client's keep-alive connection. :func:`refuse_unstorable` is an app-wide
dependency that checks, before any handler or database query runs, every path parameter, query
parameter, JSON body (keys and values, at any depth) and URL-encoded form field, and answers 422
with the dotted path of the first bad value. Multipart form fields are checked as they are parsed
(:mod:`services.gateway.uploads`), and a model card's JSON by the upload itself. What counts as
unstorable is :mod:`services.ops.storable`.
"""

from __future__ import annotations

import json
import re

from fastapi import Request

from services.ops.errors import validation_error
from services.ops.storable import UNSTORABLE, find_unstorable, has_unstorable

#: A JSON text holds such a character only as an escape (raw control characters are invalid JSON).
_BAD_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
#: JSON bodies larger than this are not scanned: they are image payloads (predict, infer), never stored.
MAX_SCANNED_BYTES = 1024 * 1024


def _json_field(body: bytes) -> str | None:
    if len(body) > MAX_SCANNED_BYTES or _BAD_ESCAPE.search(body) is None:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None  # the route answers malformed JSON itself
    return find_unstorable(data)


def _form_field(name: str, value: str) -> str | None:
    if has_unstorable(name):
        return "body"
    if has_unstorable(value):
        return name
    if "\\u" in value and value.lstrip().startswith(("{", "[")):  # a form field carrying JSON (a job spec)
        try:
            return find_unstorable(json.loads(value), name)
        except ValueError:
            return None
    return None


async def refuse_unstorable(request: Request) -> None:
    """App-wide dependency: 422 naming the first path, query, JSON or form value the database cannot store.

    A JSON body is read here only when the route reads JSON anyway (Starlette keeps it for the
    route); a multipart body is never touched, so uploads keep streaming.
    """
    for name, value in request.path_params.items():
        if isinstance(value, str) and has_unstorable(value):
            raise validation_error(name, UNSTORABLE)
    for name, value in request.query_params.multi_items():
        field = _form_field(name, value)
        if field is not None:
            raise validation_error("query" if field == "body" else field, UNSTORABLE)
    if request.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
        return
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    field = None
    if content_type == "application/json" or content_type.endswith("+json"):
        field = _json_field(await request.body())
    elif content_type == "application/x-www-form-urlencoded":
        form = await request.form()
        field = next((f for f in (_form_field(k, v) for k, v in form.multi_items() if isinstance(v, str)) if f), None)
    if field is not None:
        raise validation_error(field, UNSTORABLE)
