"""``/v1/models``: a model's card, README and CycloneDX ML-BOM, and the upload of a model trained elsewhere (over
:mod:`services.ops.models`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from services.gateway.deps import DB, Ctx, CurrentTenant, scoped
from services.gateway.errors import NO_MODEL_YET, PROBLEM_RESPONSES, ApiError
from services.gateway.uploads import MAX_CARD_BYTES, multipart_body, precheck_quota, receive_file
from services.ops import bom
from services.ops import models as ops
from services.ops.schemas import ModelCard

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))


@router.get(
    "/{job_id}", response_model=ModelCard, summary="Model card of a job's trained model", responses=NO_MODEL_YET
)
def model_card(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str) -> ModelCard:
    """Architecture, classes, input size, defense and Acc / AttAcc of the model a job produced."""
    return ops.model_card(ctx, session, tenant, job_id)


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
    text = ops.model_readme(ctx, session, tenant, job_id)
    return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")


@router.get(
    "/{job_id}/bom.json",
    summary="The model as a CycloneDX 1.6 ML-BOM",
    response_class=Response,
    responses={200: {"content": {bom.MEDIA_TYPE: {"schema": {"type": "object"}}},
                     "description": "A CycloneDX 1.6 JSON document whose subject is the model"},
               **NO_MODEL_YET},
)
def model_bom(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str) -> JSONResponse:
    """The model as a machine-learning-model component (its id as version and bom-ref, the SHA-256 of its
    weights) with a CycloneDX `modelCard`: supervised classification, its architecture, the private data
    set by name; Acc and, per audit and attack, AttAcc top-1 / top-5 with the 95 % interval (the slice names
    the versioned attack id and the defense); the training study's verdicts, the audits' leakage statements
    and warnings as considerations. Built from the same records as the model card, when asked."""
    return JSONResponse(bom.model_bom(ctx, session, tenant, job_id), media_type=bom.MEDIA_TYPE)


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
    return await ops.upload_model(ctx, tenant, upload)
