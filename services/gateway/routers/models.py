"""``/v1/models/{job_id}``: the model card of a trained model."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from services.db import jobs as jobstate
from services.db.models import Artifact
from services.gateway.deps import DB, Ctx, CurrentTenant
from services.gateway.errors import PROBLEM_RESPONSES, ApiError
from services.gateway.routers.jobs import get_job
from services.gateway.schemas import ModelCard
from services.gateway.views import artifact_view, final_metrics

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROBLEM_RESPONSES)

#: Where a job kind keeps the checkpoint a model card describes (the defended model of a pipeline).
CARD_NAMES = ("model.json", "defense/model.json", "models/defense/model.json")


@router.get("/{job_id}", response_model=ModelCard, summary="Model card of a job's trained model")
def model_card(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str) -> ModelCard:
    """Architecture, classes, input size, defense and Acc / AttAcc of the model a job produced."""
    job = get_job(session, tenant, job_id)
    if job.status != jobstate.SUCCEEDED:
        raise ApiError(409, "job_not_succeeded", f"job {job_id} is {job.status}; no model yet")
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    card_name = next((n for n in CARD_NAMES if n in artifacts), None)
    if card_name is None:
        card_name = next((n for n in sorted(artifacts) if n.endswith("model.json")), None)
    if card_name is None:
        raise ApiError(404, "no_model", f"job {job_id} produced no model checkpoint")
    with ctx.store.open(artifacts[card_name].sha256) as fh:
        card: dict[str, Any] = json.load(fh)
    weights = artifacts.get(card_name.removesuffix("model.json") + "model.safetensors")
    metrics = {
        k: float(v)
        for k, v in (card.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    metrics.update(final_metrics(session, job.id))
    card.pop("history", None)
    return ModelCard(
        job_id=job.id,
        arch=card.get("arch"),
        num_classes=card.get("num_classes"),
        image_size=card.get("image_size"),
        defense=card.get("defense"),
        metrics=metrics,
        checkpoint=artifact_view(weights) if weights else None,
        card=card,
    )
