"""Gateway behaviour that needs no worker: auth, tenancy, validation, idempotency, pagination,
cancel of queued jobs, problem details, health and metrics (embedded SQLite + file broker)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.service._support import TRAIN_SPEC
from tests.service.conftest import Api

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "code", "errors"}


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(TRAIN_SPEC)
    for key, value in changes.items():
        out[key] = value
    return out


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert PROBLEM_KEYS <= set(body)
    assert body["status"] == status
    if code:
        assert body["code"] == code
    return body


def fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]


def test_missing_and_wrong_key_are_401(api: Api, key_a: str) -> None:
    r = api.client.get("/v1/jobs")
    body = assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization" in body["detail"]
    assert_problem(api.client.get("/v1/jobs", headers=api.auth(key_a + "x")), 401, "unauthorized")
    assert_problem(api.client.get("/v1/jobs", headers=api.auth("mk_nope_nope")), 401)
    assert_problem(api.client.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
    assert api.client.get("/v1/jobs", headers=api.auth(key_a)).status_code == 200


def test_submit_returns_id_and_status(api: Api, key_a: str) -> None:
    r = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_a))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"].startswith("job_") and job["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["queue"] == "gpu"  # device auto -> MIDRE_AUTO_QUEUE
    cpu = api.client.post("/v1/jobs", json=spec(device="cpu"), headers=api.auth(key_a)).json()
    assert cpu["queue"] == "cpu"
    events = api.client.get(f"/v1/jobs/{job['id']}/events", headers=api.auth(key_a)).json()
    assert [e["type"] for e in events["items"]] == ["status"]


def test_other_tenants_ids_are_404(api: Api, key_a: str, key_b: str) -> None:
    job = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_a)).json()
    ds = api.client.post("/v1/datasets", json={"name": "d", "source": "digits"}, headers=api.auth(key_a)).json()
    b = api.auth(key_b)
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/jobs/{job['id']}/artifacts"),
        ("GET", f"/v1/jobs/{job['id']}/artifacts/model.safetensors"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/models/{job['id']}"),
        ("GET", f"/v1/datasets/{ds['id']}"),
        ("DELETE", f"/v1/datasets/{ds['id']}"),
    ]:
        assert_problem(api.client.request(method, path, headers=b), 404, "not_found")
    assert api.client.get("/v1/jobs", headers=b).json()["items"] == []
    assert api.client.get("/v1/datasets", headers=b).json()["items"] == []
    # Tenant B cannot train on tenant A's dataset either.
    body = assert_problem(api.client.post("/v1/jobs", json=spec(dataset=ds["id"]), headers=b), 422)
    assert fields(body) == ["dataset"]
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth(key_a)).status_code == 200


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"arch": "resnet9000"}, "arch"),
        ({"defense": {"name": "midre", "a_h": 1.7}}, "defense.a_h"),
        ({"defense": {"name": "midre", "a_h": "big"}}, "defense.a_h"),
        ({"defense": {"name": "no-such-defense"}}, "defense.name"),
        ({"dataset": "ds_doesnotexist"}, "dataset"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"epochs": 1, "optimizer": "rmsprop"}}, "training.optimizer"),
        ({"training": {"epochs": 1, "warmup": 3}}, "training.warmup"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(api: Api, key_a: str, changes: dict, field: str) -> None:
    r = api.client.post("/v1/jobs", json=spec(**changes), headers=api.auth(key_a))
    body = assert_problem(r, 422, "validation_error")
    assert field in fields(body), body
    assert api.client.get("/v1/jobs", headers=api.auth(key_a)).json()["items"] == []


def test_missing_fields_and_bad_kind_are_422(api: Api, key_a: str) -> None:
    incomplete = {k: v for k, v in TRAIN_SPEC.items() if k != "arch"}
    assert "arch" in fields(assert_problem(api.client.post("/v1/jobs", json=incomplete, headers=api.auth(key_a)), 422))
    missing_ds = {k: v for k, v in TRAIN_SPEC.items() if k != "dataset"}
    assert "dataset" in fields(
        assert_problem(api.client.post("/v1/jobs", json=missing_ds, headers=api.auth(key_a)), 422)
    )
    bad_kind = spec(kind="fly")
    assert "kind" in fields(assert_problem(api.client.post("/v1/jobs", json=bad_kind, headers=api.auth(key_a)), 422))
    json_headers = api.auth(key_a) | {"content-type": "application/json"}
    r = api.client.post("/v1/jobs", content=b"{not json", headers=json_headers)
    assert_problem(r, 422, "validation_error")


def test_idempotency_key_gives_one_job(api: Api, key_a: str, key_b: str) -> None:
    headers = api.auth(key_a) | {"Idempotency-Key": "abc-123"}
    first = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=headers)
    second = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=headers)
    assert first.status_code == 201 and second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]
    assert len(api.client.get("/v1/jobs", headers=api.auth(key_a)).json()["items"]) == 1
    changed = api.client.post("/v1/jobs", json=spec(arch="resnet18"), headers=headers)
    assert_problem(changed, 422, "idempotency_key_reused")
    # Keys are per tenant: the same key from tenant B is a different job.
    other = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_b) | {"Idempotency-Key": "abc-123"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


def test_cursor_pagination_and_filters(api: Api, key_a: str) -> None:
    ids = [api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_a)).json()["id"] for _ in range(5)]
    api.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=api.auth(key_a))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/jobs", params=params, headers=api.auth(key_a)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    cancelled = api.client.get("/v1/jobs", params={"status": "cancelled"}, headers=api.auth(key_a)).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert api.client.get("/v1/jobs", params={"kind": "pipeline"}, headers=api.auth(key_a)).json()["items"] == []
    body = assert_problem(api.client.get("/v1/jobs", params={"status": "nope"}, headers=api.auth(key_a)), 422)
    assert fields(body) == ["status"]
    assert_problem(api.client.get("/v1/jobs", params={"limit": 0}, headers=api.auth(key_a)), 422)


def test_event_pagination(api: Api, key_a: str) -> None:
    job = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_a)).json()
    api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth(key_a))
    page = api.client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1}, headers=api.auth(key_a)).json()
    assert len(page["items"]) == 1 and page["next_cursor"] == page["items"][0]["id"]
    rest = api.client.get(
        f"/v1/jobs/{job['id']}/events", params={"after": page["next_cursor"]}, headers=api.auth(key_a)
    ).json()
    assert [e["data"].get("status") for e in rest["items"]] == ["cancelled"] and rest["next_cursor"] is None


def test_cancel_queued_job_and_conflict_after(api: Api, key_a: str) -> None:
    job = api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_a)).json()
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth(key_a))
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    assert_problem(api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth(key_a)), 409, "job_finished")
    assert_problem(api.client.get(f"/v1/models/{job['id']}", headers=api.auth(key_a)), 409)


def test_every_error_is_a_problem(api: Api, key_a: str) -> None:
    assert_problem(api.client.get("/v2/nothing"), 404, "not_found")
    assert_problem(api.client.get("/v1/jobs/job_nope", headers=api.auth(key_a)), 404, "not_found")
    assert_problem(api.client.delete("/v1/jobs", headers=api.auth(key_a)), 405, "method_not_allowed")
    assert_problem(api.client.put("/healthz"), 405)


def test_unhandled_error_is_a_500_problem(api: Api) -> None:
    app = create_app(api.settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/boom"), 500, "internal_error")
    assert "secret" not in body["detail"]


def test_health_ready_and_metrics(api: Api, key_a: str) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    api.client.post("/v1/jobs", json=TRAIN_SPEC, headers=api.auth(key_a))
    text = api.client.get("/metrics").text
    assert 'midre_jobs{status="queued"} 1.0' in text
    assert 'midre_queue_depth{queue="gpu"} 1.0' in text
    assert 'midre_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="201"} 1.0' in text


def test_readyz_reports_unreachable_broker(tmp_path: Any) -> None:
    from tests.service.conftest import make_settings

    settings = make_settings(tmp_path / "h", broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"].startswith("error")


def test_json_only_no_pickle(api: Api) -> None:
    from services.queue.celery_app import make_celery

    conf = make_celery(api.settings).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_backend is None
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
