"""Received files and the threads their work runs in.

An upload reaches the application layer as an :class:`UploadedFile` (a scratch file the transport
received: the gateway's streaming multipart parser, :mod:`services.gateway.uploads`). Nothing of its
handling runs on the event loop: short file-system work runs in :func:`in_io_thread`, at most
:data:`IO_THREADS` at once; the checks of a received upload (extraction, image decoding, a model's
forward pass) in :func:`in_check_thread`, at most ``MIDRE_UPLOAD_WORKERS`` at once per process;
database work in :func:`in_thread` (the default pool).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from services.ops.context import ServiceContext
from services.ops.quotas import check_storage

T = TypeVar("T")

#: Threads that parse and write received upload bytes at once, per event loop.
IO_THREADS = 8

_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, anyio.CapacityLimiter]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class UploadedFile:
    """A received file part."""

    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


def _limiter(kind: str, tokens: int) -> anyio.CapacityLimiter:
    """The running loop's limiter ``kind`` (asyncio primitives belong to one loop; tests run several)."""
    per_loop = _LIMITERS.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get(kind)
    if limiter is None:
        limiter = per_loop[kind] = anyio.CapacityLimiter(tokens)
    return limiter


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run blocking work (database, a model's card) in the default thread pool."""
    return await anyio.to_thread.run_sync(func, *args)


async def in_io_thread(func: Callable[..., T], *args: Any) -> T:
    """Run short file-system work (write, unlink, parse a batch) in a worker thread, :data:`IO_THREADS` at once."""
    return await anyio.to_thread.run_sync(func, *args, limiter=_limiter("io", IO_THREADS))


async def in_check_thread(workers: int, func: Callable[..., T], *args: Any) -> T:
    """Run the check of a received upload in a worker thread, at most ``workers`` at once per process."""
    return await anyio.to_thread.run_sync(func, *args, limiter=_limiter("checks", workers))


def remove_files(*paths: Path) -> None:
    """Delete scratch files (in a worker thread: :func:`in_io_thread`)."""
    for path in paths:
        path.unlink(missing_ok=True)


def check_upload_quota(ctx: ServiceContext, tenant_id: str, upload: UploadedFile) -> None:
    """The tenant's storage quota (blocking: a worker thread): what it stores, plus its other uploads
    in flight on any API process sharing the store, plus this upload."""
    pending = ctx.store.pending_upload_bytes(tenant_id, exclude=upload.path)
    check_storage(ctx.sessions, ctx.settings, tenant_id, upload.size + pending)


async def check_incoming(ctx: ServiceContext, tenant_id: str, incoming: int) -> None:
    """Refuse ``incoming`` bytes (an upload's declared length) that cannot fit the tenant's storage quota
    with what it stores and its uploads in flight, before a byte of them is read."""
    pending = await in_io_thread(ctx.store.pending_upload_bytes, tenant_id)
    await in_thread(check_storage, ctx.sessions, ctx.settings, tenant_id, incoming + pending)


__all__ = ["IO_THREADS", "UploadedFile", "check_incoming", "check_upload_quota", "in_check_thread", "in_io_thread",
           "in_thread", "remove_files"]
