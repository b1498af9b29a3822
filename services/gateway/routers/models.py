"""``/v1/models/{job_id}``: the model card of a trained model."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from services.db import jobs as jobstate
from services.db.models import Artifact
from services.gateway.deps import DB, Ctx, CurrentTenant, scoped
from services.gateway.errors import NO_MODEL_YET, PROBLEM_RESPONSES, ApiError
from services.gateway.routers.jobs import get_job
from services.gateway.schemas import ModelCard
from services.gateway.views import artifact_view, final_metrics
from services.redact import server_redactor

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))

#: Card names tried first (kept for ``routers/predict.py``); :func:`card_name` knows pipelines too.
CARD_NAMES = ("model.json",)


def card_name(names: list[str]) -> str | None:
    """The checkpoint a model card describes: a train job's ``model.json``; for a pipeline, the
    defended target of its first seed (``targets/<defense>/seed<k>/model.json``, NoDef last)."""
    if "model.json" in names:
        return "model.json"
    targets = [n for n in names if n.startswith("targets/") and n.endswith("/model.json")]

    def rank(name: str) -> tuple[bool, int, str]:
        parts = name.split("/")
        seed = parts[2].removeprefix("seed") if len(parts) > 3 else ""
        return (parts[1] == "nodef", int(seed) if seed.isdigit() else 0, name)

    if targets:
        return sorted(targets, key=rank)[0]
    return next((n for n in sorted(names) if n.endswith("model.json")), None)


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
    metrics = {
        k: float(v)
        for k, v in (card.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    label = chosen.split("/")[1] if chosen.startswith("targets/") else None
    for name, value in final_metrics(session, job.id).items():
        # A pipeline's job metrics are ``<defense>.<attack>.<metric>``: keep those of this model.
        if label is None or name.startswith(f"{label}."):
            metrics[name.removeprefix(f"{label}.") if label else name] = value
    card.pop("history", None)
    card = server_redactor(ctx.settings).data(card)  # the training config names the data's server folder
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
