"""Streaming ``multipart/form-data`` upload with a hard size cap.

FastAPI's ``UploadFile`` would spool the whole body before the handler runs; here the body is read
chunk by chunk, the file part is written to a scratch file while it is hashed, and reading stops
(413, file deleted) as soon as the cap is passed. A ``Content-Length`` above the cap is refused
before a byte is read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from services.gateway.errors import ApiError, FieldError

#: Room for the multipart framing and small text fields on top of the file cap.
FRAMING_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
FLUSH_BYTES = 1024 * 1024


@dataclass
class UploadedFile:
    """A received file part."""

    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


def _refuse(status: int, code: str, field: str, message: str) -> ApiError:
    return ApiError(status, code, f"{field}: {message}", errors=[FieldError(field=field, message=message)])


class _Collector:
    """Multipart parser callbacks: the ``file`` part goes to disk, small text fields to memory."""

    def __init__(self, out: tempfile._TemporaryFileWrapper[bytes], max_bytes: int,
                 max_field_bytes: int = MAX_FIELD_BYTES) -> None:
        self.out = out
        self.max_bytes = max_bytes
        self.max_field_bytes = max_field_bytes
        self.digest = hashlib.sha256()
        self.size = 0
        self.buffer = bytearray()
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[str, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def on_part_begin(self) -> None:
        self._headers, self._name, self._is_file, self._value = {}, None, False, bytearray()

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._is_file = self._name == "file"
        if self._is_file:
            if self.filename is not None:
                raise _refuse(422, "validation_error", "file", "send exactly one file part")
            self.filename = (filename or b"upload").decode("utf-8", "replace")

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


async def receive_file(
    request: Request, scratch_dir: Path, max_bytes: int, max_field_bytes: int = MAX_FIELD_BYTES
) -> UploadedFile:
    """Stream the ``file`` part of a multipart request into ``scratch_dir``.

    Args:
        request: the incoming request (``Content-Type: multipart/form-data; boundary=...``).
        scratch_dir: folder for the received file (on the same filesystem as its final place).
        max_bytes: the largest file accepted.
        max_field_bytes: the largest text field accepted (e.g. a JSON model card).

    Returns:
        The received file; the caller deletes ``path`` when done with it.

    Raises:
        ApiError: 413 past the cap, 422 for a malformed body or a missing ``file`` part. No file
            is left behind in either case.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + max_field_bytes + FRAMING_BYTES:
        raise _refuse(413, "too_large", "file", f"upload exceeds the {max_bytes}-byte limit")
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise _refuse(422, "validation_error", "body", "multipart boundary missing")
    scratch_dir.mkdir(parents=True, exist_ok=True)
    out = tempfile.NamedTemporaryFile(dir=scratch_dir, prefix="upload-", delete=False)  # noqa: SIM115
    collector = _Collector(out, max_bytes, max_field_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + max_field_bytes + FRAMING_BYTES:
                raise _refuse(413, "too_large", "file", f"upload exceeds the {max_bytes}-byte limit")
            try:
                parser.write(chunk)
            except ApiError:
                raise
            except Exception as exc:
                raise _refuse(422, "validation_error", "body", f"malformed multipart data ({exc})") from exc
            if len(collector.buffer) >= FLUSH_BYTES:
                data, collector.buffer = bytes(collector.buffer), bytearray()
                await anyio.to_thread.run_sync(out.write, data)
        parser.finalize()
        if collector.filename is None:
            raise _refuse(422, "validation_error", "file", "a multipart part named 'file' is required")
        await anyio.to_thread.run_sync(out.write, bytes(collector.buffer))
        out.close()
    except ClientDisconnect as exc:
        out.close()
        os.unlink(out.name)
        raise ApiError(400, "client_disconnected", "the upload was interrupted") from exc
    except BaseException:  # 413, 422, cancellation: nothing may stay on disk
        out.close()
        os.unlink(out.name)
        raise
    return UploadedFile(
        path=Path(out.name),
        filename=collector.filename,
        size=collector.size,
        sha256=collector.digest.hexdigest(),
        fields=collector.fields,
    )


def sniff_archive(path: Path) -> str | None:
    """The archive suffix a file's magic bytes say it is (``.zip``, ``.tar.gz``, ``.tar``) or None."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return ".zip"
    if head.startswith(b"\x1f\x8b"):
        return ".tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return ".tar"
    return None


def multipart_body(properties: dict[str, dict[str, Any]], required: list[str],
                   **other: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a streamed ``multipart/form-data`` body (FastAPI cannot see it,
    since the route reads the stream itself); ``other`` adds more media types (``application_json=``)."""
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "required": required, "properties": properties}}
    }
    content.update({media.replace("_", "/", 1): schema for media, schema in other.items()})
    return {"requestBody": {"required": True, "content": content}}
