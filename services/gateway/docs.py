"""Interactive API docs that work offline: Swagger UI at ``/docs``, ReDoc at ``/redoc`` (``/`` opens the
dashboard, ``/ui/``).

FastAPI's default pages load their JavaScript and CSS from a CDN, so on an air-gapped GPU box (or
behind a strict proxy) ``/docs`` is a blank page. The assets here come from the installed
``fastapi-offline`` package (MIT; it bundles the Swagger UI and ReDoc distributions): we use only its
static files, mounted under :data:`STATIC_PREFIX`, and FastAPI's own HTML builders pointed at them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the Swagger UI / ReDoc bundles are served from (not part of the OpenAPI document).
STATIC_PREFIX = "/static/apidocs"


def static_dir() -> Path:
    """The folder with ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``, ``favicon.png``."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc``, the static assets and the ``/`` redirect to ``app``.

    The app must be created with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not
    registered first. Paths honour ``root_path`` (a reverse proxy mounting the API under a prefix).
    """
    app.mount(STATIC_PREFIX, StaticFiles(directory=static_dir()), name="apidocs-static")
    title = f"{app.title} - API docs"

    def _urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return root + (app.openapi_url or "/openapi.json"), root + STATIC_PREFIX

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi_url, static = _urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi_url, static = _urls(request)
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )
