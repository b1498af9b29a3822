"""Per-tenant quotas (embedded service): active jobs, the size of one study, stored bytes. Each is a
429 whose problem details name the quota; other tenants are not affected; nothing is stored."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.service._support import TRAIN_SPEC, face_folder_members, make_zip
from tests.service.conftest import Api, make_settings
from tests.service.test_jobspec import PIPELINE, job_count


def test_quotas_answer_429_naming_the_quota(tmp_path: Path) -> None:
    archive = make_zip(face_folder_members(identities=3, per_identity=4))
    room = len(archive) * 3 // 2  # one archive fits, two do not
    settings = make_settings(tmp_path / "home", max_active_jobs=2, max_study_runs=4, max_storage_bytes=room)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(settings, client)
        a, b = api.key("a"), api.key("b")
        spec = {**TRAIN_SPEC, "device": "cpu"}
        assert [client.post("/v1/jobs", json=spec, headers=api.auth(a)).status_code for _ in range(2)] == [201, 201]
        r = client.post("/v1/jobs", json=spec, headers=api.auth(a))
        assert r.status_code == 429 and r.headers["retry-after"] and r.json()["code"] == "quota_exceeded"
        assert r.json()["errors"][0]["field"] == "active_jobs" and "2 of 2" in r.json()["detail"]
        assert client.post("/v1/jobs", json=spec, headers=api.auth(b)).status_code == 201  # per tenant
        assert job_count(api) == 3

        # A study of 3 seeds x 2 defenses x 1 attack = 6 runs > 4 (tenant b still has room for jobs).
        r = client.post("/v1/jobs", json={**PIPELINE, "seeds": 3}, headers=api.auth(b))
        assert r.status_code == 429 and r.json()["errors"][0]["field"] == "study_runs", r.text
        # A harden search counts its candidates (NoDef + 2 coarse + 2 refined) x seeds x attacks: 5 > 4.
        harden = {"kind": "harden", "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"], "seeds": 1,
                  "candidates": ["midre:a_h=0.3|0.6"], "device": "cpu"}
        r = client.post("/v1/jobs", json=harden, headers=api.auth(b))
        assert r.status_code == 429 and r.json()["errors"][0]["field"] == "study_runs", r.text

        files = {"file": ("faces.zip", archive, "application/zip")}
        first = client.post("/v1/datasets", files=files, headers=api.auth(b))
        assert first.status_code == 201, first.text
        uploads = list((settings.storage_dir / "uploads").glob("*"))
        r = client.post("/v1/datasets", files=files, headers=api.auth(b))
        assert r.status_code == 429 and r.json()["errors"][0]["field"] == "storage_bytes", r.text
        assert list((settings.storage_dir / "uploads").glob("*")) == uploads  # nothing left behind
        listed = client.get("/v1/datasets", headers=api.auth(b)).json()["items"]
        assert [d["id"] for d in listed] == [first.json()["id"]]
        assert client.post("/v1/datasets", files=files, headers=api.auth(a)).status_code == 201  # a's own room
