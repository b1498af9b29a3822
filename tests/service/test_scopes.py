"""Scoped API keys on the embedded service (SQLite, no servers): every route x every scope, what a
``predict`` key handed to a model's consumer can and cannot do, key minting and revocation, and
policy updates that change only what they name.

The served model is trained for real by the worker's own engine and library, in this process
(``run_job_inline``): a tiny ``cnn-small`` on digits.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from PIL import Image

from tests.service._support import TRAIN_SPEC, run_job_inline
from tests.service.conftest import Api

SCOPE_ORDER = ("admin", "jobs", "predict", "review")


@pytest.fixture
def model_id(api: Api, key_a: str) -> str:
    """A succeeded train job of tenant-a (1 epoch, 16 px digits), trained by the worker's handlers."""
    spec = {**TRAIN_SPEC, "device": "cpu", "training": {**TRAIN_SPEC["training"], "epochs": 1},
            "data": {"max_images_per_identity": 20}}
    r = api.client.post("/v1/jobs", json=spec, headers=api.auth(key_a))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert run_job_inline(api.settings, job_id) == "succeeded"
    return job_id


def mint(api: Api, admin_key: str, **body: Any) -> dict[str, Any]:
    r = api.client.post("/v1/keys", json={"name": "consumer", **body}, headers=api.auth(admin_key))
    assert r.status_code == 201, r.text
    return r.json()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format="PNG")
    return buf.getvalue()


def predict(api: Api, key: str, model: str, n: int = 1) -> Any:
    files = [("files", (f"x{i}.png", png(), "image/png")) for i in range(n)]
    return api.client.post(f"/v1/models/{model}/predict", files=files, headers=api.auth(key))


def assert_forbidden(r: Any) -> None:
    assert r.status_code == 403, (r.status_code, r.text)
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert body["code"] == "forbidden" and body["status"] == 403
    assert "scope" in body["detail"] or "may not use model" in body["detail"]


def operations(api: Api) -> list[tuple[str, str, str]]:
    """(method, path, required scope) of every authenticated operation, from the app's own OpenAPI."""
    doc = api.client.get("/openapi.json").json()
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1/"):
                assert op.get("security") == [{"bearerAuth": []}], (method, path)
                assert op.get("x-required-scope") in SCOPE_ORDER, (method, path)
                ops.append((method, path, op["x-required-scope"]))
    return ops


def test_every_route_answers_403_exactly_to_keys_without_its_scope(api: Api, key_a: str, model_id: str) -> None:
    keys = {scope: mint(api, key_a, scopes=[scope])["key"] for scope in SCOPE_ORDER}
    grants = {"admin": set(SCOPE_ORDER), "jobs": {"jobs", "predict"}, "predict": {"predict"}, "review": {"review"}}
    ops = operations(api)
    assert len(ops) >= 20
    for method, path, needed in ops:
        url = re.sub(r"\{[a-z_]+\}", lambda m: {"{job_id}": model_id}.get(m.group(0), "nope"), path)
        for scope, key in keys.items():
            r = api.client.request(method.upper(), url, headers=api.auth(key))
            if needed in grants[scope]:
                assert r.status_code not in (401, 403), (scope, method, url, r.status_code, r.text)
            else:
                assert_forbidden(r)


def test_a_predict_key_predicts_within_its_budget_and_nothing_else(api: Api, key_a: str, model_id: str) -> None:
    r = api.client.patch(f"/v1/models/{model_id}/policy", json={"budget": 3}, headers=api.auth(key_a))
    assert r.status_code == 200 and r.json()["budget"] == 3, r.text
    consumer = mint(api, key_a, scopes=["predict"], models=[model_id])
    assert consumer["scopes"] == ["predict"] and consumer["models"] == [model_id] and consumer["key"].startswith("mk_")
    key = consumer["key"]

    r = predict(api, key, model_id, n=2)
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"queries": 2, "budget": 3, "remaining": 1}
    assert predict(api, key, model_id, n=1).status_code == 200
    r = predict(api, key, model_id, n=1)
    assert r.status_code == 429 and r.json()["code"] == "query_budget_exceeded"

    listed = api.client.get("/v1/models", headers=api.auth(key))
    assert listed.status_code == 200 and [m["job_id"] for m in listed.json()["items"]] == [model_id]
    for method, url, body in [
        ("GET", f"/v1/jobs/{model_id}/artifacts/model.safetensors", None),
        ("GET", f"/v1/models/{model_id}/export", None),
        ("GET", f"/v1/models/{model_id}/policy", None),
        ("PUT", f"/v1/models/{model_id}/policy", {"policy": "full"}),
        ("PATCH", f"/v1/models/{model_id}/policy", {"budget": 1000, "reset_usage": True}),
        ("POST", "/v1/jobs", TRAIN_SPEC),
        ("POST", "/v1/keys", {"name": "fresh budget", "scopes": ["predict"]}),
        ("GET", "/v1/keys", None),
    ]:
        assert_forbidden(api.client.request(method, url, json=body, headers=api.auth(key)))
    # Still spent: nothing above reset the budget.
    assert predict(api, key, model_id).status_code == 429


def test_a_predict_key_limited_to_models_gets_403_for_the_tenants_other_models(
    api: Api, key_a: str, key_b: str, model_id: str
) -> None:
    other = mint(api, key_a, scopes=["predict"], models=[model_id])
    # A second model of the same tenant that the key does not list.
    spec = {**TRAIN_SPEC, "device": "cpu", "training": {**TRAIN_SPEC["training"], "epochs": 1, "seed": 1},
            "data": {"max_images_per_identity": 20}}
    second = api.client.post("/v1/jobs", json=spec, headers=api.auth(key_a)).json()["id"]
    assert run_job_inline(api.settings, second) == "succeeded"
    assert_forbidden(predict(api, other["key"], second))
    assert predict(api, other["key"], model_id).status_code == 200
    # Unknown ids and other tenants' models stay 404, for every kind of key.
    for key in (other["key"], key_b):
        assert predict(api, key, "job_doesnotexist").status_code == 404
    assert predict(api, key_b, model_id).status_code == 404


def test_minting_checks_scopes_and_models(api: Api, key_a: str, key_b: str, model_id: str) -> None:
    bad = [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "x", "scopes": ["jobs"], "models": [model_id]}, "models"),
        ({"name": "x", "scopes": ["predict"], "models": ["job_missing"]}, "models[0]"),
        ({"name": "x", "scopes": ["predict"], "extra": 1}, "extra"),
    ]
    for body, field in bad:
        r = api.client.post("/v1/keys", json=body, headers=api.auth(key_a))
        assert r.status_code == 422 and field in [e["field"] for e in r.json()["errors"]], (body, r.text)
    # Another tenant's model cannot be put on a key.
    r = api.client.post("/v1/keys", json={"name": "x", "scopes": ["predict"], "models": [model_id]},
                        headers=api.auth(key_b))
    assert r.status_code == 422
    listed = api.client.get("/v1/keys", headers=api.auth(key_a)).json()["items"]
    assert len(listed) == 1 and listed[0]["scopes"] == ["admin"] and "key" not in listed[0]


def test_a_revoked_key_stops_working_and_keys_are_per_tenant(api: Api, key_a: str, key_b: str) -> None:
    minted = mint(api, key_a, scopes=["jobs"])
    assert api.client.get("/v1/jobs", headers=api.auth(minted["key"])).status_code == 200
    assert api.client.delete(f"/v1/keys/{minted['id']}", headers=api.auth(key_b)).status_code == 404
    assert api.client.delete(f"/v1/keys/{minted['id']}", headers=api.auth(key_a)).status_code == 204
    assert api.client.get("/v1/jobs", headers=api.auth(minted["key"])).status_code == 401
    keys = api.client.get("/v1/keys", headers=api.auth(key_a)).json()["items"]
    assert {k["id"]: k["revoked_at"] is not None for k in keys}[minted["id"]] is True
    assert api.client.get("/v1/keys", headers=api.auth(key_b)).json()["items"][0]["id"] != minted["id"]


def test_a_key_revoking_itself_needs_confirmation_and_never_removes_the_last_admin(api: Api, key_a: str) -> None:
    own_id = key_a.split("_")[1]
    r = api.client.delete(f"/v1/keys/{own_id}", params={"confirm": "true"}, headers=api.auth(key_a))
    assert r.status_code == 409 and r.json()["code"] == "last_admin_key", r.text  # the tenant's only admin key
    second = api.client.post("/v1/keys", json={"name": "second admin", "scopes": ["admin"]},
                             headers=api.auth(key_a)).json()
    r = api.client.delete(f"/v1/keys/{own_id}", headers=api.auth(key_a))
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "confirm", r.text
    assert api.client.get("/v1/keys", headers=api.auth(key_a)).status_code == 200  # still works
    r = api.client.delete(f"/v1/keys/{own_id}", params={"confirm": "true"}, headers=api.auth(key_a))
    assert r.status_code == 204
    assert api.client.get("/v1/keys", headers=api.auth(key_a)).status_code == 401
    r = api.client.delete(f"/v1/keys/{second['id']}", params={"confirm": "true"}, headers=api.auth(second["key"]))
    assert r.status_code == 409 and r.json()["code"] == "last_admin_key", r.text


def test_patch_changes_only_the_fields_given_and_put_replaces(api: Api, key_a: str, model_id: str) -> None:
    url = f"/v1/models/{model_id}/policy"
    auth = api.auth(key_a)
    r = api.client.put(url, json={"policy": "full", "budget": 50}, headers=auth)
    assert r.status_code == 200 and r.json()["budget"] == 50
    r = api.client.patch(url, json={"policy": "top-k", "top_k": 3}, headers=auth)
    assert r.status_code == 200, r.text
    assert (r.json()["policy"], r.json()["top_k"], r.json()["budget"]) == ("top-k", 3, 50)
    r = api.client.patch(url, json={"policy": "label-only"}, headers=auth)
    assert (r.json()["policy"], r.json()["top_k"], r.json()["budget"]) == ("label-only", None, 50)
    r = api.client.patch(url, json={"budget": None}, headers=auth)
    assert (r.json()["policy"], r.json()["budget"]) == ("label-only", None)
    for body, field in [({"policy": "top-k"}, "top_k"), ({"decimals": 2}, "decimals"), ({"policy": None}, "policy"),
                        ({"budget": 2**63}, "budget"), ({"bogus": 1}, "bogus")]:
        r = api.client.patch(url, json=body, headers=auth)
        assert r.status_code == 422 and any(field in e["field"] or field in e["message"]
                                            for e in r.json()["errors"]), (body, r.text)
    assert api.client.get(url, headers=auth).json()["policy"] == "label-only"  # nothing stored by the 422s
    r = api.client.put(url, json={"policy": "top-k", "top_k": 2}, headers=auth)
    assert (r.json()["policy"], r.json()["top_k"], r.json()["budget"]) == ("top-k", 2, None)


def test_metrics_without_an_operator_token_show_no_tenant_ids(api: Api, key_a: str, model_id: str) -> None:
    consumer = mint(api, key_a, scopes=["predict"])
    assert predict(api, consumer["key"], model_id).status_code == 200
    text = api.client.get("/metrics").text
    assert "midre_http_request_duration_seconds_count" in text and 'midre_jobs{status="succeeded"} 1.0' in text
    assert model_id not in text and consumer["id"] not in text and "key_id=" not in text
