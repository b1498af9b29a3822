"""``/v1/jobs``: submit, list, inspect, follow events and units, cancel (over :mod:`services.ops.jobs`)."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.responses import JSONResponse

from services.gateway.deps import DB, Ctx, CurrentTenant, scoped
from services.gateway.errors import PROBLEM_RESPONSES
from services.jobspec import MAX_INT64
from services.ops import jobs as ops
from services.ops.schemas import DryRun, EventPage, JobPage, JobPublic, JobSpec, UnitCounts, UnitList, UnitPublic
from services.ops.views import event_view, job_view, metrics_of

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=PROBLEM_RESPONSES, dependencies=scoped("jobs"))

StatusFilter = Annotated[str | None, Query(description="Only jobs in this status.")]


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    summary="Submit a job",
    responses={200: {"model": JobPublic | DryRun,
                      "description": "Replay of an earlier request (Idempotency-Key), or a dry run's answer"}},
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
    dry_run: Annotated[bool, Query(description="Check the spec and estimate its cost; store and queue nothing "
                                               "(200 with `resolved` and `estimate`).")] = False,
) -> JobPublic | JSONResponse:
    """Check the spec (unknown keys, ranges, ids you own, then the library's own checks: architecture
    and input size, defense parameters, attack names and options, public data the attacks need),
    store the job with its resolved config, then queue it (after the commit). A refused spec is a 422
    naming the field; nothing is stored. With `dry_run=true` the same checks run and the answer is what
    would run and what it would cost (every judge, prior, target and attack run, from a short calibration
    on the job's shapes); nothing is stored."""
    if dry_run:
        return JSONResponse(ops.dry_run(session, ctx.settings, tenant,
                                        spec.model_dump(mode="json", exclude_none=False)))
    job, replayed = ops.submit(session, ctx.settings, ctx.dispatcher, tenant,
                               spec.model_dump(mode="json", exclude_none=False), idempotency_key)
    if replayed:
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
    rows, next_cursor = ops.list_jobs(session, tenant, status, kind, cursor, limit)
    metrics = metrics_of(session, [job.id for job in rows])
    return JobPage(items=[job_view(session, job, metrics[job.id]) for job in rows], next_cursor=next_cursor)


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
            body = job_view(session, ops.get_job(session, tenant, job_id)).model_dump_json().encode()
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
    rows, next_cursor = ops.list_events(session, tenant, job_id, after, limit)
    return EventPage(items=[event_view(e) for e in rows], next_cursor=next_cursor)


@router.get("/{job_id}/units", response_model=UnitList, summary="A job's units")
def list_units(session: DB, tenant: CurrentTenant, job_id: str) -> UnitList:
    """The graph of units a job runs as, spread over the workers: a train job's one unit; a study's
    evaluation models, priors, targets, attack runs, search steps and report; each with its status,
    dependencies, attempts and worker. Empty while the job is queued (not planned yet)."""
    rows, counts = ops.list_units(session, tenant, job_id)
    items = [
        UnitPublic(key=u.key, kind=u.kind, status=u.status, deps=list(u.deps or []),  # type: ignore[arg-type]
                   weight=u.weight, progress=min(max(u.progress, 0.0), 1.0), attempt=u.attempt, worker=u.worker,
                   error=u.error_message, created_at=u.created_at, started_at=u.started_at,
                   finished_at=u.finished_at)
        for u in rows
    ]
    return UnitList(items=items, counts=UnitCounts(**counts))


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
    job = ops.cancel(session, tenant, job_id)
    ctx.job_cache.forget((tenant.id, job_id))
    return job_view(session, job)
