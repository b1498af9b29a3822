"""``/healthz`` (liveness), ``/readyz`` (DB + broker reachable; the object store's state where one is set)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.db.workers import consumers
from services.gateway.deps import Ctx
from services.ops.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up (no dependency is checked). Answered on the event loop itself, so it stays
    fast while the thread pool is busy with database work."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness",
    responses={503: {"model": Health, "description": "The database or the broker is unreachable"}},
)
async def readyz(ctx: Ctx) -> JSONResponse:
    """Ready when the database answers ``SELECT 1`` and the broker accepts a connection. With
    ``MIDRE_STORAGE_URL`` it also says whether the object store's bucket answers (``checks.storage``; the API
    stays ready without it: only downloads need it, and they answer 503 meanwhile). Also says, per
    broker queue, how many live workers consume it (``queues``: 0 where a job would wait until one starts;
    the API is ready all the same)."""
    queues: dict[str, int] = {}

    def check_db() -> None:
        with ctx.sessions() as session:
            session.execute(text("SELECT 1"))
            queues.update(consumers(session, ctx.settings))

    checks: dict[str, str] = {}
    steps = [("database", check_db), ("broker", ctx.dispatcher.ping)]
    if ctx.store.remote:
        steps.append(("storage", ctx.store.check))
    for name, check in steps:
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    # The store's state is reported, not required: jobs, keys and models answer without it, and an API taken
    # out of rotation for a store outage would refuse those too (downloads answer 503 meanwhile).
    ok = all(checks[name] == "ok" for name in ("database", "broker"))
    body = Health(status="ok" if ok else "unavailable", checks=checks, queues=queues or None)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
