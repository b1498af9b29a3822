"""Blind human review over REST on a real (tiny) study: invitations, trials that leak nothing, idempotent
answers, scripted reviewers (one always right, one guessing), the figures in the report, and a
``review`` key that reaches nothing else."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.db.models import ReviewTrial
from services.db.session import dispose_all, session_factory
from services.gateway.app import create_app
from tests.service._support import run_job_inline
from tests.service.conftest import Api, make_settings

pytest.importorskip("midre.plan")

#: Ten digits, four reconstructions each, two defenses: 80 reconstructions in about 20 s on two cores.
STUDY: dict[str, Any] = {
    "kind": "pipeline", "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"], "seeds": 1,
    "device": "cpu", "defense": {"name": "midre", "a_h": 0.4},
    "training": {"epochs": 1, "image_size": 16, "batch_size": 64, "seed": 0},
    "data": {"channels": 1, "max_images_per_identity": 24},
    "evaluation": {"arch": "cnn-small", "epochs": 2, "per_identity": 4, "identities": 10, "feature_identities": 0},
    "attack_budgets": {"mi-face": {"steps": 3}},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str, str]]:
    """An embedded API with one succeeded study; (api, admin key, job id)."""
    settings = make_settings(tmp_path_factory.mktemp("reviews") / "home")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(settings, client)
        admin = api.key("tenant-a")
        job = client.post("/v1/jobs", json=STUDY, headers=api.auth(admin))
        assert job.status_code == 201, job.text
        assert run_job_inline(settings, job.json()["id"]) == "succeeded"
        yield api, admin, job.json()["id"]
    dispose_all()


def mint(api: Api, admin: str, scopes: list[str], name: str = "reviewer") -> dict[str, Any]:
    r = api.client.post("/v1/keys", json={"name": name, "scopes": scopes}, headers=api.auth(admin))
    assert r.status_code == 201, r.text
    return r.json()


def invite(api: Api, admin: str, job_id: str, reviewer: str, **extra: Any) -> dict[str, Any]:
    r = api.client.post(f"/v1/jobs/{job_id}/reviews", json={"reviewer": reviewer, **extra}, headers=api.auth(admin))
    assert r.status_code == 201, r.text
    return r.json()


def truth(api: Api, trial_id: str) -> ReviewTrial:
    with session_factory(api.settings.db_url)() as session:
        return session.scalar(select(ReviewTrial).where(ReviewTrial.id == trial_id))


def answer_all(api: Api, key: str, review_id: str, choose: Any) -> int:
    """Answer every trial with ``choose(trial_json) -> choice``; the number answered."""
    n = 0
    while True:
        r = api.client.get(f"/v1/reviews/{review_id}/next", headers=api.auth(key))
        if r.status_code == 204:
            return n
        assert r.status_code == 200, r.text
        trial = r.json()
        sent = api.client.post(f"/v1/reviews/{review_id}/answers", json={"trial": trial["trial"],
                               "choice": choose(trial)}, headers=api.auth(key))
        assert sent.status_code == 201, sent.text
        n += 1


def test_trials_reveal_no_label_attack_or_defense(study: tuple[Api, str, str]) -> None:
    api, admin, job_id = study
    key = mint(api, admin, ["review"])
    review = invite(api, admin, job_id, key["id"], trials=12, candidates=4)
    r = api.client.get(f"/v1/reviews/{review['id']}/next", headers=api.auth(key["key"]))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    trial = r.json()
    assert set(trial) == {"trial", "position", "total", "reconstruction", "candidates"}
    assert [c["id"] for c in trial["candidates"]] == ["1", "2", "3", "4"]
    assert re.fullmatch(r"t[0-9a-f]{24}", trial["trial"])
    row = truth(api, trial["trial"])
    headers = {k: v for k, v in r.headers.items() if k != "cache-control"}
    body_and_headers = r.text + json.dumps(headers)
    # every image inline, PNG with nothing but pixels (no text chunk that could carry a name)
    for url in [trial["reconstruction"], *(c["image"] for c in trial["candidates"])]:
        png = base64.b64decode(url.removeprefix("data:image/png;base64,"))
        assert url.startswith("data:image/png;base64,") and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert not any(chunk in png for chunk in (b"tEXt", b"iTXt", b"zTXt"))
    plain = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", body_and_headers).lower()
    for secret in ("mi-face", "midre", "nodef", "attack", "defense", "seed", "identity", "label", "judge",
                   "control", "attacks/", "safetensors", "digits"):
        assert secret not in plain, secret
    assert row.kind in ("reconstruction", "control_real", "control_blank")
    # the reviewer's own listing says no more than progress
    mine = api.client.get("/v1/reviews", headers=api.auth(key["key"])).json()
    assert mine == [{"id": review["id"], "total": review["total"], "answered": 0, "done": False}]


def test_perfect_reviewer_scores_100_and_passes_controls(study: tuple[Api, str, str]) -> None:
    api, admin, job_id = study
    key = mint(api, admin, ["review"], "always right")
    review = invite(api, admin, job_id, key["id"], trials=40)
    assert review["total"] == 40 + 10

    def right(trial: dict[str, Any]) -> str | None:
        return truth(api, trial["trial"]).right

    assert answer_all(api, key["key"], review["id"], right) == 50
    data = api.client.get(f"/v1/jobs/{job_id}/human-evaluation", headers=api.auth(admin)).json()
    me = next(r for r in data["per_reviewer"] if r["reviewer"] == key["id"])
    assert me["included"] and me["control_accuracy"] == 100.0 and me["attacc_top1"] == 100.0
    assert {(r["attack"], r["defense"]) for r in data["results"]} == {("mi-face", "nodef"), ("mi-face", "midre-a_h0.4")}
    for row in data["results"]:
        assert row["attacc_top1"]["mean"] == 100.0 and row["attacc_top1"]["ci_high"] == 100.0
        assert row["answers"] == 20 and row["chance"] == pytest.approx(20.0)
        assert row["judge_attacc_top1"] is not None  # the attack runs kept each judge's answer per image
    # the finished session wrote the figures into the report, its metrics and report.html
    listing = api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=api.auth(admin)).json()["items"]
    files = {a["name"]: a for a in listing}
    assert "review.safetensors" in files
    report = api.client.get(f"/v1/jobs/{job_id}/artifacts/report.json", headers=api.auth(admin)).json()
    assert report["schema_version"] == 4 and report["human"]["reviewers"] >= 1
    assert report["human"]["results"][0]["attacc_top1"]["ci_low"] is not None
    html = api.client.get(f"/v1/jobs/{job_id}/artifacts/report.html", headers=api.auth(admin)).text
    assert "Human review" in html
    metrics = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(admin)).json()["metrics"]
    assert metrics["midre-a_h0.4.mi-face.human_attacc_top1"] == 100.0  # a guessing reviewer fails the controls


def test_guessing_reviewer_scores_about_chance_and_fails_controls(study: tuple[Api, str, str]) -> None:
    api, admin, job_id = study
    key = mint(api, admin, ["review"], "guesser")
    review = invite(api, admin, job_id, key["id"], trials=80)
    rng = random.Random(7)
    answer_all(api, key["key"], review["id"], lambda t: rng.choice([c["id"] for c in t["candidates"]]))
    data = api.client.get(f"/v1/jobs/{job_id}/human-evaluation", headers=api.auth(admin)).json()
    me = next(r for r in data["per_reviewer"] if r["reviewer"] == key["id"])
    assert not me["included"] and "floor" in me["reason"]
    assert me["chance"] == pytest.approx(20.0)
    # ~60 scored guesses at 1 in 5 (the rest are controls): sd about 5 points, so 15 is 3 sd (an implementation
    # scoring every answer right or wrong is 80 or 20 points away)
    assert abs(me["attacc_top1"] - me["chance"]) < 15.0
    progress = api.client.get(f"/v1/jobs/{job_id}/reviews", headers=api.auth(admin)).json()
    mine = next(p for p in progress if p["id"] == review["id"])
    assert mine["done"] and mine["reviewer_name"] == "guesser" and mine["controls_answered"] == 20


def test_answers_are_idempotent_and_checked(study: tuple[Api, str, str]) -> None:
    api, admin, job_id = study
    key = mint(api, admin, ["review"])
    other = mint(api, admin, ["review"], "other")
    review = invite(api, admin, job_id, key["id"], trials=2)
    url = f"/v1/reviews/{review['id']}"
    trial = api.client.get(f"{url}/next", headers=api.auth(key["key"])).json()

    def send(choice: str | None) -> Any:
        return api.client.post(f"{url}/answers", json={"trial": trial["trial"], "choice": choice},
                               headers=api.auth(key["key"]))

    bad = send("9")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "choice"
    first, again = send("1"), send("1")
    assert (first.status_code, again.status_code) == (201, 200) and again.json()["answered"] == 1
    changed = send(None)
    assert changed.status_code == 409
    # another reviewer, an admin and another tenant see nothing of this review
    for k in (other["key"], admin, api.key("tenant-b")):
        assert api.client.get(f"{url}/next", headers=api.auth(k)).status_code in (403, 404)
    assert api.client.get(f"{url}/next", headers=api.auth(key["key"])).json()["position"] == 2


def test_invitations_are_checked(study: tuple[Api, str, str]) -> None:
    api, admin, job_id = study
    jobs_key = mint(api, admin, ["jobs"], "not a reviewer")
    r = api.client.post(f"/v1/jobs/{job_id}/reviews", json={"reviewer": jobs_key["id"]}, headers=api.auth(admin))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "reviewer"
    mixed = api.client.post("/v1/keys", json={"name": "x", "scopes": ["review", "jobs"]}, headers=api.auth(admin))
    assert mixed.status_code == 422 and mixed.json()["errors"][0]["field"] == "scopes"
    key = mint(api, admin, ["review"])
    other_tenant = api.key("tenant-c")
    assert api.client.post(f"/v1/jobs/{job_id}/reviews", json={"reviewer": key["id"]},
                           headers=api.auth(other_tenant)).status_code == 404
    train = api.client.post("/v1/jobs", json={"kind": "train", "dataset": "digits", "arch": "cnn-small"},
                            headers=api.auth(admin)).json()
    r = api.client.post(f"/v1/jobs/{train['id']}/reviews", json={"reviewer": key["id"]}, headers=api.auth(admin))
    assert r.status_code == 409 and "no reconstructions" in r.json()["detail"]


def test_a_review_key_reaches_nothing_else(study: tuple[Api, str, str]) -> None:
    api, admin, job_id = study
    key = mint(api, admin, ["review"])
    invite(api, admin, job_id, key["id"], trials=1)
    auth = api.auth(key["key"])
    spec = api.client.get("/openapi.json").json()
    checked = 0
    for path, ops in spec["paths"].items():
        if path.startswith("/v1/reviews"):
            continue
        concrete = re.sub(r"\{[^}]+\}", job_id, path)
        for method in ops:
            if api.client.request(method.upper(), concrete, json={}).status_code < 400:
                continue  # public (health, liveness): no key needed, so the review key gains nothing
            r = api.client.request(method.upper(), concrete, headers=auth, json={})
            assert r.status_code in (403, 404, 405), (method, path, r.status_code)
            checked += 1
    assert checked > 30
    assert api.client.get(f"/v1/jobs/{job_id}/artifacts/review.safetensors", headers=auth).status_code == 403


def test_review_material_holds_decoys_by_judge_similarity(study: tuple[Api, str, str], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    api, admin, job_id = study
    r = api.client.get(f"/v1/jobs/{job_id}/artifacts/review.safetensors", headers=api.auth(admin))
    path = tmp_path / "review.safetensors"
    path.write_bytes(r.content)
    material = load_file(str(path))
    attacked = material["attacked"].tolist()
    assert attacked == list(range(10)) and material["decoys"].shape == (10, 8)
    for row, identity in enumerate(attacked):
        assert identity not in material["decoys"][row].tolist()
    assert set(material["decoys"].flatten().tolist()) <= set(material["identities"].tolist())
    assert material["portraits"].shape[0] == len(material["identities"]) and bool(material["has_control"].all())


def test_the_model_card_carries_the_human_figures_of_an_audit() -> None:
    import yaml

    from services.ops.models import readme

    evaluation = {"job_id": "job_x", "attack": "gmi", "attacc_top1": 40.0, "attacc_top1_ci_low": 30.0,
                  "attacc_top1_ci_high": 50.0, "human_attacc_top1": 12.5, "human_attacc_top1_ci_low": 5.0,
                  "human_attacc_top1_ci_high": 20.0, "human_kappa": 0.25, "judge": "resnet18", "seeds": 1}
    text = readme("job_m", {"arch": "resnet18", "defense": {"name": "midre"}}, {"acc": 90.0}, [evaluation])
    front = yaml.safe_load(text.split("---")[1])
    metrics = {m["type"]: m["value"] for r in front["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics["human_attacc_top1"] == 12.5 and metrics["attacc_top1"] == 40.0
    human = next(m for r in front["model-index"][0]["results"] for m in r["metrics"]
                 if m["type"] == "human_attacc_top1")
    assert (human["args"]["kappa"], human["args"]["ci_low"], human["args"]["ci_high"]) == (0.25, 5.0, 20.0)
    assert "| 12.50 [5.00, 20.00] | 0.25 |" in text


def test_the_card_warns_when_audits_of_one_attack_ran_with_different_ids() -> None:
    from services.ops.models import readme

    audits = [{"job_id": f"job_{i}", "attack": "gmi", "attacc_top1": 40.0, "attack_id": aid, "seeds": 1}
              for i, aid in enumerate(("gmi@1+aaaaaaaa", "gmi@2+aaaaaaaa"))]
    text = readme("job_m", {"arch": "resnet18", "defense": {"name": "midre"}}, {"acc": 90.0}, audits)
    assert "the audits of gmi ran with different attack ids (gmi@1+aaaaaaaa, gmi@2+aaaaaaaa)" in text
    same = readme("job_m", {"arch": "resnet18", "defense": {"name": "midre"}}, {"acc": 90.0}, audits[:1])
    assert "different attack ids" not in same
