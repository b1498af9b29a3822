"""``/v1/models/{job_id}``: the model card of a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.models import Artifact, Job
from services.db.types import new_id, utcnow
from services.gateway.deps import DB, Ctx, CurrentTenant, ServiceContext, TenantRef, scoped
from services.gateway.errors import NO_MODEL_YET, PROBLEM_RESPONSES, ApiError, validation_error
from services.gateway.model_cards import evaluations_of, readme
from services.gateway.schemas import ModelCard
from services.gateway.strings import UNSTORABLE, find_unstorable
from services.gateway.uploads import (
    MAX_CARD_BYTES,
    UploadedFile,
    check_upload_quota,
    in_check_thread,
    in_io_thread,
    multipart_body,
    precheck_quota,
    receive_file,
    remove_files,
)
from services.gateway.views import artifact_view, final_metrics
from services.jobspec import UPLOAD
from services.ops.jobs import get_job
from services.ops.models import card_name
from services.redact import server_redactor

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))

@router.get(
    "/{job_id}", response_model=ModelCard, summary="Model card of a job's trained model", responses=NO_MODEL_YET
)
def model_card(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str) -> ModelCard:
    """Architecture, classes, input size, defense and Acc / AttAcc of the model a job produced."""
    job = get_job(session, tenant, job_id)
    if job.status != jobstate.SUCCEEDED:
        raise ApiError(409, "job_not_succeeded", f"job {job_id} is {job.status}; no model yet")
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    chosen = card_name(list(artifacts))
    if chosen is None:
        raise ApiError(404, "no_model", f"job {job_id} produced no model checkpoint")
    with ctx.store.open(artifacts[chosen].sha256) as fh:
        card: dict[str, Any] = json.load(fh)
    weights = artifacts.get(chosen.removesuffix("model.json") + "model.safetensors")
    metrics = normalise(card.get("metrics") or {})
    label = chosen.split("/")[1] if chosen.startswith("targets/") else None
    for name, value in final_metrics(session, job.id).items():
        # A pipeline's job metrics are ``<defense>.<attack>.<metric>``: keep those of this model.
        if label is None or name.startswith(f"{label}."):
            metrics[name.removeprefix(f"{label}.") if label else name] = value
    card.pop("history", None)
    card = server_redactor(ctx.settings).data(card)  # the training config names the data's server folder
    return ModelCard(
        id=job.id,
        job_id=job.id,
        arch=card.get("arch"),
        num_classes=card.get("num_classes"),
        image_size=card.get("image_size"),
        defense=card.get("defense"),
        metrics=metrics,
        checkpoint=artifact_view(weights) if weights else None,
        card=card,
        evaluations=evaluations_of(session, tenant.id, job.id),
    )


@router.get(
    "/{job_id}/README.md",
    summary="The model card as Markdown (Hugging Face model-card form)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/markdown": {}}, "description": "README.md with model-index front matter"},
               **NO_MODEL_YET},
)
def model_readme(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str) -> PlainTextResponse:
    """Architecture, defense, Acc and every model inversion audit of the model, with YAML front
    matter (`model-index`) that model hubs and registries read."""
    view = model_card(ctx, session, tenant, job_id)
    text = readme(job_id, view.card, view.metrics, view.evaluations)
    return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")


_UPLOAD_BODY = multipart_body(
    {
        "file": {"type": "string", "format": "binary",
                 "description": "The weights: a safetensors state dict of the card's architecture."},
        "card": {"type": "string", "description": "JSON: arch, num_classes or class_names, image_size, channels, "
                 "optional normalization {mean, std} (a midre model.json is accepted as it is)."},
        "name": {"type": "string", "description": "A name for the model."},
    },
    ["file", "card"],
)


def card_limits(ctx: ServiceContext) -> Any:
    """What an uploaded card may ask for (``MIDRE_MAX_MODEL_CLASSES``, ``MIDRE_MAX_MODEL_IMAGE_SIZE``)."""
    from midre.models.external import CardLimits

    return CardLimits(max_classes=ctx.settings.max_model_classes, max_image_size=ctx.settings.max_model_image_size,
                      classes_hint=" (MIDRE_MAX_MODEL_CLASSES)", image_size_hint=" (MIDRE_MAX_MODEL_IMAGE_SIZE)")


def _check_upload(ctx: ServiceContext, weights: Path, card: dict[str, Any], save_to: Path) -> dict[str, Any]:
    """The library's check (card first, then the file's header, only then a model is built); the weights
    are written to ``save_to`` in the project's own key layout, whatever layout was uploaded."""
    from midre.checkpoint import check_external_checkpoint
    from midre.errors import ConfigError

    try:
        return check_external_checkpoint(weights, card, limits=card_limits(ctx), save_to=save_to)
    except ConfigError as exc:
        raise validation_error(exc.field, exc.message) from exc


def _check_model_file(ctx: ServiceContext, tenant: TenantRef, upload: UploadedFile, converted: Path) -> dict[str, Any]:
    """The blocking part of an upload (a worker thread): quota, file type, card, then the library's check."""
    check_upload_quota(ctx, tenant.id, upload)
    with open(upload.path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        raise validation_error("file", "a zip archive (TorchScript?) is not accepted: upload the state dict as "
                                       "safetensors (white-box attacks need the architecture and gradients)")
    try:
        card = json.loads(upload.fields.get("card") or "")
    except json.JSONDecodeError as exc:
        raise validation_error("card", f"a JSON object is required ({exc.msg})") from exc
    refused = find_unstorable(card, "card")
    if refused is not None:
        raise validation_error(refused, UNSTORABLE)
    checked = _check_upload(ctx, upload.path, card, converted)
    name = (upload.fields.get("name") or Path(upload.filename).stem or "model")[:200]
    checked.pop("history", None)
    checked["origin"] = {"kind": UPLOAD.name, "name": name, "file": Path(upload.filename).name, "sha256": upload.sha256}
    return checked


def _store_upload(ctx: ServiceContext, tenant: TenantRef, name: str, weights: Path, card: dict[str, Any]) -> Job:
    """Store an accepted model as a succeeded ``upload`` job with its two artifacts (one transaction)."""
    job_id = new_id("job")
    card_file = weights.with_suffix(".json")
    card_file.write_text(json.dumps(card, indent=2))
    try:
        blobs = {"model.safetensors": ctx.store.put_file(weights), "model.json": ctx.store.put_file(card_file)}
    finally:
        card_file.unlink(missing_ok=True)
    now = utcnow()
    job = Job(id=job_id, tenant_id=tenant.id, kind=UPLOAD.name, status=jobstate.SUCCEEDED,
              spec={"kind": UPLOAD.name, "name": name, "card": {k: v for k, v in card.items() if k != "origin"}},
              queue="none", progress=1.0, stage="done", message="uploaded model", attempt=0,
              cancel_requested=False, created_at=now, started_at=now, finished_at=now)
    with ctx.sessions() as session:
        session.add(job)
        session.flush()
        for artifact, blob in blobs.items():
            kind = "application/json" if artifact.endswith(".json") else "application/octet-stream"
            session.add(Artifact(job_id=job_id, name=artifact, size=blob.size, sha256=blob.sha256,
                                 content_type=kind, created_at=now))
        jobstate.add_event(session, job, "status", f"model {name!r} uploaded", stage="done",
                           data={"status": "succeeded"})
        session.commit()
        session.refresh(job)
        session.expunge(job)
    return job


@router.post(
    "",
    status_code=201,
    response_model=ModelCard,
    summary="Upload a model trained elsewhere",
    openapi_extra=_UPLOAD_BODY,
    responses={413: PROBLEM_RESPONSES[422] | {"description": "Larger than MIDRE_MAX_MODEL_BYTES"}},
)
async def upload_model(request: Request, ctx: Ctx, tenant: CurrentTenant) -> ModelCard:
    """``multipart/form-data`` with ``file`` (a safetensors state dict; never unpickled) and ``card``
    (JSON). Cheapest checks first, so a bad card costs no memory: the card alone (a registered
    architecture, at most ``MIDRE_MAX_MODEL_CLASSES`` classes, an input side the architecture takes
    and at most ``MIDRE_MAX_MODEL_IMAGE_SIZE``, a finite ``normalization`` with std > 0), then the
    final layer's rows in the file's header against the card's classes (422 ``card.num_classes``);
    only then the model is built, the tensors must fit it exactly and a forward pass on a dummy batch
    must give one finite logit per class. The state dict may use this service's key layout or, for
    the torchvision architectures, torchvision's own (``torchvision.models.resnet18(num_classes=10)
    .state_dict()`` saved with safetensors; timm's ResNets and DenseNets share it). The model gets an id
    (the same id space as jobs: audit it with ``attack_eval`` ``model``, harden it with ``init_from``,
    serve it with ``/v1/models/{id}/predict``). A refused upload stores nothing.

    TorchScript and ONNX files are not accepted: white-box attacks need the model's gradients and a
    rebuildable architecture, which a safetensors state dict of a registered architecture gives.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with `file` and `card` parts")
    await precheck_quota(ctx, tenant.id, request)
    upload = await receive_file(request, ctx.store.upload_dir(tenant.id), ctx.settings.max_model_bytes,
                                MAX_CARD_BYTES)
    converted = upload.path.with_name(upload.path.name + ".checked")
    try:
        checked = await in_check_thread(ctx.settings.upload_workers, _check_model_file, ctx, tenant, upload,
                                        converted)
        job = await run_in_threadpool(_store_upload, ctx, tenant, checked["origin"]["name"], converted, checked)
    finally:
        with anyio.CancelScope(shield=True):
            await in_io_thread(remove_files, upload.path, converted)
    return await run_in_threadpool(_card_view, ctx, tenant, job.id)


def _card_view(ctx: ServiceContext, tenant: TenantRef, job_id: str) -> ModelCard:
    with ctx.sessions() as session:
        return model_card(ctx, session, tenant, job_id)
