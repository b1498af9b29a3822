"""The FastAPI application: ``uvicorn services.gateway.app:app``.

:func:`create_app` builds an app for given settings (tests, ``midre serve``); the module-level
``app`` reads them from the environment. Creating an app touches neither the database nor the
broker; the lifespan applies migrations when ``MIDRE_AUTO_MIGRATE`` is on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from services.db.migrate import upgrade
from services.db.session import session_factory
from services.gateway.deps import AuthCache, ServiceContext
from services.gateway.docs import install_docs
from services.gateway.errors import install_error_handlers
from services.gateway.metrics import install_metrics
from services.gateway.routers import artifacts, datasets, health, jobs, models, predict
from services.serving.config import ServingSettings
from services.serving.metrics import UsageCollector
from services.serving.runtime import ServingRuntime
from services.settings import Settings, get_settings
from services.storage import LocalStore
from services.worker.dispatch import Dispatcher

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
DESCRIPTION = """\
MIDRE defense-as-a-service: upload a face dataset (or use the built-in `digits`), submit a
training job with a defense (MIDRE random erasing by default), follow its progress, download the
hardened checkpoint and the privacy-utility report.

Authenticate every `/v1` call with `Authorization: Bearer <api key>`
(keys come from `midre admin create-key --tenant NAME`). Errors are RFC 9457 problem details.
"""


def preload_library() -> None:
    """Import the parts of ``midre`` that spec validation uses (torch included: seconds, once)."""
    import importlib

    for name in ("midre.train", "midre.study"):
        try:
            importlib.import_module(name)
        except ImportError as exc:  # midre.study is optional
            log.debug("not preloading %s: %s", name, exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    ctx = ServiceContext(
        settings=settings,
        sessions=session_factory(settings.db_url),
        store=LocalStore(settings.storage_dir),
        dispatcher=Dispatcher(settings),
        auth_cache=AuthCache(settings.auth_cache_s),
    )
    serving = ServingRuntime(ServingSettings(), LocalStore(settings.storage_dir), ctx.sessions)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        if settings.auto_migrate:
            await run_in_threadpool(upgrade, settings.db_url)
        # Job specs are validated against the library: import it now, not in the first request.
        await run_in_threadpool(preload_library)
        serving.start()  # writes the query counts of unbudgeted models every MIDRE_SERVE_USAGE_FLUSH_S
        try:
            yield
        finally:
            await serving.stop()  # the last counts reach the database before the process ends
            serving.close()

    app = FastAPI(
        title="MIDRE service",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from install_docs: local assets, no CDN
        redoc_url=None,
        openapi_tags=[
            {"name": "datasets", "description": "Upload or register training data."},
            {"name": "jobs", "description": "Train / attack-evaluate / pipeline jobs."},
            {"name": "artifacts", "description": "Checkpoints, reports and plots of a job."},
            {"name": "models", "description": "Model cards."},
            {"name": "serving", "description": "Predict with a trained model; output policy, budget, export."},
            {"name": "health", "description": "Liveness and readiness."},
        ],
    )
    app.state.ctx = ctx
    app.state.serving = serving
    install_error_handlers(app)
    install_docs(app)
    registry = install_metrics(app, ctx)
    serving.register_metrics(registry)
    registry.register(UsageCollector(ctx.sessions, before=serving.flush_usage))
    for module in (health, datasets, jobs, artifacts, models, predict):
        app.include_router(module.router)
    return app


app = create_app()
