"""Datasets: an uploaded archive checked and stored, ``digits`` or an allow-listed server folder registered,
and the tenant's datasets listed, read and deleted.

An upload is checked before anything is stored: the tenant's storage quota, the archive's magic bytes,
a safe extraction (no traversal, links or bombs; ``MIDRE_MAX_ARCHIVE_FILES``, ``MIDRE_MAX_EXTRACTED_BYTES``)
and every image decoding once; the summary reports identities, images and rejected files. A refused
upload is a 415 or 422 naming the field, and leaves nothing behind. Server paths in the library's
messages become the names the client knows (its archive's file name, the member paths).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import Dataset
from services.db.types import new_id, utcnow
from services.jobspec import DIGITS
from services.ops.context import ServiceContext, TenantRef
from services.ops.errors import ApiError, FieldError, not_found, validation_error
from services.ops.files import UploadedFile, check_upload_quota, in_check_thread, in_io_thread, in_thread, remove_files
from services.ops.schemas import DatasetPublic, DatasetRef
from services.ops.views import dataset_view
from services.redact import Redactor, server_redactor
from services.storage import LocalStore

#: Rejected files listed in a dataset summary (the count is always complete).
MAX_REJECTED_LISTED = 100
#: Image side used to check that every image decodes (small: validation, not training).
CHECK_IMAGE_SIZE = 8


async def store_upload(ctx: ServiceContext, tenant: TenantRef, upload: UploadedFile) -> DatasetPublic:
    """Check a received archive (quota, magic bytes, safe extraction, every image decodes) and store
    it as the tenant's dataset; the archive file is deleted either way.

    The checks run in one of ``MIDRE_UPLOAD_WORKERS`` threads and the clean-up of a refused upload
    in another thread (shielded, so a client that hangs up still leaves nothing): an archive of
    many thousand members costs the event loop nothing.
    """
    dataset_id = new_id("ds")
    dest = ctx.store.dataset_dir(dataset_id)
    try:
        dataset = await in_check_thread(ctx.settings.upload_workers, _check_archive, ctx, tenant, upload, dest)
        if ctx.store.remote:  # workers on other machines read it from the object store
            await in_io_thread(ctx.store.push_tree, dest, dataset_area(dataset_id))
        return await in_thread(_save, ctx, dataset)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await in_io_thread(shutil.rmtree, dest, True)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await in_io_thread(remove_files, upload.path)


async def register(ctx: ServiceContext, tenant: TenantRef, ref: DatasetRef) -> DatasetPublic:
    """Register ``digits`` or a server folder under one of the operator's ``MIDRE_DATASET_PATHS``, once
    every image of it decodes (422 naming ``source`` otherwise)."""
    if ref.source == DIGITS:
        source_type, source = "builtin", DIGITS
    else:
        source_type, source = "path", str(_allowed_path(ctx, ref.source))
    try:
        splits_summary = await in_thread(_check_loadable, source)
    except ValueError as exc:
        message = server_redactor(ctx.settings, {source: ref.source})(str(exc))
        raise ApiError(422, "invalid_dataset", message, errors=[FieldError(field="source", message=message)]) from exc
    dataset = Dataset(
        id=new_id("ds"),
        tenant_id=tenant.id,
        name=ref.name,
        source_type=source_type,
        source=source,
        size_bytes=None,
        sha256=None,
        summary=_summarize(splits_summary),
        created_at=utcnow(),
    )
    return await in_thread(_save, ctx, dataset)


def list_datasets(session: Session, tenant: TenantRef, cursor: str | None = None,
                  limit: int = 50) -> tuple[list[Dataset], str | None]:
    """A page of the tenant's datasets, newest first; and the next cursor."""
    query = select(Dataset).where(Dataset.tenant_id == tenant.id)
    if cursor:
        query = query.where(Dataset.id < cursor)
    rows = list(session.scalars(query.order_by(Dataset.id.desc()).limit(limit + 1)).all())
    return rows[:limit], rows[limit - 1].id if len(rows) > limit else None


def get_dataset(session: Session, tenant: TenantRef, dataset_id: str) -> Dataset:
    """The tenant's dataset ``dataset_id``; 404 when missing or someone else's."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != tenant.id:
        raise not_found("dataset", dataset_id)
    return dataset


def delete_dataset(ctx: ServiceContext, session: Session, tenant: TenantRef, dataset_id: str) -> None:
    """Forget a dataset and delete its extracted files (jobs already trained keep their artifacts)."""
    dataset = get_dataset(session, tenant, dataset_id)
    if dataset.source_type == "upload":
        ctx.store.delete_tree(dataset_area(dataset.id))
        ctx.store.remove_tree(ctx.store.dataset_dir(dataset.id))
    session.delete(dataset)
    session.commit()


def dataset_area(dataset_id: str) -> str:
    """Where an uploaded dataset's extracted images live in an object store (``datasets/<id>``)."""
    return f"datasets/{dataset_id}"


def dataset_folder(store: LocalStore, dataset: Dataset) -> str:
    """The folder of ``dataset`` on this machine. An upload's images are extracted under the data folder of the
    API that took it; with an object store, a machine that lacks them (or has an older copy) brings them down
    first, into its own data folder. A registered server folder must exist on every worker (the operator
    mounts it)."""
    if dataset.source_type != "upload":
        return dataset.source
    local = store.dataset_dir(dataset.id)
    store.pull_tree(dataset_area(dataset.id), local)
    parts = Path(dataset.source).parts
    for i in range(len(parts) - 1):  # source is <data folder>/datasets/<id>[/the archive's top folder]
        if parts[i:i + 2] == ("datasets", dataset.id):
            return str(local.joinpath(*parts[i + 2:]))
    return dataset.source


def _save(ctx: ServiceContext, dataset: Dataset) -> DatasetPublic:
    """Store a checked dataset (in a worker thread: no database work on the event loop)."""
    with ctx.sessions() as session:
        session.add(dataset)
        session.commit()
        return dataset_view(dataset)


def _check_archive(ctx: ServiceContext, tenant: TenantRef, upload: UploadedFile, dest: Path) -> Dataset:
    """The blocking part of :func:`store_upload` (a worker thread): quota, type, extraction, decoding."""
    check_upload_quota(ctx, tenant.id, upload)
    suffix = sniff_archive(upload.path)
    if suffix is None:
        raise ApiError(
            415,
            "not_an_archive",
            "file: not a .zip, .tar.gz, .tgz or .tar archive",
            errors=[FieldError(field="file", message="not a .zip, .tar.gz, .tgz or .tar archive")],
        )
    archive = upload.path.rename(upload.path.with_name(upload.path.name + suffix))
    upload.path = archive
    # The client knows its archive by its file name and the files in it by their member paths.
    client_name = Path(upload.filename).name or "upload"
    redact = server_redactor(ctx.settings, {archive: client_name, dest: ""})
    try:
        report = _extract_and_check(ctx, archive, dest)
    except ValueError as exc:  # DatasetError included
        raise _dataset_error(exc, redact) from exc
    name = (upload.fields.get("name") or Path(upload.filename).name or dest.name)[:200]
    return Dataset(
        id=dest.name,
        tenant_id=tenant.id,
        name=name,
        source_type="upload",
        source=report["source"],
        size_bytes=upload.size,
        sha256=upload.sha256,
        summary=redact.data(_summarize(report["load"], report)),
        created_at=utcnow(),
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


def _extract_and_check(ctx: ServiceContext, archive: Path, dest: Path) -> dict[str, Any]:
    from midre.data import safe_extract

    report = safe_extract(
        archive,
        dest,
        max_files=ctx.settings.max_archive_files,
        max_total_bytes=ctx.settings.max_extracted_bytes,
    )
    if report.images == 0:
        raise ValueError("file: the archive holds no image files")
    out = report.to_dict()
    out.pop("files", None)
    out["source"] = report.root or str(dest)
    out["load"] = _check_loadable(out["source"])
    return out


def _check_loadable(source: str) -> dict[str, Any]:
    """Decode every image of ``source`` once (tiny size); raises ``DatasetError`` naming a bad file."""
    from midre.data import DatasetSpec, load_dataset

    splits = load_dataset(DatasetSpec(source=source, image_size=CHECK_IMAGE_SIZE, channels=1))
    return dict(splits.summary)


def _summarize(load: dict[str, Any], report: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a client sees: identities, images, rejected files (capped list, full count)."""
    rejected = list((report or {}).get("rejected", [])) + list(load.get("rejected", []))
    summary: dict[str, Any] = {
        "identities": load.get("identities"),
        "images": (load.get("images") or {}).get("total"),
        "rejected_count": len((report or {}).get("rejected", [])) + int(load.get("rejected_count", 0)),
        "rejected": rejected[:MAX_REJECTED_LISTED],
    }
    if report is not None:
        summary["images_per_identity"] = report.get("identities", {})
        summary["archive_entries"] = report.get("entries")
        summary["extracted_bytes"] = report.get("total_bytes")
    return summary


def _dataset_error(exc: Exception, redact: Redactor) -> ApiError:
    """422 for a refused upload; server paths in the library's message become the names a client knows."""
    field = getattr(exc, "field", None) or "file"
    if field in ("source", "dest"):
        field = "file"
    message = redact(str(exc))
    return ApiError(422, "invalid_dataset", message, errors=[FieldError(field=field, message=message)])


def _allowed_path(ctx: ServiceContext, source: str) -> Path:
    path = Path(source)
    if not path.is_absolute():
        raise validation_error("source", "must be 'digits' or an absolute server path")
    resolved = path.resolve()
    for root in ctx.settings.dataset_paths:
        root = root.resolve()
        if resolved == root or root in resolved.parents:
            return resolved
    raise validation_error("source", "path is not under a folder the operator allow-listed (MIDRE_DATASET_PATHS)")


__all__ = ["CHECK_IMAGE_SIZE", "MAX_REJECTED_LISTED", "delete_dataset", "get_dataset", "list_datasets", "register",
           "sniff_archive", "store_upload"]
