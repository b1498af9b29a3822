"""The job-spec trust boundary on the embedded service (SQLite, no servers).

Every injection of a server path or a server-side object answers 422 naming the field and stores
nothing; what can be checked before queueing is checked; the resolved config a job runs is shown
and is what the worker runs (jobs run in this process through the worker's own engine (``run_job_inline``));
and no server path reaches a client in the events, messages, errors or views of a whole study.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from services.db.models import Job
from services.db.session import session_scope
from tests.service._support import TRAIN_SPEC, face_folder_members, make_zip, png_bytes, run_job_inline
from tests.service.conftest import Api
from tests.service.test_scopes import model_id  # noqa: F401  (fixture: a trained model of tenant-a)

STUDY = {"attacks": ["mi-face"], "seeds": 1, "device": "cpu",
         "evaluation": {"arch": "cnn-small", "epochs": 1, "per_identity": 1, "identities": 2, "feature_identities": 0},
         "attack_budgets": {"mi-face": {"steps": 3}}}
PIPELINE = {"kind": "pipeline", "dataset": "digits", "arch": "cnn-small", "defense": {"name": "midre", "a_h": 0.4},
            "training": {"epochs": 1, "image_size": 32, "batch_size": 64, "seed": 0},
            "data": {"channels": 1, "max_images_per_identity": 12}, **STUDY}


def job_count(api: Api) -> int:
    with session_scope(api.settings.db_url) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def submit(api: Api, key: str, spec: dict[str, Any]) -> Any:
    return api.client.post("/v1/jobs", json=spec, headers=api.auth(key))


def assert_refused(api: Api, key: str, spec: dict[str, Any], field: str) -> None:
    before = job_count(api)
    r = submit(api, key, spec)
    assert r.status_code == 422, (spec, r.status_code, r.text)
    fields = [e["field"] for e in r.json()["errors"]]
    assert field in fields, (field, fields, r.json()["detail"])
    assert job_count(api) == before, "a refused spec stored a job"


def test_injections_are_422_naming_the_field_and_store_nothing(
    api: Api, key_a: str, key_b: str, model_id: str  # noqa: F811
) -> None:
    train = {**TRAIN_SPEC, "device": "cpu"}
    other = submit(api, key_b, {**train, "training": {"epochs": 1}}).json()["id"]  # tenant-b's (queued) job
    cases = [
        ({**train, "training": {"weights_path": "/etc/hostname"}}, "training.weights_path"),
        ({**train, "training": {"epochs": 1, "eval_every": 1, "device": "cuda:0"}}, "training.device"),
        ({**train, "defense": {"name": "tl-dmi", "pretrained": "/etc/hostname"}}, "defense.pretrained"),
        ({**train, "defense": {"name": "midre+tl-dmi", "tl-dmi": {"pretrained": "/etc"}}}, "defense.tl-dmi.pretrained"),
        ({**train, "defense": {"name": "tl-dmi", "pretrained_job": other}}, "defense.pretrained_job"),
        ({**train, "defense": {"name": "midre", "a_hh": 0.5}}, "defense.a_hh"),
        ({**train, "arch": "maxvit_t", "training": {"image_size": 40}}, "training.image_size"),
        ({**train, "training": {"seed": 2**70}}, "training.seed"),
        ({**train, "data": {"num_private": 10**9}}, "data.num_private"),
        ({**train, "dataset": "ds_of_someone_else"}, "dataset"),
        ({**train, "dataset": "../../etc"}, "dataset"),
        ({**PIPELINE, "training": {"public_data": "/etc"}}, "training.public_data"),
        ({**PIPELINE, "defenses": [{"name": "tl-dmi", "pretrained": "/etc"}]}, "defenses"),
        ({**PIPELINE, "cache_dir": "/etc"}, "cache_dir"),
        ({**PIPELINE, "attacks": ["mi-face", "no-such-attack"]}, "attacks[1]"),
        ({**PIPELINE, "attack_options": {"mi-face": {"stepz": 3}}}, "attack_options.mi-face.stepz"),
        ({**PIPELINE, "attack_options": {"gmi": {"prior": {"widht": 8}}}}, "attack_options.gmi.prior.widht"),
        ({**PIPELINE, "attack_options": {"ppa": {"stylegan2": "/etc/hostname"}}}, "attack_options.ppa.stylegan2"),
        ({**PIPELINE, "attack_options": {"mirror": {"stylegan2_random": {"resolution": 4096}}}},
         "attack_options.mirror.stylegan2_random"),
        ({**PIPELINE, "attack_budgets": {"mi-face": {"steps": -1}}}, "attack_budgets.mi-face.steps"),
        ({**PIPELINE, "prior_options": {"width": "wide"}}, "prior_options.width"),
        ({**PIPELINE, "evaluation": {**STUDY["evaluation"], "arch": "nope"}}, "evaluation.arch"),
        ({"kind": "attack_eval", "model_job": model_id, **STUDY, "attacks": ["gmi"]}, "attacks[0]"),
        ({"kind": "attack_eval", "model_job": other, **STUDY}, "model_job"),
        ({"kind": "attack_eval", "model_job": model_id, **STUDY, "target": "/etc"}, "target"),
    ]
    for spec, field in cases:
        assert_refused(api, key_a, spec, field)


def test_the_resolved_config_is_shown_and_run(api: Api, key_a: str, model_id: str) -> None:  # noqa: F811
    spec = {**TRAIN_SPEC, "device": "cpu", "defense": {"name": "tl-dmi", "pretrained_job": model_id},
            "training": {**TRAIN_SPEC["training"], "epochs": 1}, "data": {"max_images_per_identity": 20}}
    created = submit(api, key_a, spec)
    assert created.status_code == 201, created.text
    job = api.client.get(f"/v1/jobs/{created.json()['id']}", headers=api.auth(key_a)).json()
    resolved = job["resolved"]
    assert resolved["kind"] == "train" and resolved["version"] == 1
    config = resolved["config"]
    # Every default filled in, ids kept as references.
    assert (config["lr"], config["optimizer"], config["data"]["split_seed"]) == (0.001, "adam", 42)
    assert config["defense"] == {"name": "tl-dmi", "pretrained": f"job:{model_id}", "trainable": 2}
    assert resolved["refs"] == {"defense.pretrained": f"job:{model_id}"}
    assert run_job_inline(api.settings, job["id"]) == "succeeded"
    card = api.client.get(f"/v1/models/{job['id']}", headers=api.auth(key_a)).json()["card"]
    assert card["config"]["lr"] == config["lr"] and card["defense"]["name"] == "tl-dmi"
    assert str(api.settings.home) not in json.dumps(card)


def test_no_server_path_reaches_a_client(api: Api, key_a: str, model_id: str) -> None:  # noqa: F811
    home = str(api.settings.home)
    upload = api.client.post(
        "/v1/datasets",
        files={"file": ("faces.zip", make_zip(face_folder_members(identities=3, per_identity=4)), "application/zip")},
        data={"name": "faces"},
        headers=api.auth(key_a),
    )
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    assert home not in json.dumps(dataset)
    # A refused upload names the member, not the extraction folder.
    bad = {**face_folder_members(identities=3, per_identity=4), "faces/person_0/broken.png": png_bytes(1)[:20]}
    r = api.client.post("/v1/datasets", files={"file": ("bad.zip", make_zip(bad), "application/zip")},
                        headers=api.auth(key_a))
    if r.status_code == 422:
        assert home not in r.text and "broken.png" in r.text, r.text
    else:
        assert r.status_code == 201 and home not in r.text and "broken.png" in r.text, r.text

    pipeline = submit(api, key_a, PIPELINE).json()["id"]
    assert run_job_inline(api.settings, pipeline) == "succeeded"
    # An audit of a trained model gets its data by id from the model's own train job, not from a path.
    audit = submit(api, key_a, {"kind": "attack_eval", "model": model_id, **STUDY}).json()
    assert audit["resolved"]["config"]["data"]["source"] == "digits"
    assert run_job_inline(api.settings, audit["id"]) == "succeeded"
    # A job that fails in the worker: its dataset disappears before it runs.
    doomed = submit(api, key_a, {**TRAIN_SPEC, "device": "cpu", "dataset": dataset["id"],
                                 "training": {"epochs": 1, "image_size": 16}}).json()["id"]
    assert api.client.delete(f"/v1/datasets/{dataset['id']}", headers=api.auth(key_a)).status_code == 204
    assert run_job_inline(api.settings, doomed) == "failed"

    downloaded = []
    for job_id in (pipeline, audit["id"], model_id):  # every text artifact, as a client downloads it
        items = api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=api.auth(key_a)).json()["items"]
        texts = [i["name"] for i in items if i["name"].endswith((".json", ".html", ".md"))]
        assert texts, job_id
        for name in texts:
            downloaded.append(api.client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=api.auth(key_a)).text)
    seen = []
    for job_id in (pipeline, doomed):
        seen.append(api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(key_a)).text)
        seen.append(api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=api.auth(key_a)).text)
        seen.append(api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=api.auth(key_a)).text)
    seen.append(api.client.get("/v1/jobs", headers=api.auth(key_a)).text)
    seen.append(api.client.get(f"/v1/models/{pipeline}", headers=api.auth(key_a)).text)
    events = json.loads(seen[1])["items"]
    assert any(e["stage"] == "done" for e in events) and len(events) > 5
    assert "failed" in seen[3]
    for text in seen + downloaded:
        assert home not in text, text[:2000]
    assert any("<server>/" in text for text in downloaded)  # there were paths to rewrite (the study's cache)
    assert api.settings.home.is_absolute() and len(home) > 5


@pytest.mark.parametrize("field", ["evaluation", "training", "data", "attack_budgets"])
def test_unknown_nested_keys_are_refused(api: Api, key_a: str, field: str) -> None:
    value = {"mi-face": {"bogus": 1}} if field == "attack_budgets" else {"bogus": 1}
    path = f"{field}.mi-face.bogus" if field == "attack_budgets" else f"{field}.bogus"
    assert_refused(api, key_a, {**PIPELINE, field: value}, path)


def test_a_body_that_is_not_utf8_is_422_naming_the_body(api: Api, key_a: str) -> None:
    headers = {**api.auth(key_a), "content-type": "application/json"}
    r = api.client.post("/v1/jobs", content=b"\x93\x17\xfb\x9b\xf6", headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "invalid_body", r.text
    assert [e["field"] for e in r.json()["errors"]] == ["body"] and job_count(api) == 0


def test_integers_past_64_bits_are_422_not_500(api: Api, key_a: str) -> None:
    job = submit(api, key_a, {**TRAIN_SPEC, "device": "cpu"}).json()["id"]
    r = api.client.get(f"/v1/jobs/{job}/events", params={"after": 2**63}, headers=api.auth(key_a))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "after", r.text
    for field, value in (("seeds", 2**70), ("seeds", [2**40])):
        r = submit(api, key_a, {**PIPELINE, field: value})
        assert r.status_code == 422 and any(e["field"].startswith(field) for e in r.json()["errors"]), r.text


def test_bodies_past_the_route_limit_are_413_before_they_are_read(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app
    from tests.service.conftest import make_settings

    settings = make_settings(tmp_path / "home", max_json_bytes=4096)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        small = Api(settings, client)
        key = small.key("t")
        big = {**TRAIN_SPEC, "defense": {"name": "midre", "a_h": 0.4, "note": "x" * 10_000}}
        r = client.post("/v1/jobs", json=big, headers=small.auth(key))
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body", r.text

        def chunks() -> Any:  # no Content-Length: cut off while streaming
            yield json.dumps(big).encode()

        headers = {**small.auth(key), "content-type": "application/json"}
        r = client.post("/v1/jobs", content=chunks(), headers=headers)
        assert r.status_code == 413, r.text
        assert job_count(small) == 0
        assert client.post("/v1/jobs", json={**TRAIN_SPEC, "device": "cpu"}, headers=small.auth(key)).status_code == 201


def test_job_reads_carry_an_etag_and_answer_304_when_unchanged(api: Api, key_a: str, key_b: str) -> None:
    job = submit(api, key_a, {**TRAIN_SPEC, "device": "cpu"}).json()["id"]
    first = api.client.get(f"/v1/jobs/{job}", headers=api.auth(key_a))
    etag = first.headers["etag"]
    assert first.status_code == 200 and first.json()["status"] == "queued" and etag.startswith('"')
    again = api.client.get(f"/v1/jobs/{job}", headers={**api.auth(key_a), "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    # Another tenant gets no ETag and no hint: 404, cached or not.
    assert api.client.get(f"/v1/jobs/{job}", headers={**api.auth(key_b), "If-None-Match": etag}).status_code == 404
    # A change made through this process is seen at once (the cancel forgets the cached answer).
    assert api.client.post(f"/v1/jobs/{job}/cancel", headers=api.auth(key_a)).status_code == 202
    after = api.client.get(f"/v1/jobs/{job}", headers={**api.auth(key_a), "If-None-Match": etag})
    assert after.status_code == 200 and after.json()["status"] == "cancelled" and after.headers["etag"] != etag


def test_a_predict_body_past_the_serving_cap_is_413_before_it_is_spooled(tmp_path: Any, monkeypatch: Any) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app
    from tests.service.conftest import make_settings

    monkeypatch.setenv("MIDRE_SERVE_MAX_REQUEST_BYTES", str(64 * 1024))
    settings = make_settings(tmp_path / "home")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = Api(settings, client).key("t")
        part = {"files": ("big.png", b"\x89PNG" + bytes(200 * 1024), "image/png")}
        r = client.post("/v1/models/job_x/predict", files=part, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body", r.text
        assert not list((settings.storage_dir).rglob("*.png"))


GRID = {"dataset": "digits", "arch": "cnn-small", "training": {"epochs": 1, "image_size": 32, "seed": 0},
        "data": {"channels": 1, "max_images_per_identity": 12}, **STUDY}


def test_sweep_and_harden_specs_resolve_to_the_library_configs(api: Api, key_a: str) -> None:
    pytest.importorskip("midre.plan")
    harden = submit(api, key_a, {"kind": "harden", **GRID, "candidates": ["midre:a_h=0.3|0.6", {"name": "nls"}]})
    assert harden.status_code == 201, harden.text
    config = harden.json()["resolved"]["config"]
    assert config["max_accuracy_drop"] == 1.0  # the default budget
    assert [d["name"] for d in config["defenses"]] == ["nodef", "midre", "midre", "nls"]
    assert [d.get("a_h") for d in config["defenses"][1:3]] == [0.3, 0.6]
    sweep = submit(api, key_a, {"kind": "sweep", **GRID, "candidates": "nodef; midre:a_h=0.2..0.4/0.2; nls"})
    assert sweep.status_code == 201, sweep.text
    assert sweep.json()["resolved"]["config"]["max_accuracy_drop"] is None
    assert len(sweep.json()["resolved"]["config"]["defenses"]) == 4
    listed = api.client.get("/v1/jobs?kind=harden", headers=api.auth(key_a)).json()["items"]
    assert [j["id"] for j in listed] == [harden.json()["id"]]


def test_bad_sweep_and_harden_specs_are_422_naming_the_field(api: Api, key_a: str) -> None:
    pytest.importorskip("midre.plan")
    harden = {"kind": "harden", **GRID}
    cases = [
        ({**harden, "max_accuracy_drop": -1}, "max_accuracy_drop"),
        ({**harden, "max_accuracy_drop": 101}, "max_accuracy_drop"),
        ({**harden, "candidates": ["midre:a_h=7"]}, "candidates[0].a_h"),
        ({**harden, "candidates": ["nls", {"name": "midre", "a_hh": 0.3}]}, "candidates[1].a_hh"),
        ({**harden, "candidates": ["no-such-defense"]}, "candidates[0].name"),
        ({**harden, "candidates": []}, "candidates"),
        ({**harden, "finalists": 0}, "finalists"),
        ({**harden, "defense": {"name": "midre"}}, "defense"),  # a grid study's defenses are its candidates
        ({**harden, "training": {"epochs": 1, "weights_path": "/etc"}}, "training.weights_path"),
        ({"kind": "sweep", **GRID, "candidates": "midre:a_h=0.1..x"}, "candidates[0].a_h"),
        ({"kind": "sweep", **GRID, "max_accuracy_drop": "much"}, "max_accuracy_drop"),
    ]
    for spec, field in cases:
        assert_refused(api, key_a, spec, field)


DEVICES_SPEC = {**TRAIN_SPEC, "device": "cpu", "training": {**TRAIN_SPEC["training"], "epochs": 1, "devices": 2},
                "data": {"max_images_per_identity": 20}}


def test_training_devices_is_checked_and_resolved(api: Api, key_a: str) -> None:
    assert_refused(api, key_a, {**TRAIN_SPEC, "training": {**TRAIN_SPEC["training"], "devices": 0}}, "training.devices")
    assert_refused(api, key_a, {**TRAIN_SPEC, "defense": {"name": "trap-mid"},
                                "training": {**TRAIN_SPEC["training"], "devices": 2}}, "training.devices")
    created = submit(api, key_a, DEVICES_SPEC)
    assert created.status_code == 201, created.text
    job = api.client.get(f"/v1/jobs/{created.json()['id']}", headers=api.auth(key_a)).json()
    assert job["resolved"]["config"]["devices"] == 2


# Slow (two rank processes, ~15 s): in the default suite tests/unit/test_distributed.py trains over two gloo
# ranks, test_training_devices_is_checked_and_resolved checks the spec, and tests/service/test_worker_units.py
# the worker's device slots.
@pytest.mark.slow
def test_a_rest_job_trains_over_two_processes(api: Api, key_a: str) -> None:
    created = submit(api, key_a, DEVICES_SPEC)
    assert created.status_code == 201, created.text
    job = api.client.get(f"/v1/jobs/{created.json()['id']}", headers=api.auth(key_a)).json()
    assert run_job_inline(api.settings, job["id"]) == "succeeded"  # the worker's engine starts two gloo ranks
    card = api.client.get(f"/v1/models/{job['id']}", headers=api.auth(key_a)).json()["card"]
    assert card["config"]["devices"] == 2 and card["metrics"]["epochs"] == 1  # accuracy: tests/unit/test_distributed.py
