"""The Open Inference Protocol (KServe v2 / Triton HTTP/REST) for served models: ``/v2/...``.

KServe and Triton clients call a served model unchanged (the tensors and the output policy are in
:mod:`services.serving.oip`). Model names are ``/v1`` model ids (a succeeded job's id). Health and
server metadata need no key; the model routes need a key with the ``predict`` scope, honour its
model allow-list and charge the same per-key query budget as ``/v1`` predict (one query per image),
sharing its dynamic batcher (both over :mod:`services.ops.serving`). Errors are the API's problem
details with the protocol's ``error`` member added (``{"error": "<detail>", "status": ..., "code": ...,
...}``), so both kinds of client read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.requests import ClientDisconnect

from services.gateway.about import API_VERSION
from services.gateway.deps import Ctx, Runtime, require_scope
from services.gateway.errors import PROBLEM_JSON, PROBLEM_RESPONSES, ApiError, FieldError, problem_response
from services.ops.context import Caller
from services.ops.serving import charge_queries, forward_within_budget, use_model
from services.serving.accounting import Charge
from services.serving.cache import LoadedModel
from services.serving.oip import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    body_limit,
    decode_content,
    encode_outputs,
    model_metadata,
    parse_request,
    split_body,
)
from services.serving.preprocess import InputError, preprocess


class OipRoute(APIRoute):
    """Answers an :class:`ApiError` (the key check included) as problem details plus ``error``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                problem = problem_response(request, exc.status, exc.code, exc.detail, exc.errors, exc.headers)
                body = json.loads(bytes(problem.body))
                body["error"] = exc.detail or exc.code
                return JSONResponse(body, status_code=exc.status, media_type=PROBLEM_JSON, headers=exc.headers)

        return handle


router = APIRouter(prefix="/v2", tags=["inference (v2)"], route_class=OipRoute, responses=PROBLEM_RESPONSES)
PredictCaller = Annotated[Caller, Depends(require_scope("predict"))]
_PROBLEM = {"content": {PROBLEM_JSON: {}}}


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """The protocol's model metadata; ``parameters`` hold the card's preprocessing and the policy."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class Tensor(BaseModel):
    name: str
    datatype: str = Field(description="`FP32`, `BYTES` or `INT64`.")
    shape: list[int]
    data: list[Any] = Field(description="Row-major, flat.")
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[Tensor]
    parameters: dict[str, Any] = Field(description="`policy`, and the key's `queries`, `budget`, `remaining`.")


_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "inputs": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "shape", "datatype"],
                            "properties": {
                                "name": {"type": "string", "enum": ["input"]},
                                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
                                "data": {"type": "array", "description": "FP32 numbers (flat or nested) or "
                                         "base64-encoded images (BYTES)"},
                                "parameters": {"type": "object"},
                            },
                        },
                    },
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                        },
                    },
                    "parameters": {"type": "object"},
                },
            }
        },
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary", "description": "Binary tensor data extension: the "
                       "JSON header (its length in `Inference-Header-Content-Length`), then the tensor bytes."}
        },
    },
}


@router.get("/health/live", summary="Liveness (Open Inference Protocol)")
async def live() -> dict[str, bool]:
    """The process is up; no key needed."""
    return {"live": True}


@router.get("/health/ready", summary="Readiness (Open Inference Protocol)",
            responses={503: {"description": "The database is unreachable"}})
async def ready(ctx: Ctx) -> JSONResponse:
    """Ready to serve when the database (keys, models, budgets) answers; no key needed."""

    def check() -> None:
        with ctx.sessions() as session:
            session.execute(text("SELECT 1"))

    try:
        await run_in_threadpool(check)
    except Exception:  # noqa: BLE001 - not ready, whatever the cause
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True})


@router.get("", summary="Server metadata (Open Inference Protocol)")
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and protocol extensions; no key needed."""
    return {"name": "midre", "version": API_VERSION, "extensions": ["classification", "binary_tensor_data"]}


@router.get("/models/{model_id}", response_model=ModelMetadata, summary="Model metadata (Open Inference Protocol)",
            responses={409: {**_PROBLEM, "description": "The job has not succeeded"}})
async def metadata(ctx: Ctx, rt: Runtime, caller: PredictCaller, model_id: str) -> dict[str, Any]:
    """The model's input (``FP32`` ``[-1, C, S, S]``; ``BYTES`` encoded images are accepted too) and
    its output under the output policy."""
    ref = await use_model(ctx, rt, caller, model_id)
    return model_metadata(ref.job_id, ref.card, ref.policy, ref.budget, rt.settings.default_top_k)


@router.get("/models/{model_id}/ready", summary="Model readiness (Open Inference Protocol)",
            responses={409: {**_PROBLEM, "description": "The job has not succeeded"}})
async def model_ready(ctx: Ctx, rt: Runtime, caller: PredictCaller, model_id: str) -> dict[str, Any]:
    """200 when the model can be served (it is loaded on the first infer)."""
    ref = await use_model(ctx, rt, caller, model_id)
    return {"name": ref.job_id, "ready": True}


def _protocol_error(exc: ProtocolError | InputError) -> ApiError:
    code = {413: "too_large", 415: "unsupported_media_type", 422: "validation_error"}.get(exc.status, "invalid_request")
    if isinstance(exc, InputError):
        code = "invalid_image" if exc.status == 422 else "image_too_large"
    return ApiError(exc.status, code, f"{exc.field}: {exc.message}",
                    errors=[FieldError(field=exc.field, message=exc.message)])


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes: a declared
    ``Content-Length`` before a byte is read, else while streaming."""
    too_large = ApiError(413, "too_large", f"the infer body exceeds this model's {limit}-byte limit; send fewer "
                         "images per request", errors=[FieldError(field="body", message=f"at most {limit} bytes")])
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ApiError(400, "client_disconnected", "the request was interrupted") from exc
    return b"".join(chunks)


@router.post(
    "/models/{model_id}/infer",
    summary="Infer (Open Inference Protocol)",
    openapi_extra={"requestBody": _INFER_BODY},
    responses={
        200: {"model": InferResponse, "description": "The outputs the model's output policy allows"},
        409: {**_PROBLEM, "description": "The job has not succeeded"},
        413: {**_PROBLEM, "description": "The body or an image is too large"},
        429: {**_PROBLEM, "description": "The API key spent this model's query budget"},
    },
)
async def infer(request: Request, ctx: Ctx, rt: Runtime, caller: PredictCaller, model_id: str) -> JSONResponse:
    """``FP32`` ``[N, C, S, S]`` preprocessed and normalised as the card says (see the model's
    metadata), or ``BYTES`` ``[N]`` encoded images (base64 in JSON, raw with the binary extension)
    preprocessed as ``/v1`` predict does. Each image is one query of the calling key (429 past
    the model's budget); the outputs are what the output policy allows."""
    ref = await use_model(ctx, rt, caller, model_id)
    settings = rt.settings
    limit = body_limit(ref.card, settings.max_images, settings.max_image_bytes, settings.max_request_bytes)
    body = await read_body(request, limit)
    header_length = request.headers.get(HEADER_LENGTH)
    encoding = request.headers.get("content-encoding")
    key_id = caller.key_id

    def prepare() -> tuple[InferRequest, torch.Tensor, Charge, LoadedModel]:
        head, binary = split_body(decode_content(body, encoding, limit), header_length)
        parsed = parse_request(head, binary, ref.card, ref.policy, max_images=settings.max_images,
                               max_image_bytes=settings.max_image_bytes)
        tensor = parsed.input.tensor
        x = tensor if tensor is not None else preprocess(list(parsed.input.images), ref.card)
        spent = charge_queries(ctx, rt, key_id, ref, parsed.input.count)  # after the checks: a bad input is free
        entry = rt.cached(ref.weights_sha) or rt.model(ref.card_sha, ref.weights_sha)
        return parsed, x, spent, entry

    try:
        parsed, x, spent, entry = await run_in_threadpool(prepare)
    except (ProtocolError, InputError) as exc:
        raise _protocol_error(exc) from exc
    probs = await forward_within_budget(rt, ref, key_id, spent, entry, x)
    outputs = encode_outputs(probs, list(ref.card.get("class_names") or []), ref.policy, parsed.outputs,
                             default_k=settings.default_top_k)
    answer: dict[str, Any] = {"model_name": ref.job_id, "model_version": "1"}
    if parsed.id is not None:
        answer["id"] = parsed.id
    answer["outputs"] = outputs
    usage = {"policy": ref.policy.name, "queries": spent.queries}
    if spent.budget is not None:
        usage |= {"budget": spent.budget, "remaining": spent.remaining}
    answer["parameters"] = usage
    return JSONResponse(answer)
