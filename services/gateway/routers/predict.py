"""Serving: ``GET /v1/models``, ``POST /v1/models/{job_id}/predict``, the output policy and budget
(``GET|PUT|PATCH /v1/models/{job_id}/policy``) and ``GET /v1/models/{job_id}/export``.

A ``predict`` key (what a model owner hands to consumers) may list the models it may use and
predict with them; the policy, the export and the checkpoint need a ``jobs`` (or ``admin``) key,
so the output policy and budget bind the very clients they are meant to limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.models import Artifact, Job, ModelPolicy, ModelUsage
from services.db.types import utcnow
from services.gateway.deps import (
    DB,
    Caller,
    Ctx,
    ServiceContext,
    TenantRef,
    forbidden,
    require_scope,
)
from services.gateway.errors import NO_MODEL_YET, PROBLEM_RESPONSES, ApiError, FieldError, Problem, validation_error
from services.gateway.views import final_metrics
from services.ops.jobs import get_job
from services.ops.models import checkpoint_artifacts
from services.serving.accounting import Charge, charge, reset
from services.serving.cache import LoadedModel
from services.serving.export import FORMATS
from services.serving.policy import OutputPolicy, apply_policy
from services.serving.preprocess import InputError, RawImage, decode_base64, preprocess
from services.serving.runtime import ServingRuntime
from services.serving.schemas import (
    KeyUsage,
    ModelPage,
    PolicyApplied,
    PolicyPatch,
    PolicyUpdate,
    PolicyView,
    PredictJSON,
    PredictResponse,
    ServableModel,
)
from services.ttl_cache import TTLCache

router = APIRouter(prefix="/v1/models", tags=["serving"], responses=PROBLEM_RESPONSES)

#: How long a resolved model (card, weights, policy) is reused before the DB is asked again; a
#: policy change on this replica applies at once, on other replicas within this many seconds.
REF_TTL_S = 2.0

_PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}


async def get_runtime(request: Request) -> ServingRuntime:
    """The app's :class:`ServingRuntime`."""
    return request.app.state.serving


Runtime = Annotated[ServingRuntime, Depends(get_runtime)]
PredictCaller = Annotated[Caller, Depends(require_scope("predict"))]
OwnerTenant = Annotated[Caller, Depends(require_scope("jobs"))]


@dataclass(frozen=True)
class ModelRef:
    """A servable model as resolved from the DB: where its checkpoint is and how it answers."""

    job_id: str
    card_sha: str
    weights_sha: str
    card: dict[str, Any]
    policy: OutputPolicy
    budget: int | None


def _policy_of(row: ModelPolicy | None) -> tuple[OutputPolicy, int | None]:
    if row is None:
        return OutputPolicy(), None
    return OutputPolicy(row.policy, row.top_k, row.decimals), row.budget


def resolve_model(session: Session, rt: ServingRuntime, tenant: TenantRef, job_id: str) -> ModelRef:
    """The tenant's servable model ``job_id``: 404 when missing/someone else's, 409 when not ready."""
    job = get_job(session, tenant, job_id)
    if job.status != jobstate.SUCCEEDED:
        raise ApiError(409, "job_not_succeeded", f"job {job_id} is {job.status}; no model to serve yet")
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    found = checkpoint_artifacts(artifacts)
    if found is None:
        raise ApiError(404, "no_model", f"job {job_id} produced no model checkpoint")
    card_art, weights_art = found
    policy, budget = _policy_of(session.get(ModelPolicy, job.id))
    return ModelRef(job.id, card_art.sha256, weights_art.sha256, rt.card(card_art.sha256), policy, budget)


def _refs(rt: ServingRuntime) -> TTLCache[tuple[str, str], ModelRef]:
    refs = getattr(rt, "_refs", None)
    if refs is None:
        refs = rt._refs = TTLCache(REF_TTL_S)  # type: ignore[attr-defined]
    return refs


async def cached_ref(ctx: ServiceContext, rt: ServingRuntime, tenant: TenantRef, job_id: str) -> ModelRef:
    """:func:`resolve_model`, remembered for :data:`REF_TTL_S` seconds (one lookup per expiry)."""

    def lookup() -> ModelRef:
        with ctx.sessions() as session:
            return resolve_model(session, rt, tenant, job_id)

    ref = await _refs(rt).get_or_load((tenant.id, job_id), lookup)
    assert ref is not None  # resolve_model answers a ModelRef or raises
    return ref


def charge_queries(ctx: ServiceContext, rt: ServingRuntime, key_id: str, ref: ModelRef, n: int) -> Charge:
    """Count ``n`` queries of ``key_id`` on the model: in memory when it has no budget and this
    process knows the key's count (written behind, see :class:`UsageMeter`), else the exact atomic
    charge in the database (always for a budgeted model). Blocking only in the second case."""
    meter = rt.usage
    if ref.budget is None and meter is not None:
        count = meter.add(key_id, ref.job_id, n)
        if count is not None:
            return Charge(True, count, None)
    with ctx.sessions() as session:
        if meter is not None:
            return meter.charge(session, key_id, ref.job_id, n, ref.budget)
        return charge(session, key_id, ref.job_id, n, ref.budget)


async def forward_within_budget(
    rt: ServingRuntime, ref: ModelRef, key_id: str, spent: Charge, entry: LoadedModel, x: torch.Tensor
) -> torch.Tensor:
    """The model's probabilities for the batch ``x`` (through the shared batcher), or 429 when the
    key's query charge was refused; counts images and refusals for ``/metrics``."""
    if not spent.allowed:
        if rt.rejected is not None:
            rt.rejected.labels(ref.job_id).inc()
        raise ApiError(
            429,
            "query_budget_exceeded",
            f"API key {key_id} has used {spent.queries} of the {spent.budget} queries model {ref.job_id} allows; "
            f"this request needs {x.shape[0]} more",
        )
    probs = await rt.predict(entry, x)
    if rt.images is not None:
        rt.images.labels(ref.job_id).inc(int(x.shape[0]))
    return probs


def _input_error(exc: InputError) -> ApiError:
    return ApiError(
        exc.status,
        "invalid_image" if exc.status == 422 else "image_too_large",
        exc.message if exc.field in exc.message else f"{exc.field}: {exc.message}",
        errors=[FieldError(field=exc.field, message=exc.message)],
    )


def _json_images(raw: bytes, max_image_bytes: int) -> tuple[list[RawImage], int | None]:
    """The images and ``top_k`` of a JSON predict body (validated, base64-decoded)."""
    try:
        body = PredictJSON.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            FieldError(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"]) for e in exc.errors()
        ]
        raise ApiError(
            422, "validation_error", "; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors
        ) from exc
    images = []
    for i, item in enumerate(body.images):
        field = f"images[{i}]"
        name, text = ("", item) if isinstance(item, str) else (item.name or "", item.data)
        try:
            data = decode_base64(field, text, max_image_bytes, name)
        except InputError as exc:
            raise _input_error(exc) from exc
        images.append(RawImage(field, name, data))
    return images, body.top_k


async def read_images(request: Request, rt: ServingRuntime) -> tuple[list[RawImage], int | None]:
    """The submitted images (multipart ``files`` parts or JSON ``images``) and the body's ``top_k``."""
    limits = rt.settings
    ctype = request.headers.get("content-type", "")
    images: list[RawImage] = []
    top_k: int | None = None
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=limits.max_images + 1)
        parts = [v for k, v in form.multi_items() if k in ("files", "file")]
        if not parts:
            raise validation_error("files", "send one or more image files as multipart parts named `files`")
        for i, part in enumerate(parts):
            field = f"files[{i}]"
            if not isinstance(part, UploadFile):
                raise validation_error(field, "must be a file part, not a text field")
            data = await part.read(limits.max_image_bytes + 1)
            if len(data) > limits.max_image_bytes:
                raise _input_error(InputError(field, f"{part.filename} is larger than {limits.max_image_bytes} bytes",
                                              status=413))
            images.append(RawImage(field, part.filename or "", data))
        raw_k = form.get("top_k")
        if isinstance(raw_k, str) and raw_k.strip():
            if not raw_k.strip().isdigit() or not 1 <= int(raw_k) <= 100_000:
                raise validation_error("top_k", "must be an integer in [1, 100000]")
            top_k = int(raw_k)
    elif ctype.startswith("application/json"):
        # Parsing and base64-decoding megabytes is CPU work: a worker thread, not the event loop.
        images, top_k = await run_in_threadpool(_json_images, await request.body(), limits.max_image_bytes)
    else:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data `files` or JSON `images` (base64)")
    if len(images) > limits.max_images:
        raise validation_error("files" if ctype.startswith("multipart") else "images",
                               f"at most {limits.max_images} images per request, got {len(images)}")
    return images, top_k


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
    return await predict_images(ctx, rt, caller, job_id, images, top_k or body_k)


async def predict_images(
    ctx: ServiceContext, rt: ServingRuntime, caller: Caller, job_id: str, images: list[RawImage], top_k: int | None
) -> dict[str, Any]:
    """The answer of :func:`predict` for decoded request ``images``: the key's model allow-list,
    preprocessing, the query charge, the batched forward pass and the output policy (the dashboard's
    "try it" uses this too, so it answers exactly what the API answers)."""
    ref = await cached_ref(ctx, rt, caller.tenant, job_id)
    if not caller.may_use_model(ref.job_id):
        raise forbidden(f"this API key may not use model {job_id!r}")
    key_id = caller.key_id

    def prepare() -> tuple[torch.Tensor, Charge, LoadedModel]:
        x = preprocess(images, ref.card)  # before charging: a bad image costs nothing
        spent = charge_queries(ctx, rt, key_id, ref, len(images))  # in memory unless it needs the DB
        entry = rt.cached(ref.weights_sha) or rt.model(ref.card_sha, ref.weights_sha)
        return x, spent, entry

    # One hop to a worker thread: decoding there keeps the event loop (the serial part of a
    # process) free for HTTP; decoding small images on the loop instead saved ~0.3 ms of CPU per
    # request but no throughput on 2 cores (measured), and would block the loop on large ones.
    try:
        x, spent, entry = await run_in_threadpool(prepare)
    except InputError as exc:
        raise _input_error(exc) from exc
    probs = await forward_within_budget(rt, ref, key_id, spent, entry, x)
    answers = apply_policy(
        probs,
        list(ref.card.get("class_names") or []),
        ref.policy,
        requested_k=top_k,
        default_k=rt.settings.default_top_k,
    )
    for image, answer in zip(images, answers, strict=True):
        answer["input"] = f"{image.field} ({image.name})" if image.name else image.field
    return {
        "model": ref.job_id,
        "policy": ref.policy.describe(),
        "predictions": answers,
        "usage": {"queries": spent.queries, "budget": spent.budget, "remaining": spent.remaining},
    }


def _servable(job: Job, card: dict[str, Any], metrics: dict[str, float], row: ModelPolicy | None) -> ServableModel:
    policy, budget = _policy_of(row)
    card_metrics = normalise(card.get("metrics") or {})
    return ServableModel(
        job_id=job.id,
        kind=job.kind,
        arch=card.get("arch"),
        num_classes=card.get("num_classes"),
        class_names=[str(c) for c in card.get("class_names") or []],
        image_size=card.get("image_size"),
        channels=card.get("channels"),
        defense=card.get("defense"),
        metrics=card_metrics | metrics,
        policy=PolicyApplied(**policy.describe()),
        budget=budget,
        created_at=job.created_at,
    )


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
    query = select(Job).where(Job.tenant_id == caller.tenant.id, Job.status == jobstate.SUCCEEDED)
    if caller.models is not None:
        query = query.where(Job.id.in_(sorted(caller.models)))
    if cursor:
        query = query.where(Job.id < cursor)
    jobs = session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)).all()
    page = jobs[:limit]
    ids = [j.id for j in page]
    by_job: dict[str, dict[str, Artifact]] = {i: {} for i in ids}
    for art in session.scalars(select(Artifact).where(Artifact.job_id.in_(ids))):
        by_job[art.job_id][art.name] = art
    policies = {p.job_id: p for p in session.scalars(select(ModelPolicy).where(ModelPolicy.job_id.in_(ids)))}
    items = []
    for job in page:
        found = checkpoint_artifacts(by_job[job.id])
        if found is None:
            continue
        items.append(_servable(job, rt.card(found[0].sha256), final_metrics(session, job.id), policies.get(job.id)))
    return ModelPage(items=items, next_cursor=page[-1].id if len(jobs) > limit else None)


def _policy_view(session: Session, job_id: str) -> PolicyView:
    policy, budget = _policy_of(session.get(ModelPolicy, job_id))
    usage = session.scalars(select(ModelUsage).where(ModelUsage.job_id == job_id).order_by(ModelUsage.key_id)).all()
    return PolicyView(
        job_id=job_id,
        policy=policy.name,  # type: ignore[arg-type]
        top_k=policy.top_k,
        decimals=policy.decimals,
        budget=budget,
        usage=[KeyUsage(key_id=u.key_id, queries=u.queries, rejected=u.rejected, last_at=u.last_at) for u in usage],
    )


@router.get(
    "/{job_id}/policy", response_model=PolicyView,
    summary="Output policy, budget and query accounting",
    responses=NO_MODEL_YET,
)
def get_policy(rt: Runtime, session: DB, caller: OwnerTenant, job_id: str) -> PolicyView:
    """The model's output policy and budget, and the queries each API key made."""
    ref = resolve_model(session, rt, caller.tenant, job_id)
    rt.flush_usage()  # this process's counted queries first, so the view is current
    return _policy_view(session, ref.job_id)


def _set_policy(
    rt: Runtime, session: Session, tenant: TenantRef, ref: ModelRef, values: dict[str, Any], reset_usage: bool
) -> PolicyView:
    """Check the policy ``values`` (policy, top_k, decimals, budget) as a whole and store them."""
    if values["decimals"] is not None and values["policy"] != "rounded":
        raise validation_error("decimals", "only the `rounded` policy rounds")
    if values["top_k"] is not None and values["policy"] not in ("top-k", "rounded"):
        raise validation_error("top_k", "only the `top-k` and `rounded` policies take top_k")
    if values["policy"] == "top-k" and values["top_k"] is None:
        raise validation_error("top_k", "the `top-k` policy needs top_k")
    row = session.get(ModelPolicy, ref.job_id)
    if row is None:
        row = ModelPolicy(job_id=ref.job_id)
        session.add(row)
    row.policy, row.top_k, row.decimals, row.budget = (values[k] for k in ("policy", "top_k", "decimals", "budget"))
    row.updated_at = utcnow()
    # Write this process's counted queries first: a new budget then sees them, a reset zeroes them.
    rt.flush_usage()
    if reset_usage:
        reset(session, ref.job_id)
    session.commit()
    if rt.usage is not None:
        rt.usage.forget(ref.job_id)  # counts re-sync from the database on the next request
    _refs(rt).forget((tenant.id, ref.job_id))
    return _policy_view(session, ref.job_id)


@router.put(
    "/{job_id}/policy", response_model=PolicyView,
    summary="Replace the output policy and query budget",
    responses=NO_MODEL_YET,
)
def put_policy(rt: Runtime, session: DB, caller: OwnerTenant, job_id: str, body: PolicyUpdate) -> PolicyView:
    """Replace the whole policy: fields left out take their defaults (`full`, no top_k, no rounding,
    **no budget**). To change one field and keep the others, use `PATCH`. Applies on this replica at
    once, on others within a few seconds; ``reset_usage`` zeroes every key's count."""
    ref = resolve_model(session, rt, caller.tenant, job_id)
    values = body.model_dump(include={"policy", "top_k", "decimals", "budget"})
    return _set_policy(rt, session, caller.tenant, ref, values, body.reset_usage)


@router.patch(
    "/{job_id}/policy", response_model=PolicyView,
    summary="Change some fields of the output policy",
    responses=NO_MODEL_YET,
)
def patch_policy(rt: Runtime, session: DB, caller: OwnerTenant, job_id: str, body: PolicyPatch) -> PolicyView:
    """Change only the fields given; the others (the budget included) keep their values. Switching
    to a policy that does not take ``top_k`` / ``decimals`` drops them unless they are given."""
    ref = resolve_model(session, rt, caller.tenant, job_id)
    current, budget = _policy_of(session.get(ModelPolicy, ref.job_id))
    values: dict[str, Any] = {"policy": current.name, "top_k": current.top_k, "decimals": current.decimals,
                              "budget": budget}
    given = body.model_dump(include=body.model_fields_set - {"reset_usage"})
    if "policy" in given:
        if given["policy"] not in ("top-k", "rounded"):
            values["top_k"] = None
        if given["policy"] != "rounded":
            values["decimals"] = None
    values.update(given)
    return _set_policy(rt, session, caller.tenant, ref, values, body.reset_usage)


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
    if format not in FORMATS:
        raise validation_error("format", f"use one of {', '.join(FORMATS)}")
    ref = resolve_model(session, rt, caller.tenant, job_id)
    path = rt.export(ref.card_sha, ref.weights_sha, format)
    c, s = ref.card["channels"], ref.card["image_size"]
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{ref.job_id}{FORMATS[format]}",
        headers={"X-Input-Shape": f"N,{c},{s},{s}", "X-Input-Scale": "pixels/255"},
    )


