"""``/docs`` (Swagger UI) and ``/redoc`` load every asset from the service itself: no CDN, works offline."""

from __future__ import annotations

import re

import pytest

from tests.service.conftest import Api

#: Any absolute URL to another host in the page (scripts, styles, fonts, favicons).
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


def asset_urls(html: str) -> list[str]:
    """The ``src``/``href`` and ``url:`` values of a docs page."""
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""url:\s*'([^']+)'""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_uses_local_assets(api: Api, page: str) -> None:
    response = api.client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not EXTERNAL.search(html), f"{page} loads something from another host"
    assert not re.search(r"cdn\.|jsdelivr|unpkg|googleapis", html)
    urls = asset_urls(html)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, urls
    for url in urls:
        assert url.startswith("/"), url
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    assert "/openapi.json" in html


def test_root_redirects_to_the_dashboard(api: Api) -> None:
    response = api.client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"


def test_docs_routes_stay_out_of_the_openapi_document(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc"} & set(paths)
    assert not any(p.startswith("/static") for p in paths)
