"""Streaming ``multipart/form-data`` upload with hard caps.

FastAPI's ``UploadFile`` would spool the whole body before the handler runs; here the body is read
chunk by chunk, the file part is written to a scratch file while it is hashed, and reading stops
(413, file deleted) as soon as a cap is passed: the file's size, each text field's size, the number
of parts and each part's headers. A ``Content-Length`` above the cap is refused before a byte
is read (the body-size middleware, :mod:`services.gateway.limits`, does it first), and so is one
that cannot fit the tenant's storage quota (:func:`precheck_quota`).

The event loop only gathers the received bytes; parsing, hashing and writing run in worker threads
in batches (:func:`services.ops.files.in_io_thread`). What a received file becomes (a dataset, a
model) is the application layer's (:mod:`services.ops.datasets`, :mod:`services.ops.models`).

The scratch file is named after its tenant and its API process (:func:`services.storage.orphans.scratch_prefix`),
so the tenant's storage counts uploads still in flight and the reaper deletes one whose process died.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from services.ops.context import ServiceContext
from services.ops.errors import ApiError, FieldError
from services.ops.files import UploadedFile, check_incoming, in_io_thread
from services.storage.orphans import scratch_prefix

#: Room for the multipart framing and small text fields on top of the file cap.
FRAMING_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
#: The largest model card (JSON text) a model upload may carry.
MAX_CARD_BYTES = 1024 * 1024
#: Received bytes handed to the parser (in a worker thread) at a time.
FLUSH_BYTES = 1024 * 1024
#: Most parts in one upload form (the routes use three: ``file``, ``name``, ``card`` or ``csrf``).
MAX_PARTS = 16
#: Most headers of one part, and most bytes of one header line (names, content type, file name).
MAX_PART_HEADERS = 8
MAX_PART_HEADER_BYTES = 4096


def _refuse(status: int, code: str, field: str, message: str) -> ApiError:
    return ApiError(status, code, f"{field}: {message}", errors=[FieldError(field=field, message=message)])


class _Collector:
    """Multipart parser callbacks: the ``file`` part goes to disk, small text fields to memory.

    Runs in a worker thread (see :func:`receive_file`); ``on_file`` is called with the text fields
    seen so far when the file part starts, so a form's token can be checked before its file is read.
    """

    def __init__(self, out: tempfile._TemporaryFileWrapper[bytes], max_bytes: int,
                 max_field_bytes: int = MAX_FIELD_BYTES,
                 on_file: Callable[[dict[str, str]], None] | None = None) -> None:
        self.out = out
        self.max_bytes = max_bytes
        self.max_field_bytes = max_field_bytes
        self.on_file = on_file
        self.digest = hashlib.sha256()
        self.size = 0
        self.buffer = bytearray()
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _refuse(413, "too_large", "body", f"the form has more than {MAX_PARTS} parts")
        self._headers, self._name, self._is_file, self._value = {}, None, False, bytearray()

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._is_file = self._name == "file"
        if self._is_file:
            if self.filename is not None:
                raise _refuse(422, "validation_error", "file", "send exactly one file part")
            self.filename = (filename or b"upload").decode("utf-8", "replace")
            if self.on_file is not None:
                self.on_file(dict(self.fields))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise _refuse(413, "too_large", "file", f"upload exceeds the {self.max_bytes}-byte limit")
            self.digest.update(chunk)
            self.buffer += chunk
        else:
            self._value += chunk
            if len(self._value) > self.max_field_bytes:
                raise _refuse(413, "too_large", self._name or "field", "form field too long")

    def on_part_end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def feed(self, parser: MultipartParser, data: bytes) -> None:
        """Parse ``data`` and write what the file part got (in a worker thread)."""
        try:
            parser.write(data)
        except ApiError:
            raise
        except MultipartParseError as exc:
            if str(exc).startswith("Maximum header"):  # the parser's own caps, set from ours
                raise _refuse(413, "too_large", "body", f"a form part has more than {MAX_PART_HEADERS} headers or "
                                                        f"a header line over {MAX_PART_HEADER_BYTES} bytes") from exc
            raise _refuse(422, "validation_error", "body", f"malformed multipart data ({exc})") from exc
        except Exception as exc:
            raise _refuse(422, "validation_error", "body", f"malformed multipart data ({exc})") from exc
        if self.buffer:
            self.out.write(self.buffer)
            self.buffer = bytearray()

    def finish(self, parser: MultipartParser) -> None:
        """End of the body: the form must have had its file part; every field must be storable."""
        try:
            parser.finalize()
        except Exception as exc:
            raise _refuse(422, "validation_error", "body", f"malformed multipart data ({exc})") from exc
        if self.filename is None:
            raise _refuse(422, "validation_error", "file", "a multipart part named 'file' is required")
        for name, value in self.fields.items():
            if "\x00" in value:
                raise _refuse(422, "validation_error", name, "must not contain a NUL character")
        self.out.write(self.buffer)
        self.out.close()


def _discard(out: tempfile._TemporaryFileWrapper[bytes]) -> None:
    out.close()
    os.unlink(out.name)


async def receive_file(
    request: Request, scratch_dir: Path, max_bytes: int, max_field_bytes: int = MAX_FIELD_BYTES,
    on_file: Callable[[dict[str, str]], None] | None = None,
) -> UploadedFile:
    """Stream the ``file`` part of a multipart request into ``scratch_dir``.

    Args:
        request: the incoming request (``Content-Type: multipart/form-data; boundary=...``).
        scratch_dir: folder for the received file (on the same filesystem as its final place).
        max_bytes: the largest file accepted.
        max_field_bytes: the largest text field accepted (e.g. a JSON model card).
        on_file: called (in a worker thread) with the text fields sent before the file part, when it
            starts; an :class:`ApiError` it raises refuses the upload before the file is read.

    Returns:
        The received file; the caller deletes ``path`` when done with it.

    Raises:
        ApiError: 413 past a cap, 422 for a malformed body or a missing ``file`` part, or what
            ``on_file`` raised. No file is left behind in any case.
    """
    limit = max_bytes + max_field_bytes + FRAMING_BYTES
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _refuse(413, "too_large", "file", f"upload exceeds the {max_bytes}-byte limit")
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise _refuse(422, "validation_error", "body", "multipart boundary missing")
    out = await in_io_thread(_scratch_file, scratch_dir)
    collector = _Collector(out, max_bytes, max_field_bytes, on_file)
    parser = MultipartParser(boundary, collector.callbacks(), max_header_count=MAX_PART_HEADERS,  # type: ignore[arg-type]
                             max_header_size=MAX_PART_HEADER_BYTES)
    received, pending = 0, bytearray()
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _refuse(413, "too_large", "file", f"upload exceeds the {max_bytes}-byte limit")
            pending += chunk
            if len(pending) >= FLUSH_BYTES:
                data, pending = bytes(pending), bytearray()
                await in_io_thread(collector.feed, parser, data)
        await in_io_thread(collector.feed, parser, bytes(pending))
        await in_io_thread(collector.finish, parser)
    except ClientDisconnect as exc:
        await in_io_thread(_discard, out)
        raise ApiError(400, "client_disconnected", "the upload was interrupted") from exc
    except BaseException:  # 413, 422, cancellation: nothing may stay on disk
        _discard(out)
        raise
    return UploadedFile(
        path=Path(out.name),
        filename=collector.filename or "upload",
        size=collector.size,
        sha256=collector.digest.hexdigest(),
        fields=collector.fields,
    )


def _scratch_file(scratch_dir: Path) -> tempfile._TemporaryFileWrapper[bytes]:
    scratch_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile(dir=scratch_dir, prefix=scratch_prefix(), delete=False)  # noqa: SIM115


async def precheck_quota(ctx: ServiceContext, tenant_id: str, request: Request) -> None:
    """Refuse an upload whose declared ``Content-Length`` cannot fit the tenant's storage quota,
    before a byte of it is read (a body without a length is checked once received)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        await check_incoming(ctx, tenant_id, int(declared))


def multipart_body(properties: dict[str, dict[str, Any]], required: list[str],
                   **other: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a streamed ``multipart/form-data`` body (FastAPI cannot see it,
    since the route reads the stream itself); ``other`` adds more media types (``application_json=``)."""
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "required": required, "properties": properties}}
    }
    content.update({media.replace("_", "/", 1): schema for media, schema in other.items()})
    return {"requestBody": {"required": True, "content": content}}
