"""Serving: ``GET /v1/models``, ``POST /v1/models/{job_id}/predict``, the output policy and budget
(``GET|PUT|PATCH /v1/models/{job_id}/policy``) and ``GET /v1/models/{job_id}/export``, over
:mod:`services.ops.serving`.

A ``predict`` key (what a model owner hands to consumers) may list the models it may use and
predict with them; the policy, the export and the checkpoint need a ``jobs`` (or ``admin``) key,
so the output policy and budget bind the very clients they are meant to limit.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from services.gateway.deps import DB, Ctx, Runtime, require_scope
from services.gateway.errors import NO_MODEL_YET, PROBLEM_RESPONSES, Problem
from services.gateway.images import read_images
from services.ops import serving as ops
from services.ops.context import Caller
from services.serving.export import FORMATS
from services.serving.schemas import ModelPage, PolicyPatch, PolicyUpdate, PolicyView, PredictResponse

router = APIRouter(prefix="/v1/models", tags=["serving"], responses=PROBLEM_RESPONSES)

_PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}

PredictCaller = Annotated[Caller, Depends(require_scope("predict"))]
OwnerTenant = Annotated[Caller, Depends(require_scope("jobs"))]

_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "top_k": {"type": "integer", "minimum": 1},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "oneOf": [
                                {"type": "string", "description": "base64 image bytes"},
                                {
                                    "type": "object",
                                    "required": ["data"],
                                    "properties": {"data": {"type": "string"}, "name": {"type": "string"}},
                                },
                            ]
                        },
                    },
                    "top_k": {"type": "integer", "minimum": 1},
                },
            }
        },
    },
}


@router.post(
    "/{job_id}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Predict identities of one or many images",
    openapi_extra={"requestBody": _PREDICT_BODY},
    responses={
        409: {**_PROBLEM, "description": "The job has not succeeded"},
        413: {**_PROBLEM, "description": "An image is too large"},
        415: {**_PROBLEM, "description": "Neither multipart nor JSON"},
        429: {**_PROBLEM, "description": "The API key spent this model's query budget"},
    },
)
async def predict(
    request: Request,
    ctx: Ctx,
    rt: Runtime,
    caller: PredictCaller,
    job_id: str,
    top_k: Annotated[
        int | None, Query(ge=1, le=100_000, description="Identities to list (the policy may cap it).")
    ] = None,
) -> dict[str, Any]:
    """Preprocess exactly as in training (the checkpoint's card), run the model (batched with
    concurrent requests), and answer under the model's output policy. Each image is one query of
    the calling API key; past the model's budget the answer is 429."""
    images, body_k = await read_images(request, rt)
    return await ops.predict_images(ctx, rt, caller, job_id, images, top_k or body_k)


@router.get("", response_model=ModelPage, summary="List the tenant's servable models")
def list_models(
    rt: Runtime,
    session: DB,
    caller: PredictCaller,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ModelPage:
    """Succeeded jobs that produced a checkpoint, newest first, with their card and output policy
    (for a key limited to some models, only those)."""
    return ops.list_models(session, rt, caller, cursor, limit)


@router.get(
    "/{job_id}/policy", response_model=PolicyView,
    summary="Output policy, budget and query accounting",
    responses=NO_MODEL_YET,
)
def get_policy(rt: Runtime, session: DB, caller: OwnerTenant, job_id: str) -> PolicyView:
    """The model's output policy and budget, and the queries each API key made."""
    return ops.get_policy(session, rt, caller.tenant, job_id)


@router.put(
    "/{job_id}/policy", response_model=PolicyView,
    summary="Replace the output policy and query budget",
    responses=NO_MODEL_YET,
)
def put_policy(rt: Runtime, session: DB, caller: OwnerTenant, job_id: str, body: PolicyUpdate) -> PolicyView:
    """Replace the whole policy: fields left out take their defaults (`full`, no top_k, no rounding,
    **no budget**). To change one field and keep the others, use `PATCH`. Applies on this replica at
    once, on others within a few seconds; ``reset_usage`` zeroes every key's count."""
    return ops.put_policy(session, rt, caller.tenant, job_id, body)


@router.patch(
    "/{job_id}/policy", response_model=PolicyView,
    summary="Change some fields of the output policy",
    responses=NO_MODEL_YET,
)
def patch_policy(rt: Runtime, session: DB, caller: OwnerTenant, job_id: str, body: PolicyPatch) -> PolicyView:
    """Change only the fields given; the others (the budget included) keep their values. Switching
    to a policy that does not take ``top_k`` / ``decimals`` drops them unless they are given."""
    return ops.patch_policy(session, rt, caller.tenant, job_id, body)


@router.get(
    "/{job_id}/export",
    summary="Export the model as TorchScript or ONNX",
    response_class=FileResponse,
    responses={
        **NO_MODEL_YET,
        200: {"content": {"application/octet-stream": {}}, "description": "The exported model file"},
    },
)
def export(
    rt: Runtime,
    session: DB,
    caller: OwnerTenant,
    job_id: str,
    format: Annotated[str, Query(description="`torchscript` or `onnx`.")] = "onnx",
) -> FileResponse:
    """A file computing the served probabilities: input ``images`` float32 ``[N, C, S, S]`` = decoded
    pixels / 255 (normalisation inside), output ``probabilities`` ``[N, classes]``."""
    ref, path = ops.export_model(session, rt, caller.tenant, job_id, format)
    c, s = ref.card["channels"], ref.card["image_size"]
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{ref.job_id}{FORMATS[format]}",
        headers={"X-Input-Shape": f"N,{c},{s},{s}", "X-Input-Scale": "pixels/255"},
    )
