"""Which jobs are models, through every route that serves one: a harden search that recommended nothing is
no model anywhere (list, card, README, predict, export, audits, MLflow's choice, the dashboard), while its
candidates stay reachable as artifacts; one that recommended a checkpoint is a model like a train job."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import update

from midre.checkpoint import save_checkpoint
from midre.models import create_model
from services.db.models import Job
from services.db.session import session_scope
from services.db.types import utcnow
from services.ops.models import card_name
from tests.service.conftest import Api
from tests.service.test_ui import add_artifact, sign_in

HARDEN = {"kind": "harden", "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"], "seeds": 2,
          "candidates": ["midre:a_h=0.4"], "device": "cpu", "training": {"epochs": 1, "image_size": 32}}


def _checkpoint(tmp_path: Path) -> dict[str, bytes]:
    card = {"arch": "cnn-small", "num_classes": 10, "image_size": 16, "channels": 3, "class_names":
            [str(i) for i in range(10)], "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "defense": {"name": "midre", "a_h": 0.4}, "metrics": {"test_accuracy": 0.5}}
    out = tmp_path / "ckpt"
    save_checkpoint(create_model("cnn-small", 10, image_size=16, in_channels=3), out, card)
    return {name: (out / name).read_bytes() for name in ("model.json", "model.safetensors")}


def _succeeded_harden(api: Api, key: str, files: dict[str, bytes], recommendation: dict[str, Any] | None) -> str:
    r = api.client.post("/v1/jobs", json=HARDEN, headers=api.auth(key))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    with session_scope(api.settings.db_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="succeeded", progress=1.0,
                                                                   finished_at=utcnow()))
    for name, data in files.items():
        add_artifact(api, job_id, name, data, "application/octet-stream")
    add_artifact(api, job_id, "report.json", json.dumps({"kind": "harden", "recommendation": recommendation,
                                                         "frontier": []}).encode(), "application/json")
    return job_id


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_harden_search_without_a_recommendation_is_no_model_anywhere(api: Api, key_a: str, tmp_path: Path) -> None:
    files = _checkpoint(tmp_path)
    stopped = {f"targets/midre-a_h0.4/seed0/{name}": data for name, data in files.items()}
    rejected = _succeeded_harden(api, key_a, stopped, None)
    shipped = _succeeded_harden(api, key_a, {**stopped, **files},
                                {"defense": "midre-a_h0.4", "reason": "lowest AttAcc", "checkpoint": "recommended"})
    auth = api.auth(key_a)
    listed = {m["job_id"] for m in api.client.get("/v1/models", headers=auth).json()["items"]}
    assert rejected not in listed and shipped in listed
    for path in (f"/v1/models/{rejected}", f"/v1/models/{rejected}/README.md", f"/v1/models/{rejected}/export"):
        r = api.client.get(path, headers=auth)
        assert r.status_code == 404 and r.json()["code"] == "no_model", (path, r.text)
    r = api.client.post(f"/v1/models/{rejected}/predict", files={"files": ("a.png", _png(), "image/png")},
                        headers=auth)
    assert r.status_code == 404 and r.json()["code"] == "no_model"
    assert api.client.get(f"/v1/models/{shipped}", headers=auth).status_code == 200
    ok = api.client.post(f"/v1/models/{shipped}/predict", files={"files": ("a.png", _png(), "image/png")},
                         headers=auth)
    assert ok.status_code == 200, ok.text
    audit = api.client.post("/v1/jobs", json={"kind": "attack_eval", "model": rejected, "attacks": ["mi-face"]},
                            headers=auth)
    assert audit.status_code == 422 and audit.json()["errors"][0]["field"] == "model"
    # the candidates stay reachable as the study's artifacts
    names = {a["name"] for a in api.client.get(f"/v1/jobs/{rejected}/artifacts", headers=auth).json()["items"]}
    assert "targets/midre-a_h0.4/seed0/model.json" in names
    # MLflow registers the job's own model only (none here), the dashboard lists what /v1/models lists
    assert card_name("harden", sorted(names)) is None and card_name("harden", ["model.json"]) == "model.json"
    sign_in(api, key_a)
    page = api.client.get("/ui/models").text
    assert shipped in page and rejected not in page
    assert api.client.get(f"/ui/models/{rejected}").status_code == 404
