"""``/v1/datasets``: upload an archive, or register ``digits`` / an allow-listed server folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import select

from services.db.models import Dataset
from services.db.types import new_id, utcnow
from services.gateway.deps import DB, Ctx, CurrentTenant, ServiceContext, TenantRef, scoped
from services.gateway.errors import (
    PROBLEM_RESPONSES,
    ApiError,
    FieldError,
    not_found,
    validation_error,
)
from services.gateway.schemas import DatasetPage, DatasetPublic, DatasetRef
from services.gateway.uploads import (
    UploadedFile,
    check_upload_quota,
    in_check_thread,
    in_io_thread,
    multipart_body,
    precheck_quota,
    receive_file,
    remove_files,
    sniff_archive,
)
from services.gateway.views import dataset_view
from services.jobspec import DIGITS
from services.redact import Redactor, server_redactor

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))

#: Rejected files listed in a dataset summary (the count is always complete).
MAX_REJECTED_LISTED = 100
#: Image side used to check that every image decodes (small: validation, not training).
CHECK_IMAGE_SIZE = 8

UPLOAD_BODY: dict[str, Any] = multipart_body(
    {
        "file": {"type": "string", "format": "binary",
                 "description": "A .zip / .tar.gz / .tgz / .tar ImageFolder archive (one folder per identity)."},
        "name": {"type": "string", "maxLength": 200},
    },
    ["file"],
    application_json={"schema": DatasetRef.model_json_schema()},
)


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


def _check_loadable(source: str) -> dict[str, Any]:
    """Decode every image of ``source`` once (tiny size); raises ``DatasetError`` naming a bad file."""
    from midre.data import DatasetSpec, load_dataset

    splits = load_dataset(DatasetSpec(source=source, image_size=CHECK_IMAGE_SIZE, channels=1))
    return dict(splits.summary)


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


def _dataset_error(exc: Exception, redact: Redactor) -> ApiError:
    """422 for a refused upload; server paths in the library's message become the names a client knows."""
    field = getattr(exc, "field", None) or "file"
    if field in ("source", "dest"):
        field = "file"
    message = redact(str(exc))
    return ApiError(422, "invalid_dataset", message, errors=[FieldError(field=field, message=message)])


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    summary="Upload or register a dataset",
    openapi_extra=UPLOAD_BODY,
    responses={
        413: PROBLEM_RESPONSES[422] | {"description": "Upload larger than MIDRE_MAX_UPLOAD_BYTES"},
        415: PROBLEM_RESPONSES[422] | {"description": "Not a .zip / .tar.gz / .tar archive"},
    },
)
async def create_dataset(request: Request, ctx: Ctx, tenant: CurrentTenant) -> DatasetPublic:
    """``multipart/form-data`` with a ``file`` part: an ImageFolder archive, streamed to storage with
    a size cap, extracted safely (no traversal, links or bombs) and checked image by image; the
    answer reports identities, images and rejected files. Nothing is stored when it is refused.

    ``application/json`` ``{"name", "source"}``: register ``digits`` or a server folder under one
    of the operator's ``MIDRE_DATASET_PATHS``.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _upload(request, ctx, tenant)
    if content_type.startswith("application/json"):
        try:
            ref = DatasetRef.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = [
                FieldError(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"])
                for e in exc.errors()
            ]
            raise ApiError(422, "validation_error", "invalid dataset reference", errors=errors) from exc
        return await _register(ref, ctx, tenant)
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data (upload) or application/json")


def _save(ctx: ServiceContext, dataset: Dataset) -> DatasetPublic:
    """Store a checked dataset (in a worker thread: no database work on the event loop)."""
    with ctx.sessions() as session:
        session.add(dataset)
        session.commit()
        return dataset_view(dataset)


async def _upload(request: Request, ctx: ServiceContext, tenant: TenantRef) -> DatasetPublic:
    await precheck_quota(ctx, tenant.id, request)
    upload = await receive_file(request, ctx.store.upload_dir(tenant.id), ctx.settings.max_upload_bytes)
    return await store_upload(ctx, tenant, upload)


async def store_upload(ctx: ServiceContext, tenant: TenantRef, upload: UploadedFile) -> DatasetPublic:
    """Check a received archive (quota, magic bytes, safe extraction, every image decodes) and store
    it as the tenant's dataset; the archive file is deleted either way. Shared by the API and the dashboard.

    The checks run in one of ``MIDRE_UPLOAD_WORKERS`` threads and the clean-up of a refused upload
    in another thread (shielded, so a client that hangs up still leaves nothing): an archive of
    many thousand members costs the event loop nothing.
    """
    dataset_id = new_id("ds")
    dest = ctx.store.dataset_dir(dataset_id)
    try:
        dataset = await in_check_thread(ctx.settings.upload_workers, _check_archive, ctx, tenant, upload, dest)
        return await run_in_threadpool(_save, ctx, dataset)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await in_io_thread(shutil.rmtree, dest, True)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await in_io_thread(remove_files, upload.path)


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


async def _register(ref: DatasetRef, ctx: ServiceContext, tenant: TenantRef) -> DatasetPublic:
    if ref.source == DIGITS:
        source_type, source = "builtin", DIGITS
    else:
        source_type, source = "path", str(_allowed_path(ctx, ref.source))
    try:
        splits_summary = await run_in_threadpool(_check_loadable, source)
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
    return await run_in_threadpool(_save, ctx, dataset)


@router.get("", response_model=DatasetPage, summary="List datasets (newest first)")
def list_datasets(
    session: DB,
    tenant: CurrentTenant,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DatasetPage:
    """The tenant's datasets."""
    query = select(Dataset).where(Dataset.tenant_id == tenant.id)
    if cursor:
        query = query.where(Dataset.id < cursor)
    rows = session.scalars(query.order_by(Dataset.id.desc()).limit(limit + 1)).all()
    return DatasetPage(
        items=[dataset_view(d) for d in rows[:limit]],
        next_cursor=rows[limit - 1].id if len(rows) > limit else None,
    )


def _get_dataset(session: DB, tenant: TenantRef, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != tenant.id:
        raise not_found("dataset", dataset_id)
    return dataset


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="Get a dataset")
def read_dataset(session: DB, tenant: CurrentTenant, dataset_id: str) -> DatasetPublic:
    """One dataset and its validation summary."""
    return dataset_view(_get_dataset(session, tenant, dataset_id))


@router.delete("/{dataset_id}", status_code=204, response_class=Response, summary="Delete a dataset")
def delete_dataset(ctx: Ctx, session: DB, tenant: CurrentTenant, dataset_id: str) -> Response:
    """Forget a dataset and delete its extracted files (jobs already trained keep their artifacts)."""
    dataset = _get_dataset(session, tenant, dataset_id)
    if dataset.source_type == "upload":
        ctx.store.remove_tree(ctx.store.dataset_dir(dataset.id))
    session.delete(dataset)
    session.commit()
    return Response(status_code=204)
