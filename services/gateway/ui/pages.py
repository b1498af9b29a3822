"""The dashboard's routes under ``/ui/``: server-rendered pages over the application layer.

Every page calls the same functions the ``/v1`` routes call (:mod:`services.ops`: ``jobs.list_jobs``,
``serving.predict_images``, ``datasets.store_upload``...), with the caller the session's API key makes,
so tenancy, scopes, validation and quotas are the API's, not a copy. An
:class:`~services.ops.errors.ApiError` becomes an HTML page with the same status code.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from services.db import jobs as jobstate
from services.gateway.deps import DB, Ctx, Runtime, require_scope
from services.gateway.downloads import download_response, send_artifact
from services.gateway.errors import ApiError, FieldError
from services.gateway.images import read_images
from services.gateway.ui import reports
from services.gateway.ui.sessions import COOKIE, UiUser, csrf_ok, current, sign_in, sign_out
from services.gateway.ui.templating import templates
from services.gateway.uploads import receive_file
from services.jobspec import kind_names, kinds, names_where
from services.ops import artifacts as ops_artifacts
from services.ops import datasets as ops_datasets
from services.ops import jobs as ops_jobs
from services.ops import models as ops_models
from services.ops import reviews as ops_reviews
from services.ops import serving as ops_serving
from services.ops.context import ServiceContext
from services.ops.schemas import DatasetRef, JobSpec
from services.ops.views import artifact_view, dataset_view, event_view, job_view, metrics_of
from services.serving.runtime import ServingRuntime
from services.serving.schemas import PolicyUpdate

#: Pages: scripts, styles and images only from this origin (no inline code), never framed.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'")
#: A study's own ``report.html`` (images inline as data: URLs, its own <style>): no script, sandboxed.
REPORT_HTML_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox; frame-ancestors 'self'"
#: Downloads: nothing in them may run if a browser renders one.
DOWNLOAD_CSP = "default-src 'none'; img-src 'self'; sandbox"
#: Seconds between two reads of a followed job (Server-Sent Events) and between keep-alive comments.
STREAM_POLL_S = 1.0
STREAM_KEEPALIVE_S = 15.0
#: A stream closes after this long and the browser reconnects (``retry``, resuming by ``Last-Event-ID``),
#: so an open job page never holds a connection that would delay the server's graceful shutdown long.
STREAM_MAX_S = 30.0
STREAM_RETRY_MS = 1000

#: The new-job form's starting points: each kind's example spec (``services.jobspec``).
SPEC_EXAMPLES: dict[str, dict[str, Any]] = {k.name: k.example for k in kinds() if k.example is not None}
_SPEC = TypeAdapter(JobSpec)


class SignInRequired(Exception):
    """No valid session: the page answers 303 to the sign-in form."""


def _security_headers(response: Response, csp: str = PAGE_CSP) -> Response:
    response.headers.setdefault("Content-Security-Policy", csp)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    if response.media_type in (None, "text/html", "application/json", "text/event-stream"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _next_target(request: Request) -> str:
    """Where to come back after signing in: this page, when it is a dashboard page."""
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return path if request.method == "GET" and path.startswith("/ui/") else "/ui/"


class UiRoute(APIRoute):
    """Routes that answer HTML: errors become pages, a missing session a redirect, and every
    answer carries the dashboard's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = RedirectResponse(f"/ui/login?next={_quote(_next_target(request))}", status_code=303)
            except ApiError as exc:
                response = error_page(request, exc.status, exc.detail or exc.code, exc.errors, exc.headers)
            except RequestValidationError as exc:
                errors = [FieldError(field=".".join(str(p) for p in e.get("loc", ())[1:]) or "form",
                                     message=str(e.get("msg"))) for e in exc.errors()]
                response = error_page(request, 422, "the form has invalid fields", errors)
            csp = REPORT_HTML_CSP if request.url.path.endswith("/report.html") else (
                DOWNLOAD_CSP if isinstance(response, FileResponse) else PAGE_CSP)
            return _security_headers(response, csp)

        return route


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="/")


router = APIRouter(prefix="/ui", include_in_schema=False, route_class=UiRoute)


def error_page(
    request: Request,
    status: int,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """An HTML error page with the status of the API error it stands for."""
    user = getattr(request.state, "ui_user", None)
    titles = {400: "Bad request", 401: "Not signed in", 403: "Forbidden", 404: "Not found", 409: "Conflict",
              413: "Too large", 415: "Unsupported file", 422: "Invalid input", 429: "Limit reached"}
    extra = {k: v for k, v in (headers or {}).items() if k.lower() == "retry-after"}
    return templates.TemplateResponse(
        request, "error.html",
        {"user": user, "status": status, "title": titles.get(status, "Error"), "detail": detail,
         "errors": errors or []},
        status_code=status, headers=extra,
    )


# --- session, scopes and CSRF ------------------------------------------------------------------


def _same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site (``Sec-Fetch-Site`` / ``Origin``)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc == request.headers.get("host", request.url.netloc)
    return origin != "null"


async def current_user(request: Request, ctx: Ctx) -> UiUser:
    """The signed-in user of the session cookie; :class:`SignInRequired` without a valid one."""
    token = request.cookies.get(COOKIE, "")
    if not token:
        raise SignInRequired

    def lookup() -> UiUser | None:
        with ctx.sessions() as session:
            return current(session, token)

    user = await run_in_threadpool(lookup)
    if user is None:
        raise SignInRequired
    request.state.ui_user = user
    return user


def scoped_user(scope: str) -> Callable[..., Coroutine[Any, Any, UiUser]]:
    """A dependency: the signed-in user, checked by the API's own scope rule (403 page otherwise)."""
    check = require_scope(scope)

    async def dependency(user: Annotated[UiUser, Depends(current_user)]) -> UiUser:
        await check(user.caller)
        return user

    return dependency


User = Annotated[UiUser, Depends(current_user)]
JobsUser = Annotated[UiUser, Depends(scoped_user("jobs"))]
PredictUser = Annotated[UiUser, Depends(scoped_user("predict"))]


def check_form(request: Request, user: UiUser, sent: object) -> None:
    """403 unless the form carries the sign-in's CSRF token and comes from this site."""
    if not _same_origin(request):
        raise ApiError(403, "cross_site", "this form was sent from another site")
    if not csrf_ok(user, sent):
        raise ApiError(403, "csrf", "the form's CSRF token is missing or wrong: reload the page and try again")


def page(request: Request, name: str, user: UiUser | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render template ``name`` for ``user``."""
    return templates.TemplateResponse(request, name, {"user": user, **context}, status_code=status_code)


# --- sign-in ---------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only dashboard paths of this site (no ``//host`` or scheme): no open redirect."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


@router.get("/")
async def home(request: Request, user: User) -> RedirectResponse:
    """The jobs list; the models list for a key that may only predict; a reviewer's review sessions."""
    target = "/ui/jobs" if user.can("jobs") else "/ui/models" if user.can("predict") else "/ui/reviews"
    return RedirectResponse(target, status_code=303)


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return page(request, "login.html", None, next=_safe_next(next))


@router.post("/login")
def login(
    request: Request, ctx: Ctx, session: DB, key: Annotated[str, Form(max_length=500)] = "",
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    """Exchange an API key for a session cookie (HttpOnly, SameSite=Strict; Secure over https)."""
    if not _same_origin(request):
        raise ApiError(403, "cross_site", "this form was sent from another site")
    token = sign_in(session, key, ctx.settings.ui_session_hours) if key.strip() else None
    if token is None:
        return page(request, "login.html", None, status_code=401, next=_safe_next(next),
                    error="That API key is not valid (or was revoked).")
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE, token, max_age=int(ctx.settings.ui_session_hours * 3600), path="/ui", httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(request: Request, session: DB, user: User, csrf: Annotated[str, Form()] = "") -> Response:
    check_form(request, user, csrf)
    sign_out(session, user)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


# --- jobs ------------------------------------------------------------------------------------------


@router.get("/jobs")
def jobs_page(
    request: Request, ctx: Ctx, session: DB, user: JobsUser,
    status: str | None = None, kind: str | None = None, cursor: str | None = None,
) -> HTMLResponse:
    """The tenant's jobs, newest first, filtered by status and kind."""
    status, kind = status or None, kind or None
    rows, next_cursor = ops_jobs.list_jobs(session, user.caller.tenant, status, kind, cursor, 50)
    metrics = metrics_of(session, [job.id for job in rows])
    return page(request, "jobs.html", user, jobs=[job_view(session, job, metrics[job.id]) for job in rows],
                next_cursor=next_cursor, status=status, kind=kind, statuses=jobstate.STATUSES, kinds=kind_names(),
                study_kinds=names_where(lambda k: k.report))


@router.get("/jobs/new")
def new_job_form(request: Request, user: JobsUser, example: str = "") -> HTMLResponse:
    spec = SPEC_EXAMPLES.get(example, next(iter(SPEC_EXAMPLES.values())))
    return page(request, "job_new.html", user, spec=json.dumps(spec, indent=2), examples=SPEC_EXAMPLES,
                examples_json=json.dumps({k: json.dumps(v, indent=2) for k, v in SPEC_EXAMPLES.items()}),
                example=example, idem=secrets.token_urlsafe(16))


@router.post("/jobs")
def submit(
    request: Request, ctx: Ctx, session: DB, user: JobsUser,
    spec: Annotated[str, Form(max_length=200_000)] = "", csrf: Annotated[str, Form()] = "",
    idempotency_key: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    """Submit the JSON spec of the form, exactly as ``POST /v1/jobs`` would."""
    check_form(request, user, csrf)
    errors: list[FieldError] = []
    try:
        parsed = _SPEC.validate_python(json.loads(spec or "null"))
        job, _ = ops_jobs.submit(session, ctx.settings, ctx.dispatcher, user.caller.tenant,
                                 parsed.model_dump(mode="json", exclude_none=False), idempotency_key)
    except json.JSONDecodeError as exc:
        errors = [FieldError(field="spec", message=f"not JSON: {exc.msg} (line {exc.lineno})")]
    except ValidationError as exc:
        from services.gateway.errors import _error_field

        errors = [FieldError(field=_error_field({**e, "loc": ("body", *e["loc"])}), message=e["msg"])
                  for e in exc.errors()]
    except ApiError as exc:
        if exc.status != 422:
            raise
        errors = exc.errors or [FieldError(field="spec", message=exc.detail or exc.code)]
    else:
        return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)
    return page(request, "job_new.html", user, status_code=422, spec=spec, errors=errors, examples=SPEC_EXAMPLES,
                examples_json=json.dumps({k: json.dumps(v, indent=2) for k, v in SPEC_EXAMPLES.items()}),
                example="", idem=secrets.token_urlsafe(16))


def _events(session: Session, user: UiUser, job_id: str, after: int | None, limit: int = 200) -> list[Any]:
    return [event_view(e) for e in ops_jobs.list_events(session, user.caller.tenant, job_id, after, limit)[0]]


@router.get("/jobs/{job_id}")
def job_page(request: Request, ctx: Ctx, session: DB, user: JobsUser, job_id: str) -> HTMLResponse:
    """Status and live progress, events, resolved spec, metrics, artifacts, cancel."""
    job = ops_jobs.get_job(session, user.caller.tenant, job_id)
    view = job_view(session, job)
    events = _events(session, user, job_id, None, 1000)
    arts = [artifact_view(a) for a in ops_artifacts.list_artifacts(session, user.caller.tenant, job_id)]
    units, _ = ops_jobs.list_units(session, user.caller.tenant, job_id)
    reviewable = any(a.name == "review.safetensors" for a in arts) and view.status == jobstate.SUCCEEDED
    return page(request, "job.html", user, job=view, events=events, artifacts=arts, units=units,
                terminal=view.status in jobstate.TERMINAL, has_report=any(a.name == "report.json" for a in arts),
                last_event=events[-1].id if events else 0, reviewable=reviewable,
                reviews=ops_reviews.job_sessions(session, user.caller.tenant, job_id) if reviewable else [],
                review_keys=ops_reviews.review_keys(session, user.caller.tenant) if reviewable else [])


def _state(ctx: ServiceContext, user: UiUser, job_id: str, after: int | None) -> dict[str, Any]:
    with ctx.sessions() as session:
        job = ops_jobs.get_job(session, user.caller.tenant, job_id)
        view = job_view(session, job)
        events = _events(session, user, job_id, after)
    return {
        "job": {"id": view.id, "status": view.status, "progress": view.progress, "stage": view.stage,
                "message": view.message, "terminal": view.status in jobstate.TERMINAL,
                "error": view.error.model_dump() if view.error else None},
        "events": [e.model_dump(mode="json") for e in events],
        "next": events[-1].id if events else after,
    }


@router.get("/jobs/{job_id}/state")
async def job_state(ctx: Ctx, user: JobsUser, job_id: str, after: int | None = None) -> JSONResponse:
    """The polling fallback of the live job page: status, progress and the events after ``after``."""
    return JSONResponse(await run_in_threadpool(_state, ctx, user, job_id, after))


@router.get("/jobs/{job_id}/stream")
async def job_stream(request: Request, ctx: Ctx, user: JobsUser, job_id: str, after: int | None = None) -> Response:
    """Server-Sent Events: ``job`` (status and progress) when it changes, ``log`` per new event,
    ``end`` once the job has finished. ``Last-Event-ID`` resumes after a reconnect."""
    last_id = request.headers.get("last-event-id", "")
    start = int(last_id) if last_id.isdigit() else after
    first = await run_in_threadpool(_state, ctx, user, job_id, start)  # 404 page before the stream starts

    async def events() -> AsyncIterator[str]:
        state, idle, elapsed = first, 0.0, 0.0
        previous = None
        yield f"retry: {STREAM_RETRY_MS}\n\n"
        while True:
            for event in state["events"]:
                yield f"id: {event['id']}\nevent: log\ndata: {json.dumps(event)}\n\n"
            if state["job"] != previous:
                previous = state["job"]
                yield f"event: job\ndata: {json.dumps(previous)}\n\n"
            if previous["terminal"] and not state["events"]:
                yield "event: end\ndata: {}\n\n"
                return
            if elapsed >= STREAM_MAX_S:
                return  # the browser reconnects after STREAM_RETRY_MS and resumes after the last event
            await asyncio.sleep(STREAM_POLL_S)
            idle += STREAM_POLL_S
            elapsed += STREAM_POLL_S
            if idle >= STREAM_KEEPALIVE_S:
                idle = 0.0
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return
            state = await run_in_threadpool(_state, ctx, user, job_id, state["next"])

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, ctx: Ctx, session: DB, user: JobsUser, job_id: str,
           csrf: Annotated[str, Form()] = "") -> Response:
    """``POST /v1/jobs/{id}/cancel`` from the job page's form."""
    check_form(request, user, csrf)
    ops_jobs.cancel(session, user.caller.tenant, job_id)
    ctx.job_cache.forget((user.caller.tenant.id, job_id))
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}/artifacts/{name:path}")
def download(ctx: Ctx, session: DB, user: JobsUser, job_id: str, name: str) -> Response:
    """An artifact's bytes (the API's download: sha256 in ``ETag`` and ``Repr-Digest``)."""
    artifact = ops_artifacts.find_artifact(session, user.caller.tenant, job_id, name)
    return send_artifact(ctx, artifact, lambda: ops_artifacts.artifact_file(ctx, artifact))


# --- reports ---------------------------------------------------------------------------------------


def _report(ctx: ServiceContext, session: Session, user: UiUser, job_id: str) -> reports.ReportView:
    job = ops_jobs.get_job(session, user.caller.tenant, job_id)
    view = reports.load_report(session, ctx.store, job)
    if view is None:
        raise ApiError(404, "no_report", f"job {job_id} has no report (yet): it is a {job.kind} job, {job.status}")
    return view


@router.get("/jobs/{job_id}/report")
def report_page(request: Request, ctx: Ctx, session: DB, user: JobsUser, job_id: str) -> HTMLResponse:
    """The study's privacy-utility report, rendered from ``report.json`` and its plot artifacts."""
    view = _report(ctx, session, user, job_id)
    return page(request, "report.html", user, r=view.report, view=view, image_src=view.image_src, hl=2,
                prefix="r")


@router.get("/jobs/{job_id}/report.html")
def report_html(ctx: Ctx, session: DB, user: JobsUser, job_id: str) -> FileResponse:
    """The study's own ``report.html``, inline, under a CSP that sandboxes it (no script runs)."""
    artifact, path = ops_artifacts.stored_file(ctx, session, user.caller.tenant, job_id, "report.html")
    response = download_response(artifact, path)
    response.headers["content-disposition"] = "inline"
    return response


@router.get("/compare")
def compare_page(
    request: Request, ctx: Ctx, session: DB, user: JobsUser, a: str | None = None, b: str | None = None
) -> HTMLResponse:
    """Two studies side by side: verdicts, Acc / AttAcc per attack and defense with B - A, plots."""
    views = (_report(ctx, session, user, a), _report(ctx, session, user, b)) if a and b else None
    studies = ops_artifacts.jobs_with(session, user.caller.tenant, "report.json")
    return page(request, "compare.html", user, studies=studies, a=a, b=b, views=views,
                rows=reports.compare_rows(*views) if views else [])


# --- models ----------------------------------------------------------------------------------------


def _attacc(metrics: dict[str, float], evaluations: list[dict[str, Any]]) -> dict[str, float]:
    """AttAcc top-1 per attack: the model's audits (newest first), then a study's own numbers."""
    out: dict[str, float] = {}
    for ev in evaluations:
        if isinstance(ev.get("attacc_top1"), int | float):
            out.setdefault(ev["attack"], ev["attacc_top1"])
    for name, value in sorted(metrics.items()):
        # ``<attack>.attacc_top1``, or a study's ``<defense label>.<attack>.attacc_top1`` (labels such as
        # ``midre-a_h0.4`` hold dots; the undefended baseline is not this model)
        parts = name.split(".")
        if len(parts) >= 2 and parts[-1] == "attacc_top1" and not name.startswith("nodef."):
            out.setdefault(parts[-2], value)
    return out


def _acc(metrics: dict[str, float], evaluations: list[dict[str, Any]]) -> float | None:
    """The model's Acc: its own, a study's defended target's, else as its newest audit measured it (a model
    trained elsewhere)."""
    if "acc" in metrics:
        return metrics["acc"]
    own = next((v for k, v in sorted(metrics.items()) if k.endswith(".acc") and not k.startswith("nodef.")), None)
    return own if own is not None else next((ev["acc"] for ev in evaluations
                                             if isinstance(ev.get("acc"), int | float)), None)


@router.get("/models")
def models_page(request: Request, ctx: Ctx, rt: Runtime, session: DB, user: PredictUser) -> HTMLResponse:
    """Servable models: origin, defense, Acc and AttAcc per attack, output policy."""
    listing = ops_serving.list_models(session, rt, user.caller, None, 200)
    rows = []
    for m in listing.items:
        evaluations = (ops_models.evaluations_of(session, user.caller.tenant, m.job_id, ctx.store)
                       if user.can("jobs") else [])
        rows.append({"model": m, "acc": _acc(m.metrics, evaluations), "attacc": _attacc(m.metrics, evaluations)})
    attacks = sorted({a for row in rows for a in row["attacc"]})
    return page(request, "models.html", user, rows=rows, attacks=attacks)


def _model_context(ctx: ServiceContext, rt: ServingRuntime, user: UiUser, job_id: str) -> dict[str, Any]:
    with ctx.sessions() as session:
        listing = ops_serving.list_models(session, rt, user.caller, None, 200)
        served = next((m for m in listing.items if m.job_id == job_id), None)
        if served is None:
            ops_jobs.get_job(session, user.caller.tenant, job_id)  # 404 for someone else's or a missing id
            raise ApiError(404, "not_found", f"model {job_id!r} was not found")
        card = policy = None
        evaluations: list[dict[str, Any]] = []
        if user.can("jobs"):
            card = ops_models.model_card(ctx, session, user.caller.tenant, job_id)
            policy = ops_serving.get_policy(session, rt, user.caller.tenant, job_id)
            evaluations = card.evaluations
        return {"m": served, "card": card, "policy": policy, "evaluations": evaluations,
                "card_json": json.dumps(card.card, indent=2, default=str) if card else None,
                "acc": _acc(served.metrics, evaluations), "attacc": _attacc(served.metrics, evaluations)}


@router.get("/models/{job_id}")
async def model_page(request: Request, ctx: Ctx, rt: Runtime, user: PredictUser, job_id: str) -> HTMLResponse:
    """A model's card, output policy and budget, per-key usage and a "try it" upload."""
    context = await run_in_threadpool(_model_context, ctx, rt, user, job_id)
    return page(request, "model.html", user, **context)


@router.post("/models/{job_id}/policy")
def set_policy(
    request: Request, rt: Runtime, session: DB, user: JobsUser, job_id: str,
    csrf: Annotated[str, Form()] = "", policy: Annotated[str, Form()] = "full",
    top_k: Annotated[str, Form(max_length=20)] = "", decimals: Annotated[str, Form(max_length=20)] = "",
    strength: Annotated[str, Form(max_length=20)] = "",
    budget: Annotated[str, Form(max_length=20)] = "", reset_usage: Annotated[str | None, Form()] = None,
) -> Response:
    """Replace the output policy and budget (``PUT /v1/models/{id}/policy``); empty fields: none."""
    check_form(request, user, csrf)
    values = {"policy": policy, "top_k": top_k.strip() or None, "decimals": decimals.strip() or None,
              "strength": strength.strip() or None, "budget": budget.strip() or None,
              "reset_usage": reset_usage is not None}
    try:
        body = PolicyUpdate.model_validate(values)
    except ValidationError as exc:
        errors = [FieldError(field=".".join(str(p) for p in e["loc"]) or "policy", message=e["msg"])
                  for e in exc.errors()]
        raise ApiError(422, "validation_error", "; ".join(f"{e.field}: {e.message}" for e in errors),
                       errors=errors) from exc
    ops_serving.put_policy(session, rt, user.caller.tenant, job_id, body)
    return RedirectResponse(f"/ui/models/{job_id}#policy", status_code=303)


@router.post("/models/{job_id}/try")
async def try_model(request: Request, ctx: Ctx, rt: Runtime, user: PredictUser, job_id: str) -> HTMLResponse:
    """Run uploaded images through the model exactly as ``POST /v1/models/{id}/predict`` does (the
    output policy applies and each image counts against this key's budget)."""
    form = await request.form(max_files=rt.settings.max_images + 1)
    check_form(request, user, form.get("csrf"))
    images, top_k = await read_images(request, rt)
    answer = await ops_serving.predict_images(ctx, rt, user.caller, job_id, images, top_k)
    context = await run_in_threadpool(_model_context, ctx, rt, user, job_id)
    return page(request, "model.html", user, answer=answer, **context)


# --- datasets --------------------------------------------------------------------------------------


@router.get("/datasets")
def datasets_page(request: Request, session: DB, user: JobsUser) -> HTMLResponse:
    rows, _ = ops_datasets.list_datasets(session, user.caller.tenant, None, 200)
    return page(request, "datasets.html", user, datasets=[dataset_view(d) for d in rows])


@router.post("/datasets")
async def upload_dataset(request: Request, ctx: Ctx, user: JobsUser) -> Response:
    """Upload an archive: the API's streaming, size caps, safe extraction and validation report."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send the upload form (multipart/form-data)")
    # The token is checked when the file part starts (the form sends it first), before the file is read.
    upload = await receive_file(request, ctx.store.upload_dir(user.caller.tenant.id), ctx.settings.max_upload_bytes,
                                on_file=lambda fields: check_form(request, user, fields.get("csrf")))
    dataset = await ops_datasets.store_upload(ctx, user.caller.tenant, upload)
    return RedirectResponse(f"/ui/datasets/{dataset.id}", status_code=303)


@router.post("/datasets/register")
async def register_dataset(
    request: Request, ctx: Ctx, user: JobsUser, csrf: Annotated[str, Form()] = "",
    name: Annotated[str, Form(max_length=200)] = "digits",
) -> Response:
    """Register the built-in ``digits`` data set under a name."""
    check_form(request, user, csrf)
    dataset = await ops_datasets.register(ctx, user.caller.tenant, DatasetRef(name=name or "digits", source="digits"))
    return RedirectResponse(f"/ui/datasets/{dataset.id}", status_code=303)


@router.get("/datasets/{dataset_id}")
def dataset_page(request: Request, session: DB, user: JobsUser, dataset_id: str) -> HTMLResponse:
    """One dataset and its validation report (identities, images, rejected files)."""
    dataset = ops_datasets.get_dataset(session, user.caller.tenant, dataset_id)
    return page(request, "dataset.html", user, d=dataset_view(dataset))


@router.post("/datasets/{dataset_id}/delete")
def delete_dataset(request: Request, ctx: Ctx, session: DB, user: JobsUser, dataset_id: str,
                   csrf: Annotated[str, Form()] = "") -> Response:
    check_form(request, user, csrf)
    ops_datasets.delete_dataset(ctx, session, user.caller.tenant, dataset_id)
    return RedirectResponse("/ui/datasets", status_code=303)
