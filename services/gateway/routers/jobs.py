"""``/v1/jobs``: submit, list, inspect, follow events, cancel."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.db import jobs as jobstate
from services.db.models import Artifact, Dataset, Job, JobEvent, JobUnit
from services.db.types import new_id, utcnow
from services.gateway.deps import DB, Ctx, CurrentTenant, TenantRef, scoped
from services.gateway.errors import PROBLEM_RESPONSES, ApiError, not_found, validation_error
from services.gateway.quotas import check_job_quotas
from services.gateway.schemas import EventPage, JobPage, JobPublic, JobSpec, UnitCounts, UnitList, UnitPublic
from services.gateway.views import event_view, job_view, metrics_of
from services.jobspec import DIGITS, MAX_INT64, SpecError, check_public_data, references, resolve

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))

StatusFilter = Annotated[str | None, Query(description="Only jobs in this status.")]


def get_job(session: Session, tenant: TenantRef, job_id: str) -> Job:
    """The tenant's job ``job_id``; 404 when missing or someone else's."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant.id:
        raise not_found("job", job_id)
    return job


def resolve_dataset(session: Session, tenant: TenantRef, ref: str) -> tuple[str, str | None]:
    """``(source, dataset_id)`` of a job's ``dataset`` field; 422 naming ``dataset`` when unknown."""
    if ref == DIGITS:
        return DIGITS, None
    dataset = session.get(Dataset, ref)
    if dataset is None or dataset.tenant_id != tenant.id:
        raise validation_error("dataset", f"unknown dataset {ref!r}: use 'digits' or the id of your dataset")
    return dataset.source, dataset.id


#: Study kinds whose succeeded job is a model when it recommended one (its root ``model.json``).
RECOMMENDING_KINDS = ("harden",)
#: Data split fields of a study config (the rest of a model's data spec comes from its card).
_STUDY_DATA_FIELDS = ("channels", "test_fraction", "split_seed", "num_private", "max_images_per_identity")


def is_model(session: Session, job: Job) -> bool:
    """Whether a job is a model: an uploaded one, a succeeded train job, or a succeeded harden job that
    recommended a checkpoint (stored as its own ``model.json`` / ``model.safetensors``)."""
    if job.status != jobstate.SUCCEEDED:
        return False
    if job.kind in jobstate.MODEL_KINDS:
        return True
    if job.kind in RECOMMENDING_KINDS:
        names = select(Artifact.name).where(Artifact.job_id == job.id, Artifact.name == "model.json")
        return session.scalar(names) is not None
    return False


def _model_job(session: Session, tenant: TenantRef, field: str, ref: str) -> Job:
    """The tenant's model ``ref``: an uploaded model, a succeeded train job or a harden job's
    recommendation; 422 otherwise."""
    job = session.get(Job, ref)
    if job is None or job.tenant_id != tenant.id:
        raise validation_error(field, f"unknown model {ref!r}")
    if not is_model(session, job):
        raise validation_error(field, f"{ref!r} is not a model: not an uploaded model, a succeeded train job or a "
                                      "harden job that recommended a checkpoint")
    return job


def _model_data(job: Job) -> dict[str, Any] | None:
    """The data spec a model was trained on, as far as the service knows it (None: unknown)."""
    if job.kind == "upload":  # a midre model.json uploaded as it is still carries its data spec
        return ((job.spec.get("card") or {}).get("config") or {}).get("data")
    if job.kind in RECOMMENDING_KINDS:
        return _study_data(job)
    if job.resolved:
        return (job.resolved.get("config") or {}).get("data")
    return job.spec.get("data") or {}  # a train job stored before resolved configs existed


def _study_data(job: Job) -> dict[str, Any]:
    """A study's data spec (source token and split), as its targets were trained on it."""
    config = (job.resolved or {}).get("config") or {}
    data = {k: config[k] for k in _STUDY_DATA_FIELDS if config.get(k) is not None}
    return {"source": config.get("data"), **data} if config.get("data") else data


def check_references(session: Session, tenant: TenantRef, spec: dict[str, Any]) -> tuple[str | None, Job | None]:
    """Check that the tenant owns every dataset and job the spec names; ``(dataset_id, model_job)``."""
    try:
        refs = references(spec)
    except SpecError as exc:
        raise validation_error(exc.field, exc.message) from exc
    dataset_id, model_job = None, None
    for ref in refs:
        if ref.what == "dataset":
            dataset_id = resolve_dataset(session, tenant, ref.id)[1]
        else:
            job = _model_job(session, tenant, ref.field, ref.id)
            if ref.field in ("model", "model_job"):
                model_job = job
    return dataset_id, model_job


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    summary="Submit a job",
    responses={200: {"model": JobPublic, "description": "Replay of an earlier request (Idempotency-Key)"}},
)
def submit_job(
    ctx: Ctx,
    session: DB,
    tenant: CurrentTenant,
    response: Response,
    spec: Annotated[JobSpec, Body(discriminator="kind")],
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Retrying with the same key returns the first job."),
    ] = None,
) -> JobPublic:
    """Check the spec (unknown keys, ranges, ids you own, then the library's own checks: architecture
    and input size, defense parameters, attack names and options, public data the attacks need),
    store the job with its resolved config, then queue it (after the commit). A refused spec is a 422
    naming the field; nothing is stored."""
    spec_dict: dict[str, Any] = spec.model_dump(mode="json", exclude_none=False)
    if idempotency_key:
        existing = session.scalar(
            select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return _replay(session, existing, spec_dict, response)

    dataset_id, model_job = check_references(session, tenant, spec_dict)
    model_resolved = None
    if model_job is not None:
        data = _model_data(model_job)
        if data is None and spec_dict["kind"] == "attack_eval" and not spec_dict.get("dataset"):
            raise validation_error("dataset", f"model {model_job.id} was not trained here: name the private data "
                                              "it was trained on (`dataset`, and its split in `data`)")
        model_resolved = {"config": {"data": data or {}}}
    inherited = None
    if spec_dict["kind"] == "attack_eval" and not spec_dict.get("dataset") and model_job is not None:
        if model_job.kind == "train" and model_job.resolved:  # its data, by id (a server path stays on the server)
            inherited = (model_job.resolved.get("config") or {}).get("data")
            dataset_id = model_job.dataset_id
        elif model_job.kind in RECOMMENDING_KINDS:
            inherited = _study_data(model_job)
            dataset_id = model_job.dataset_id
    try:
        resolved = resolve(spec_dict, inherited)
        check_public_data(spec_dict, model_resolved)
    except SpecError as exc:
        raise validation_error(exc.field, exc.message) from exc
    check_job_quotas(session, ctx.settings, tenant.id, resolved)

    queue = ctx.settings.queue_name(ctx.dispatcher.route(spec_dict.get("device", "auto")))
    job = Job(
        id=new_id("job"),
        tenant_id=tenant.id,
        kind=spec_dict["kind"],
        status=jobstate.QUEUED,
        spec=spec_dict,
        resolved=resolved,
        queue=queue,
        idempotency_key=idempotency_key,
        dataset_id=dataset_id,
        progress=0.0,
        stage="queued",
        attempt=0,
        cancel_requested=False,
        created_at=utcnow(),
    )
    session.add(job)
    jobstate.add_event(session, job, "status", f"queued on {queue}", stage="queued", data={"status": "queued"})
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won the race
        session.rollback()
        existing = session.scalar(
            select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == idempotency_key)
        )
        if existing is None:
            raise
        return _replay(session, existing, spec_dict, response)

    try:
        ctx.dispatcher.send(job.id, queue)
    except Exception as exc:  # noqa: BLE001 - the reaper re-sends jobs never dispatched
        log.warning("could not queue %s now (%s); a worker's reaper will", job.id, exc)
    else:
        job.dispatched_at = utcnow()
        session.commit()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_view(session, job)


def _replay(session: Session, job: Job, spec: dict[str, Any], response: Response) -> JobPublic:
    if job.spec != spec:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )
    response.status_code = 200
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_view(session, job)


@router.get("", response_model=JobPage, summary="List jobs (newest first)")
def list_jobs(
    ctx: Ctx,
    session: DB,
    tenant: CurrentTenant,
    status: StatusFilter = None,
    kind: Annotated[str | None, Query(description="Only jobs of this kind.")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Cursor pagination over the tenant's jobs, optionally filtered by status and kind."""
    if status is not None and status not in jobstate.STATUSES:
        raise validation_error("status", f"must be one of {', '.join(jobstate.STATUSES)}")
    if kind is not None and kind not in jobstate.KINDS:
        raise validation_error("kind", f"must be one of {', '.join(jobstate.KINDS)}")
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if cursor:
        query = query.where(Job.id < cursor)
    rows = session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)).all()
    metrics = metrics_of(session, [job.id for job in rows[:limit]])
    items = [job_view(session, job, metrics[job.id]) for job in rows[:limit]]
    return JobPage(items=items, next_cursor=rows[limit - 1].id if len(rows) > limit else None)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    summary="Get a job",
    responses={304: {"description": "Not modified since the `ETag` given in `If-None-Match`"}},
)
async def read_job(
    ctx: Ctx,
    tenant: CurrentTenant,
    job_id: str,
    if_none_match: Annotated[str | None, Header(max_length=200, description="An `ETag` of this job.")] = None,
) -> Response:
    """Status, progress (0..1 + stage), timestamps, error and metrics of one job. Answers carry an
    `ETag`; a poll with `If-None-Match` gets 304 while nothing changed. Each API process answers
    from a cache for `MIDRE_JOB_CACHE_S` seconds (default 1), so a poll sees a change at most that late."""

    def load() -> tuple[str, bytes]:
        with ctx.sessions() as session:
            body = job_view(session, get_job(session, tenant, job_id)).model_dump_json().encode()
        return f'"{hashlib.sha256(body).hexdigest()[:32]}"', body

    found = await ctx.job_cache.get_or_load((tenant.id, job_id), load)
    assert found is not None  # load() answers or raises 404
    etag, body = found
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if if_none_match is not None and etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get("/{job_id}/events", response_model=EventPage, summary="A job's events")
def list_events(
    session: DB,
    tenant: CurrentTenant,
    job_id: str,
    after: Annotated[int | None, Query(ge=0, le=MAX_INT64, description="Return events with id > after.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    """The append-only event log, oldest first: status and stage changes, epochs, log lines."""
    job = get_job(session, tenant, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    rows = session.scalars(query.order_by(JobEvent.id).limit(limit + 1)).all()
    items = [event_view(e) for e in rows[:limit]]
    return EventPage(items=items, next_cursor=rows[limit - 1].id if len(rows) > limit else None)


@router.get("/{job_id}/units", response_model=UnitList, summary="A study's units")
def list_units(session: DB, tenant: CurrentTenant, job_id: str) -> UnitList:
    """The unit graph of a study (pipeline, sweep, harden) that runs fanned out over the workers:
    every evaluation model, prior, target, attack run, search step and the report, with its status,
    dependencies, attempts and worker. Empty for other jobs and for a study not planned yet."""
    job = get_job(session, tenant, job_id)
    rows = session.scalars(select(JobUnit).where(JobUnit.job_id == job.id).order_by(JobUnit.id)).all()
    items = [
        UnitPublic(key=u.key, kind=u.kind, status=u.status, deps=list(u.deps or []),  # type: ignore[arg-type]
                   weight=u.weight, progress=min(max(u.progress, 0.0), 1.0), attempt=u.attempt, worker=u.worker,
                   error=u.error_message, created_at=u.created_at, started_at=u.started_at,
                   finished_at=u.finished_at)
        for u in rows
    ]
    return UnitList(items=items, counts=UnitCounts(**jobstate.unit_counts(session, job.id)))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    status_code=202,
    summary="Cancel a job",
    responses={409: PROBLEM_RESPONSES[404] | {"description": "The job already finished"}},
)
def cancel_job(ctx: Ctx, session: DB, tenant: CurrentTenant, job_id: str) -> JobPublic:
    """A queued job is cancelled at once; a running one goes to ``cancelling`` and its worker stops
    at the next step, saving its resume state. A fanned-out study sends no further unit, its running
    units stop at their next step, and it is ``cancelled`` once none runs."""
    job = get_job(session, tenant, job_id)
    if jobstate.transition(session, job, [jobstate.QUEUED], jobstate.CANCELLED, cancel_requested=True):
        jobstate.add_event(session, job, "status", "cancelled before it started", data={"status": "cancelled"})
    elif jobstate.transition(session, job, [jobstate.RUNNING], jobstate.CANCELLING, cancel_requested=True):
        jobstate.add_event(session, job, "status", "cancel requested", data={"status": "cancelling"})
    elif job.status in jobstate.TERMINAL:
        raise ApiError(409, "job_finished", f"job {job_id} already {job.status}")
    session.commit()
    ctx.job_cache.forget((tenant.id, job_id))
    return job_view(session, job)
