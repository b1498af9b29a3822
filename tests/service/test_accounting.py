"""Query budgets across replicas: a budget set or lowered on one API replica binds the others at once
for every database charge, and within ``MIDRE_SERVE_USAGE_LEASE`` queries per key for a model a
replica still believes unbudgeted. Two apps on one database are two replicas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save

from midre.models import create_model
from services.db.session import dispose_all
from services.gateway.app import create_app
from tests.service._support import png_bytes
from tests.service.conftest import Api, PgDatabases, make_settings

LEASE = 3


@contextmanager
def two_replicas(database_url: str | None, home: Path) -> Iterator[tuple[Api, Api]]:
    overrides = {"database_url": database_url} if database_url else {}
    settings = make_settings(home, **overrides)
    with TestClient(create_app(settings), raise_server_exceptions=False) as one, \
            TestClient(create_app(settings), raise_server_exceptions=False) as two:
        yield Api(settings, one), Api(settings, two)
    dispose_all()


def accepted(api: Api, key: str, model_id: str, requests: int) -> int:
    """Send ``requests`` one-image predictions; how many were answered (the others must be 429)."""
    ok = 0
    for i in range(requests):
        r = api.client.post(f"/v1/models/{model_id}/predict", files={"files": ("a.png", png_bytes(i))},
                            headers=api.auth(key))
        assert r.status_code in (200, 429), r.text
        ok += r.status_code == 200
    return ok


def set_budget(api: Api, key: str, model_id: str, budget: int) -> None:
    r = api.client.patch(f"/v1/models/{model_id}/policy", json={"budget": budget}, headers=api.auth(key))
    assert r.status_code == 200, r.text


def check_budgets_across_replicas(one: Api, two: Api) -> None:
    key = one.key("t")
    weights = save(create_model("cnn-small", 2, image_size=16, in_channels=1).state_dict())
    card = '{"arch": "cnn-small", "num_classes": 2, "image_size": 16, "channels": 1}'
    r = one.client.post("/v1/models", files={"file": ("w.safetensors", weights)}, data={"card": card},
                        headers=one.auth(key))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]

    # No budget: replica one counts in memory. Replica two sets one of 10 while one still believes
    # the model unbudgeted: one serves at most LEASE more before its exact database charge refuses.
    served = accepted(one, key, model_id, 5)
    set_budget(two, key, model_id, 10)
    served += accepted(one, key, model_id, 20)
    assert 10 <= served <= 10 + LEASE, served
    usage = two.client.get(f"/v1/models/{model_id}/policy", headers=two.auth(key)).json()
    assert sum(u["queries"] for u in usage["usage"]) == served  # every served query is counted

    # A budget lowered on replica two binds replica one at once, although one caches the old one.
    set_budget(one, key, model_id, served + 10)  # one now knows the model is budgeted
    assert accepted(one, key, model_id, 2) == 2
    set_budget(two, key, model_id, served + 5)
    assert accepted(one, key, model_id, 10) == 3  # exactly up to the new budget, not the cached one


def test_budgets_across_replicas_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDRE_SERVE_USAGE_LEASE", str(LEASE))
    with two_replicas(None, tmp_path / "home") as (one, two):
        check_budgets_across_replicas(one, two)


@pytest.mark.service
def test_budgets_across_replicas_on_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_databases: PgDatabases
) -> None:
    monkeypatch.setenv("MIDRE_SERVE_USAGE_LEASE", str(LEASE))
    with two_replicas(pg_databases.create(), tmp_path / "home") as (one, two):
        check_budgets_across_replicas(one, two)
