"""``/v1/datasets``: upload an archive, or register ``digits`` / an allow-listed server folder (over
:mod:`services.ops.datasets`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from services.gateway.deps import DB, Ctx, CurrentTenant, scoped
from services.gateway.errors import PROBLEM_RESPONSES, ApiError, FieldError
from services.gateway.uploads import multipart_body, precheck_quota, receive_file
from services.ops import datasets as ops
from services.ops.context import ServiceContext, TenantRef
from services.ops.schemas import DatasetPage, DatasetPublic, DatasetRef
from services.ops.views import dataset_view

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))

UPLOAD_BODY: dict[str, Any] = multipart_body(
    {
        "file": {"type": "string", "format": "binary",
                 "description": "A .zip / .tar.gz / .tgz / .tar ImageFolder archive (one folder per identity)."},
        "name": {"type": "string", "maxLength": 200},
    },
    ["file"],
    application_json={"schema": DatasetRef.model_json_schema()},
)


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
        return await ops.register(ctx, tenant, ref)
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data (upload) or application/json")


async def _upload(request: Request, ctx: ServiceContext, tenant: TenantRef) -> DatasetPublic:
    await precheck_quota(ctx, tenant.id, request)
    upload = await receive_file(request, ctx.store.upload_dir(tenant.id), ctx.settings.max_upload_bytes)
    return await ops.store_upload(ctx, tenant, upload)


@router.get("", response_model=DatasetPage, summary="List datasets (newest first)")
def list_datasets(
    session: DB,
    tenant: CurrentTenant,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DatasetPage:
    """The tenant's datasets."""
    rows, next_cursor = ops.list_datasets(session, tenant, cursor, limit)
    return DatasetPage(items=[dataset_view(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="Get a dataset")
def read_dataset(session: DB, tenant: CurrentTenant, dataset_id: str) -> DatasetPublic:
    """One dataset and its validation summary."""
    return dataset_view(ops.get_dataset(session, tenant, dataset_id))


@router.delete("/{dataset_id}", status_code=204, response_class=Response, summary="Delete a dataset")
def delete_dataset(ctx: Ctx, session: DB, tenant: CurrentTenant, dataset_id: str) -> Response:
    """Forget a dataset and delete its extracted files (jobs already trained keep their artifacts)."""
    ops.delete_dataset(ctx, session, tenant, dataset_id)
    return Response(status_code=204)
