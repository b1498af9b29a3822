"""The browser dashboard under ``/ui/``: sign in with an API key, follow jobs, read reports, manage
served models and datasets. Server-rendered Jinja2 templates and a small script, all shipped in this
package (no build step, no CDN, no external font). See ``docs/dashboard.md``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from services.gateway.ui.pages import router
from services.gateway.ui.policy_pages import router as policy_router
from services.gateway.ui.review_pages import router as review_router
from services.gateway.ui.templating import STATIC

#: Where the dashboard's CSS and script are served from.
STATIC_PREFIX = "/ui/static"


def install_ui(app: FastAPI) -> None:
    """Add the dashboard's pages, its static files and the ``/`` -> ``/ui/`` redirect to ``app``.

    Call it before anything else registers ``/`` (the first matching route answers).
    """
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC), name="ui-static")
    app.include_router(router)
    app.include_router(review_router)
    app.include_router(policy_router)

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + "/ui/", status_code=303)


__all__ = ["STATIC_PREFIX", "install_ui"]
