"""The FastAPI application: ``uvicorn services.gateway.app:app``.

:func:`create_app` builds an app for given settings (tests, ``midre serve``); the module-level
``app`` reads them from the environment. Creating an app touches neither the database nor the
broker; the lifespan applies migrations when ``MIDRE_AUTO_MIGRATE`` is on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute

from services.db.migrate import upgrade
from services.db.session import session_factory
from services.gateway.about import API_VERSION, DESCRIPTION, OPENAPI_TAGS, TITLE
from services.gateway.deps import AuthCache
from services.gateway.docs import install_docs
from services.gateway.errors import install_error_handlers
from services.gateway.limits import BodyLimitMiddleware, route_limits
from services.gateway.metrics import install_metrics
from services.gateway.routers import (
    artifacts,
    audit_policies,
    datasets,
    health,
    integrations,
    jobs,
    keys,
    models,
    oip,
    predict,
    reviews,
    webhooks,
)
from services.gateway.strings import refuse_unstorable
from services.gateway.ui import install_ui
from services.integrations.webhooks import WebhookDeliverer
from services.ops.context import ServiceContext
from services.queue.dispatch import Dispatcher
from services.serving.config import ServingSettings
from services.serving.metrics import UsageCollector
from services.serving.runtime import ServingRuntime
from services.settings import Settings, get_settings
from services.storage import open_store, sweep_store
from services.ttl_cache import TTLCache

log = logging.getLogger(__name__)

def preload_library() -> None:
    """Import the library that spec validation uses (its study kinds; torch included: seconds, once)."""
    import midre.plan  # noqa: F401


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    ctx = service_context(settings)
    serving = ServingRuntime(ServingSettings(), open_store(settings), ctx.sessions)
    app = FastAPI(
        title=TITLE,
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=_lifespan(settings, serving),
        dependencies=[Depends(refuse_unstorable)],  # a NUL the database would refuse is a 422, never a 500
        docs_url=None,  # /docs and /redoc come from install_docs: local assets, no CDN
        redoc_url=None,
        openapi_tags=OPENAPI_TAGS,
    )
    app.state.ctx = ctx
    app.state.serving = serving
    install_error_handlers(app)
    install_ui(app)  # the dashboard (/ui/) and `/` -> /ui/, registered before the docs' own `/`
    install_docs(app)
    image_bytes = serving.settings.max_request_bytes  # a predict / infer body, JSON or multipart, at most this
    app.add_middleware(BodyLimitMiddleware, limit_for=route_limits(settings, image_bytes))
    _install_metrics(app, ctx, serving)
    routers = [module.router for module in ROUTERS]
    for router in routers:
        app.include_router(router)
    document_scopes(app, routers)
    return app


#: The routers in the order their operations appear in the OpenAPI document.
ROUTERS = (health, keys, datasets, jobs, reviews, artifacts, models, audit_policies, predict, oip, webhooks,
           integrations)


def service_context(settings: Settings) -> ServiceContext:
    """What every request reaches through ``Ctx``: settings, sessions, store, dispatcher, caches.

    Building it touches neither the database nor the broker (they connect on first use).
    """
    return ServiceContext(
        settings=settings,
        sessions=session_factory(settings.db_url, settings.pool),
        store=open_store(settings),
        dispatcher=Dispatcher(settings),
        auth_cache=AuthCache(settings.auth_cache_s),
        job_cache=TTLCache(settings.job_cache_s),
    )


def _lifespan(settings: Settings, serving: ServingRuntime) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down of one API process: migrations (when ``MIDRE_AUTO_MIGRATE``), the store's
    orphans swept, the library preload, the serving runtime's usage flusher and, with
    ``MIDRE_WEBHOOKS_IN_API``, an outbox deliverer."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        if settings.auto_migrate:
            await run_in_threadpool(upgrade, settings.db_url)
        # What a killed process left in the store (partial uploads, orphan blobs) goes before serving.
        await run_in_threadpool(sweep_store, settings, session_factory(settings.db_url, settings.pool), True)
        # Job specs are validated against the library: import it now, not in the first request.
        await run_in_threadpool(preload_library)
        serving.start()  # writes the query counts of unbudgeted models every MIDRE_SERVE_USAGE_FLUSH_S
        deliverer = WebhookDeliverer(settings) if settings.webhooks_in_api else None
        if deliverer is not None:
            deliverer.start()  # sends the webhook outbox (workers run one too; claims are race-safe)
        try:
            yield
        finally:
            if deliverer is not None:
                await run_in_threadpool(deliverer.stop)
            await serving.stop()  # the last counts reach the database before the process ends
            serving.close()

    return lifespan


def _install_metrics(app: FastAPI, ctx: ServiceContext, serving: ServingRuntime) -> None:
    """``/metrics`` with the request, serving and per-tenant usage collectors."""
    registries = install_metrics(app, ctx)
    serving.register_metrics(registries.aggregate, registries.tenant)
    registries.tenant.register(UsageCollector(ctx.sessions, before=serving.flush_usage))


def _required_scope(dependant: Any) -> str | None:
    for dep in dependant.dependencies:
        scope = getattr(dep.call, "scope", None) or _required_scope(dep)
        if scope:
            return scope
    return None


def document_scopes(app: FastAPI, routers: list[APIRouter]) -> None:
    """Say in the app's own OpenAPI document which scope each operation needs.

    The bearer scheme itself comes from the :data:`services.gateway.deps.bearer` dependency; this adds
    ``x-required-scope`` and a sentence to each operation's description, so a client or fuzzer built
    from ``/openapi.json`` knows both that it needs a key and which one.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        for route in (r for router in routers for r in router.routes):
            if not isinstance(route, APIRoute):
                continue
            scope = _required_scope(route.dependant)
            if scope is None:
                continue
            item = doc.get("paths", {}).get(route.path_format, {})
            for method in route.methods:
                operation = item.get(method.lower())
                if operation is None:
                    continue
                operation["x-required-scope"] = scope
                note = f"Needs an API key with the `{scope}` scope (`admin` keys have every scope)."
                operation["description"] = f"{operation.get('description', '').rstrip()}\n\n{note}".lstrip()
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
