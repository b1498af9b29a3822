"""Audits of a model as it is served (``attack_eval`` with ``deployment``), on a real tiny digits model
trained by the worker's engine in this process: the policy and budget come from the served model, the
query attacks see only what a client sees and never more queries than the budget, white-box attacks and
score attacks under ``label-only`` are refused with the reason, and the report states the leakage as
"a client under policy P with budget B recovers X %". Plus the ``shield`` policy over predict."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.db.session import dispose_all
from services.gateway.app import create_app
from tests.service._support import TRAIN_SPEC, run_job_inline
from tests.service.conftest import Api, make_settings

pytest.importorskip("midre.plan")

#: Six private digits (four public ones for the attacks' GAN prior), 3 epochs at 16 px.
MODEL = {**TRAIN_SPEC, "device": "cpu", "training": {**TRAIN_SPEC["training"], "epochs": 3},
         "data": {"max_images_per_identity": 60, "num_private": 6}}
#: Small query attacks: RLB-MI with a small agent (2 queries per identity per episode), BREP-MI.
AUDIT: dict[str, Any] = {
    "kind": "attack_eval", "seeds": 1, "device": "cpu",
    "evaluation": {"arch": "cnn-small", "epochs": 2, "per_identity": 1, "identities": 3, "feature_identities": 0},
    "attack_budgets": {"rlb-mi": {"queries": 240, "prior_steps": 20}, "brep-mi": {"queries": 400, "prior_steps": 20}},
    "attack_options": {"rlb-mi": {"hidden": 32, "batch_size": 16}, "brep-mi": {"sphere_points": 8}},
    "prior_options": {"width": 8, "batch_size": 16},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, str], str]]:
    settings = make_settings(tmp_path_factory.mktemp("deployed") / "home")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(settings, client)
        headers = api.auth(api.key("owner"))
        job = client.post("/v1/jobs", json=MODEL, headers=headers).json()
        assert run_job_inline(settings, job["id"]) == "succeeded"
        yield api, headers, job["id"]
    dispose_all()


def audit(api: Api, headers: dict[str, str], model: str, attack: str, **deployment: Any) -> dict[str, Any]:
    """Submit and run an audit of the deployment; its report's ``deployment`` section."""
    r = api.client.post("/v1/jobs", json={**AUDIT, "attacks": [attack], "deployment": {"model": model, **deployment}},
                        headers=headers)
    assert r.status_code == 201, r.text
    assert run_job_inline(api.settings, r.json()["id"]) == "succeeded"
    report = api.client.get(f"/v1/jobs/{r.json()['id']}/artifacts/report.json", headers=headers).json()
    return report["deployment"]


def set_policy(api: Api, headers: dict[str, str], model: str, **policy: Any) -> None:
    r = api.client.put(f"/v1/models/{model}/policy", json=policy, headers=headers)
    assert r.status_code == 200, r.text


def test_label_only_runs_brep_mi_through_the_policy_and_refuses_score_and_white_box_attacks(served: Any) -> None:
    api, headers, model = served
    set_policy(api, headers, model, policy="label-only", budget=300)
    for attack, reason in (("rlb-mi", "needs the model's scores"), ("gmi", "white-box")):
        r = api.client.post("/v1/jobs", json={**AUDIT, "attacks": [attack], "deployment": {"model": model}},
                            headers=headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "attacks[0]", r.text
        assert reason in r.json()["detail"]
    section = audit(api, headers, model, "brep-mi")
    assert section["policy"] == {"name": "label-only"} and section["budget"] == 300
    (row,) = section["attacks"]
    assert 0 < row["queries_used"] <= 300
    assert "label-only, budget 300 queries recovers" in row["statement"]


def test_top_k_with_a_budget_never_answers_more_and_full_leaks_at_least_as_much(served: Any) -> None:
    api, headers, model = served
    set_policy(api, headers, model, policy="top-k", top_k=3, budget=60)
    budgeted = audit(api, headers, model, "rlb-mi")["attacks"][0]
    assert budgeted["queries_used"] <= 60 and budgeted["budget_stopped"] is True
    assert "the budget stopped the attack" in budgeted["statement"]
    set_policy(api, headers, model, policy="full")
    free = audit(api, headers, model, "rlb-mi")["attacks"][0]
    assert free["queries_used"] == 240 and free["budget_stopped"] is False
    assert free["attacc_top1"]["mean"] >= budgeted["attacc_top1"]["mean"]
    # an attack bounded by its steps alone (no query plan) is stopped by the budget where it runs out
    steps_only = {**AUDIT["attack_budgets"], "rlb-mi": {"steps": 200, "prior_steps": 20}}
    r = api.client.post("/v1/jobs", json={**AUDIT, "attack_budgets": steps_only, "attacks": ["rlb-mi"],
                                          "deployment": {"model": model, "budget": 45}}, headers=headers)
    assert r.status_code == 201 and run_job_inline(api.settings, r.json()["id"]) == "succeeded", \
        api.client.get(f"/v1/jobs/{r.json()['id']}", headers=headers).json()["error"]
    cut = api.client.get(f"/v1/jobs/{r.json()['id']}/artifacts/report.json", headers=headers).json()
    assert cut["deployment"]["attacks"][0]["queries_used"] <= 45 and cut["deployment"]["attacks"][0]["budget_stopped"]
    # a budget in the spec overrides the model's own (what one client would have), read when submitted
    set_policy(api, headers, model, policy="top-k", top_k=3, budget=60)
    spec = {**AUDIT, "attacks": ["rlb-mi"], "deployment": {"model": model, "budget": 30}}
    dry = api.client.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=headers).json()
    assert dry["resolved"]["config"]["deployment"]["budget"] == 30
    assert dry["resolved"]["config"]["deployment"]["policy"] == {"name": "top-k", "top_k": 3}
    card = api.client.get(f"/v1/models/{model}/README.md", headers=headers).text
    assert "| rlb-mi (deployed): top-k (top_k=3), budget 60 queries |" in card
    assert "| rlb-mi (deployed): full, no query budget |" in card


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16), 90).save(buf, format="PNG")
    return buf.getvalue()


def test_the_shield_policy_answers_the_same_identity_and_states_its_cost(served: Any) -> None:
    api, headers, model = served
    bom = api.client.get(f"/v1/jobs/{model}/artifacts/bom.json", headers=headers).json()  # kept when it was made
    assert (bom["specVersion"], bom["metadata"]["component"]["bom-ref"]) == ("1.6", model)
    files = [("files", ("a.png", png(), "image/png"))]
    set_policy(api, headers, model, policy="full")
    plain = api.client.post(f"/v1/models/{model}/predict", files=files, headers=headers).json()["predictions"][0]
    set_policy(api, headers, model, policy="shield", strength=0.9)
    view = api.client.get(f"/v1/models/{model}/policy", headers=headers).json()
    assert view["policy"] == "shield" and view["strength"] == 0.9 and "accuracy unchanged" in view["cost"]
    answer = api.client.post(f"/v1/models/{model}/predict", files=files, headers=headers).json()
    shielded = answer["predictions"][0]
    assert answer["policy"]["name"] == "shield" and shielded["label"] == plain["label"]
    assert [t["label"] for t in shielded["top"]] == [t["label"] for t in plain["top"]]
    assert shielded["top"][0]["probability"] != plain["top"][0]["probability"]
    bad = api.client.put(f"/v1/models/{model}/policy", json={"policy": "full", "strength": 0.5}, headers=headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "strength"
