"""Serving: resolve a servable model, charge the caller's query budget, run the batched forward pass, list
the models, read and change their output policy and budget, export them.

What ``/v1/models/{id}/predict``, the Open Inference Protocol (``/v2``) and the dashboard's "try it" share:
a model resolved once per :data:`REF_TTL_S` (card, weights, policy), the key's model allow-list, one
query of the calling key per image (429 past the model's budget) and the one dynamic batcher of the
process (:class:`~services.serving.runtime.ServingRuntime`). Decoding a request's images is the
transport's; preprocessing, the charge and the forward pass are here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.models import Artifact, Job, ModelPolicy, ModelUsage
from services.db.types import utcnow
from services.ops.context import Caller, ServiceContext, TenantRef
from services.ops.errors import ApiError, FieldError, forbidden, validation_error
from services.ops.files import in_thread
from services.ops.jobs import get_job
from services.ops.models import checkpoint_artifacts
from services.ops.views import final_metrics
from services.serving.accounting import Charge, charge, reset
from services.serving.cache import LoadedModel
from services.serving.export import FORMATS
from services.serving.policy import OutputPolicy, apply_policy, policy_of
from services.serving.preprocess import InputError, RawImage, preprocess
from services.serving.runtime import ServingRuntime
from services.serving.schemas import (
    KeyUsage,
    ModelPage,
    PolicyApplied,
    PolicyPatch,
    PolicyUpdate,
    PolicyView,
    ServableModel,
)
from services.ttl_cache import TTLCache

#: How long a resolved model (card, weights, policy) is reused before the DB is asked again; a
#: policy change on this replica applies at once, on other replicas within this many seconds.
REF_TTL_S = 2.0


@dataclass(frozen=True)
class ModelRef:
    """A servable model as resolved from the DB: where its checkpoint is and how it answers."""

    job_id: str
    card_sha: str
    weights_sha: str
    card: dict[str, Any]
    policy: OutputPolicy
    budget: int | None


#: Policies that list the most likely identities and may cap how many.
TAKES_TOP_K = ("top-k", "rounded", "shield")
#: What the serving-time defense costs, shown with the policy (checked by tests on random scores; its
#: effect on confidence and on black-box attacks is measured in docs/results.md).
SHIELD_COST = ("accuracy unchanged: the predicted identity and the order of the top list are the model's for every "
               "input; the probabilities are pulled toward a fixed template of the predicted identity, so confidence "
               "says less about the input (to users and attackers alike)")


# --- resolving a model ----------------------------------------------------------------------------


def resolve_model(session: Session, rt: ServingRuntime, tenant: TenantRef, job_id: str) -> ModelRef:
    """The tenant's servable model ``job_id``: 404 when missing/someone else's, 409 when not ready."""
    job = get_job(session, tenant, job_id)
    if job.status != jobstate.SUCCEEDED:
        raise ApiError(409, "job_not_succeeded", f"job {job_id} is {job.status}; no model to serve yet")
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    found = checkpoint_artifacts(job.kind, artifacts)
    if found is None:
        raise ApiError(404, "no_model", f"job {job_id} produced no model checkpoint")
    card_art, weights_art = found
    policy, budget = policy_of(session.get(ModelPolicy, job.id))
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


async def use_model(ctx: ServiceContext, rt: ServingRuntime, caller: Caller, model_id: str) -> ModelRef:
    """:func:`cached_ref` of a model the caller's key may use (403 when its allow-list leaves it out)."""
    ref = await cached_ref(ctx, rt, caller.tenant, model_id)
    if not caller.may_use_model(ref.job_id):
        raise forbidden(f"this API key may not use model {model_id!r}")
    return ref


# --- charging and predicting ----------------------------------------------------------------------


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


def input_error(exc: InputError) -> ApiError:
    """A request image that cannot be used: 422 ``invalid_image``, or 413 ``image_too_large``, naming it."""
    return ApiError(
        exc.status,
        "invalid_image" if exc.status == 422 else "image_too_large",
        exc.message if exc.field in exc.message else f"{exc.field}: {exc.message}",
        errors=[FieldError(field=exc.field, message=exc.message)],
    )


async def predict_images(
    ctx: ServiceContext, rt: ServingRuntime, caller: Caller, job_id: str, images: list[RawImage], top_k: int | None
) -> dict[str, Any]:
    """The answer of ``POST /v1/models/{id}/predict`` for decoded request ``images``: the key's model
    allow-list, preprocessing, the query charge, the batched forward pass and the output policy (the
    dashboard's "try it" uses this too, so it answers exactly what the API answers)."""
    ref = await use_model(ctx, rt, caller, job_id)
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
        x, spent, entry = await in_thread(prepare)
    except InputError as exc:
        raise input_error(exc) from exc
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


# --- listing, policies, export --------------------------------------------------------------------


def _servable(job: Job, card: dict[str, Any], metrics: dict[str, float], row: ModelPolicy | None) -> ServableModel:
    policy, budget = policy_of(row)
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


def list_models(session: Session, rt: ServingRuntime, caller: Caller, cursor: str | None = None,
                limit: int = 50) -> ModelPage:
    """Succeeded jobs of the caller's tenant that produced a checkpoint, newest first, with their card and
    output policy (for a key limited to some models, only those)."""
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
        found = checkpoint_artifacts(job.kind, by_job[job.id])
        if found is None:
            continue
        items.append(_servable(job, rt.card(found[0].sha256), final_metrics(session, job.id), policies.get(job.id)))
    return ModelPage(items=items, next_cursor=page[-1].id if len(jobs) > limit else None)


def _policy_view(session: Session, job_id: str) -> PolicyView:
    policy, budget = policy_of(session.get(ModelPolicy, job_id))
    usage = session.scalars(select(ModelUsage).where(ModelUsage.job_id == job_id).order_by(ModelUsage.key_id)).all()
    return PolicyView(
        job_id=job_id,
        policy=policy.name,  # type: ignore[arg-type]
        top_k=policy.top_k,
        decimals=policy.decimals,
        strength=policy.shield_strength if policy.name == "shield" else None,
        budget=budget,
        cost=SHIELD_COST if policy.name == "shield" else None,
        usage=[KeyUsage(key_id=u.key_id, queries=u.queries, rejected=u.rejected, last_at=u.last_at) for u in usage],
    )


def get_policy(session: Session, rt: ServingRuntime, tenant: TenantRef, job_id: str) -> PolicyView:
    """The model's output policy and budget, and the queries each API key made (this process's counted
    queries written first, so the view is current)."""
    ref = resolve_model(session, rt, tenant, job_id)
    rt.flush_usage()
    return _policy_view(session, ref.job_id)


def put_policy(session: Session, rt: ServingRuntime, tenant: TenantRef, job_id: str, body: PolicyUpdate) -> PolicyView:
    """Replace the whole policy: fields left out take their defaults (no budget included)."""
    ref = resolve_model(session, rt, tenant, job_id)
    values = body.model_dump(include={"policy", "top_k", "decimals", "strength", "budget"})
    return _set_policy(session, rt, tenant, ref, values, body.reset_usage)


def patch_policy(session: Session, rt: ServingRuntime, tenant: TenantRef, job_id: str, body: PolicyPatch) -> PolicyView:
    """Change only the fields given; switching to a policy that does not take ``top_k`` / ``decimals``
    drops them unless they are given."""
    ref = resolve_model(session, rt, tenant, job_id)
    current, budget = policy_of(session.get(ModelPolicy, ref.job_id))
    values: dict[str, Any] = {"policy": current.name, "top_k": current.top_k, "decimals": current.decimals,
                              "strength": current.strength, "budget": budget}
    given = body.model_dump(include=body.model_fields_set - {"reset_usage"})
    if "policy" in given:
        if given["policy"] not in TAKES_TOP_K:
            values["top_k"] = None
        if given["policy"] != "rounded":
            values["decimals"] = None
        if given["policy"] != "shield":
            values["strength"] = None
    values.update(given)
    return _set_policy(session, rt, tenant, ref, values, body.reset_usage)


def _set_policy(
    session: Session, rt: ServingRuntime, tenant: TenantRef, ref: ModelRef, values: dict[str, Any], reset_usage: bool
) -> PolicyView:
    """Check the policy ``values`` (policy, top_k, decimals, budget) as a whole and store them; they apply
    on this replica at once (its cached reference is dropped), on others within :data:`REF_TTL_S`."""
    if values["decimals"] is not None and values["policy"] != "rounded":
        raise validation_error("decimals", "only the `rounded` policy rounds")
    if values["top_k"] is not None and values["policy"] not in TAKES_TOP_K:
        raise validation_error("top_k", "only the `top-k`, `rounded` and `shield` policies take top_k")
    if values.get("strength") is not None and values["policy"] != "shield":
        raise validation_error("strength", "only the `shield` policy takes a strength")
    if values["policy"] == "top-k" and values["top_k"] is None:
        raise validation_error("top_k", "the `top-k` policy needs top_k")
    row = session.get(ModelPolicy, ref.job_id)
    if row is None:
        row = ModelPolicy(job_id=ref.job_id)
        session.add(row)
    row.policy, row.top_k, row.decimals, row.strength, row.budget = (
        values.get(k) for k in ("policy", "top_k", "decimals", "strength", "budget"))
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


def export_model(session: Session, rt: ServingRuntime, tenant: TenantRef, job_id: str,
                 fmt: str) -> tuple[ModelRef, Path]:
    """The model exported as ``fmt`` (one of :data:`~services.serving.export.FORMATS`; 422 otherwise): the
    model and the exported file (built once per checkpoint and format)."""
    if fmt not in FORMATS:
        raise validation_error("format", f"use one of {', '.join(FORMATS)}")
    ref = resolve_model(session, rt, tenant, job_id)
    return ref, rt.export(ref.card_sha, ref.weights_sha, fmt)


__all__ = ["REF_TTL_S", "ModelRef", "cached_ref", "charge_queries", "export_model", "forward_within_budget",
           "get_policy", "input_error", "list_models", "patch_policy", "policy_of", "predict_images", "put_policy",
           "resolve_model", "use_model"]
