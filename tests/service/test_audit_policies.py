"""Audit policies on the embedded service: a model uploaded to ``POST /v1/models`` is audited with no action
in between, the job records the policy in ``trigger``, the tenant's webhooks get ``audit.completed``, and a
leakier model of the same name gets ``audit.regressed`` (and the job says so). The regression is made clear
at small scale: an untrained model first, then the same architecture trained."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from sqlalchemy import select

from midre.checkpoint import load_checkpoint
from services.db.models import WebhookDelivery
from services.db.session import dispose_all, session_factory
from services.gateway.app import create_app
from tests.service._support import run_job_inline, train_outside
from tests.service.conftest import Api, make_settings

pytest.importorskip("midre.plan")

#: The audit every uploaded model gets: DeepInversion on all ten digits, two images each.
POLICY_SPEC = {"dataset": "digits", "data": {"max_images_per_identity": 40}, "attacks": ["deepinversion"], "seeds": 1,
               "device": "cpu", "attack_budgets": {"deepinversion": {"steps": 100}},
               "evaluation": {"arch": "cnn-small", "epochs": 4, "per_identity": 2, "identities": 10,
                              "feature_identities": 0}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], bytes, bytes]:
    """A card, an untrained model's weights and the same model trained (16 px digits, cnn-small)."""
    out = tmp_path_factory.mktemp("trained")
    weights, minimal = train_outside(out, epochs=8, max_images_per_identity=40)
    model, _ = load_checkpoint(out)
    untrained = {k: torch.zeros_like(v) if k.startswith("classifier") else v * 0.01
                 for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in untrained.items()}, str(out / "untrained.safetensors"))
    return minimal, (out / "untrained.safetensors").read_bytes(), weights.read_bytes()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = make_settings(tmp_path / "home", webhooks_allow_private=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(settings, client)
    dispose_all()


def upload(api: Api, headers: dict[str, str], weights: bytes, card: dict[str, Any], name: str) -> dict[str, Any]:
    files = {"file": ("m.safetensors", weights, "application/octet-stream")}
    r = api.client.post("/v1/models", files=files, data={"card": json.dumps(card), "name": name}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def policy_jobs(api: Api, headers: dict[str, str]) -> list[dict[str, Any]]:
    items = api.client.get("/v1/jobs", params={"kind": "attack_eval"}, headers=headers).json()["items"]
    return [j for j in items if j.get("trigger")]


def outbox(api: Api) -> list[tuple[str, dict[str, Any]]]:
    with session_factory(api.settings.db_url)() as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.channel == "webhook")
                               .order_by(WebhookDelivery.created_at)).all()
        return [(r.event_type, json.loads(r.payload)["data"]) for r in rows]


def test_policies_are_checked_and_scoped(api: Api) -> None:
    headers = api.auth(api.key("a"))
    bad = api.client.post("/v1/audit-policies", json={"name": "p", "trigger": "model_upload",
                                                     "spec": {**POLICY_SPEC, "model": "job_x"}}, headers=headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "spec.model"
    bad = api.client.post("/v1/audit-policies", json={"name": "p", "trigger": "model_upload",
                                                     "spec": {**POLICY_SPEC, "seeds": 0}}, headers=headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"].startswith("spec.seeds")
    bad = api.client.post("/v1/audit-policies", json={"name": "p", "trigger": "nightly", "spec": POLICY_SPEC},
                          headers=headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "trigger"
    made = api.client.post("/v1/audit-policies", json={"name": "p", "trigger": "model_upload", "spec": POLICY_SPEC},
                           headers=headers)
    assert made.status_code == 201 and made.json()["audits"] == 0
    other = api.auth(api.key("b"))
    assert api.client.get(f"/v1/audit-policies/{made.json()['id']}", headers=other).status_code == 404
    assert api.client.get("/v1/audit-policies", headers=other).json() == []
    predict_only = api.client.post("/v1/keys", json={"name": "c", "scopes": ["predict"]}, headers=headers).json()
    assert api.client.get("/v1/audit-policies", headers=api.auth(predict_only["key"])).status_code == 403


def test_an_upload_is_audited_by_itself_and_a_leakier_version_regresses(
        api: Api, models: tuple[dict[str, Any], bytes, bytes]) -> None:
    card, untrained, trained = models
    headers = api.auth(api.key("acme"))
    hook = api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook",
                                                 "events": ["audit.completed", "audit.regressed"]}, headers=headers)
    assert hook.status_code == 201, hook.text
    policy = api.client.post("/v1/audit-policies", json={"name": "every upload", "trigger": "model_upload",
                                                         "spec": POLICY_SPEC}, headers=headers).json()
    first = upload(api, headers, untrained, card, "face-id")
    (audit,) = policy_jobs(api, headers)
    assert audit["trigger"] == {"policy": policy["id"], "event": "model_upload", "model": first["id"],
                                "model_name": "face-id"}
    assert run_job_inline(api.settings, audit["id"]) == "succeeded"
    ((event, data),) = outbox(api)
    assert event == "audit.completed" and data["model"] == first["id"] and "deepinversion" in data["attacc_top1"]

    second = upload(api, headers, trained, card, "face-id")
    newest = policy_jobs(api, headers)[0]
    assert newest["trigger"]["model"] == second["id"]
    assert run_job_inline(api.settings, newest["id"]) == "succeeded"
    events = [e for e, _ in outbox(api)]
    assert events == ["audit.completed", "audit.completed", "audit.regressed"], outbox(api)
    job = api.client.get(f"/v1/jobs/{newest['id']}", headers=headers).json()
    (worse,) = job["trigger"]["regressed"]
    assert job["trigger"]["previous"] == audit["id"] and worse["attack"] == "deepinversion"
    assert worse["attacc_top1"] > worse["previous_ci_high"]
    assert api.client.get(f"/v1/audit-policies/{policy['id']}", headers=headers).json()["audits"] == 2


def test_the_dashboard_lists_creates_and_deletes_policies(api: Api) -> None:
    from tests.service.test_ui import sign_in

    key = api.key("dash")
    csrf = sign_in(api, key)
    form = {"csrf": csrf, "name": "uploads", "trigger": "model_upload", "spec": json.dumps(POLICY_SPEC)}
    made = api.client.post("/ui/audit-policies", data=form, follow_redirects=False)
    assert made.status_code == 303
    page = api.client.get("/ui/audit-policies").text
    assert "uploads" in page and "model_upload" in page
    bad = api.client.post("/ui/audit-policies", data={**form, "spec": "{not json"})
    assert bad.status_code == 422 and "spec" in bad.text
    no_mlflow = api.client.post("/ui/audit-policies", data={**form, "trigger": "mlflow_model_version",
                                                           "registered_model": "m"})
    assert no_mlflow.status_code == 422 and "integrations/mlflow" in no_mlflow.text
    (policy,) = api.client.get("/v1/audit-policies", headers=api.auth(key)).json()
    gone = api.client.post(f"/ui/audit-policies/{policy['id']}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert gone.status_code == 303 and api.client.get("/v1/audit-policies", headers=api.auth(key)).json() == []
