"""Production shape on the real servers: PostgreSQL + Redis, real Celery worker processes.

Covered: a digits train job end to end (download, sha256, load, predict), cancel of a
running job within one epoch, and a SIGKILLed worker whose job resumes from its last checkpoint on
another worker. The shared worker consumes ``gpu`` (jobs with device ``auto``); the SIGKILL test
uses ``cpu`` jobs and its own workers so the two never take each other's jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.db.models import Job
from services.db.session import session_scope
from services.gateway.app import create_app
from tests.service._support import (
    TRAIN_SPEC,
    WorkerProcess,
    load_checkpoint,
    predict_digits_accuracy,
    wait_for,
)
from tests.service.conftest import REDIS_URL, Api, PgDatabases, make_settings

pytestmark = pytest.mark.service

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def stack(pg_databases: PgDatabases, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The API in-process on PostgreSQL + Redis (unique database and key prefix)."""
    home = tmp_path_factory.mktemp("pg-home")
    settings = make_settings(
        home, database_url=pg_databases.create(), broker_url=REDIS_URL, broker_prefix=redis_prefix
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(settings, client)


@pytest.fixture(scope="module")
def key(stack: Api) -> str:
    return stack.key("acme")


@pytest.fixture(scope="module")
def gpu_worker(stack: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(stack.settings, tmp_path_factory.mktemp("logs") / "gpu-worker.log", queues="gpu")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def get_job(stack: Api, key: str, job_id: str) -> dict[str, Any]:
    return stack.client.get(f"/v1/jobs/{job_id}", headers=stack.auth(key)).json()


def events(stack: Api, key: str, job_id: str) -> list[dict[str, Any]]:
    return stack.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=stack.auth(key)).json()[
        "items"
    ]


def wait_terminal(stack: Api, key: str, job_id: str, timeout: float, worker: WorkerProcess) -> dict[str, Any]:
    try:
        return wait_for(
            lambda: (j := get_job(stack, key, job_id))["status"] in TERMINAL and j, timeout, what=f"{job_id} to end"
        )
    except TimeoutError as exc:
        log = worker.log()[-4000:]
        raise AssertionError(f"{exc}\nevents: {events(stack, key, job_id)}\nworker log:\n{log}") from exc


def test_train_job_end_to_end(stack: Api, key: str, gpu_worker: WorkerProcess, tmp_path: Path) -> None:
    r = stack.client.post("/v1/jobs", json=TRAIN_SPEC, headers=stack.auth(key))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_terminal(stack, key, job_id, 240, gpu_worker)
    assert job["status"] == "succeeded", (job, gpu_worker.log()[-3000:])
    assert job["progress"] == 1.0 and job["finished_at"] and job["attempt"] == 1
    assert 50 < job["metrics"]["acc"] <= 100  # the metric vocabulary: percent

    listing = stack.client.get(f"/v1/jobs/{job_id}/artifacts", headers=stack.auth(key)).json()["items"]
    by_name = {a["name"]: a for a in listing}
    assert {"model.safetensors", "model.json"} <= set(by_name)
    for name, item in by_name.items():
        r = stack.client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=stack.auth(key))
        assert r.status_code == 200
        assert len(r.content) == item["size"]
        assert hashlib.sha256(r.content).hexdigest() == item["sha256"] == r.headers["x-checksum-sha256"]
        (tmp_path / name).write_bytes(r.content)
    part = stack.client.get(
        f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers=stack.auth(key) | {"Range": "bytes=0-99"}
    )
    assert part.status_code == 206 and part.content == (tmp_path / "model.safetensors").read_bytes()[:100]

    _, card = load_checkpoint(tmp_path)
    assert card["arch"] == "cnn-small" and card["num_classes"] == 10
    accuracy = predict_digits_accuracy(tmp_path)
    assert abs(100 * accuracy - job["metrics"]["acc"]) < 1e-4

    card_api = stack.client.get(f"/v1/models/{job_id}", headers=stack.auth(key)).json()
    assert card_api["arch"] == "cnn-small" and card_api["num_classes"] == 10
    assert card_api["defense"]["name"] == "midre" and card_api["defense"]["a_h"] == 0.4
    assert card_api["checkpoint"]["sha256"] == by_name["model.safetensors"]["sha256"]

    log = events(stack, key, job_id)
    assert [e["data"]["epoch"] for e in log if e["type"] == "epoch"] == [1, 2]
    statuses = [e["data"].get("status") for e in log if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert 'midre_jobs{status="succeeded"} 1.0' in stack.client.get("/metrics").text
    assert not (stack.settings.storage_dir / "work" / job_id).exists()  # work dir cleaned


def test_cancel_running_job_within_one_epoch(stack: Api, key: str, gpu_worker: WorkerProcess) -> None:
    spec = TRAIN_SPEC | {"training": {"epochs": 30, "image_size": 16, "batch_size": 32, "seed": 1}}
    job_id = stack.client.post("/v1/jobs", json=spec, headers=stack.auth(key)).json()["id"]
    wait_for(lambda: any(e["type"] == "epoch" for e in events(stack, key, job_id)), 180, what="first epoch")
    r = stack.client.post(f"/v1/jobs/{job_id}/cancel", headers=stack.auth(key))
    assert r.status_code == 202 and r.json()["status"] in ("cancelling", "cancelled")
    job = wait_terminal(stack, key, job_id, 60, gpu_worker)
    assert job["status"] == "cancelled"
    log = events(stack, key, job_id)
    requested = next(e["id"] for e in log if e["data"].get("status") == "cancelling")
    assert len([e for e in log if e["type"] == "epoch" and e["id"] > requested]) <= 1
    assert max(e["data"]["epoch"] for e in log if e["type"] == "epoch") < 30


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _runner_pid(stack: Api, job_id: str) -> int:
    """Pid of the pool process running the job (``jobs.worker`` is ``host:pid``; not in the API)."""
    with session_scope(stack.settings.db_url) as session:
        return int(session.get(Job, job_id).worker.rsplit(":", 1)[1])


@pytest.mark.slow  # the worker-kill test of the default suite is test_scale_out.py's (two workers, one SIGKILLed)
def test_sigkilled_worker_job_resumes_on_another_worker(stack: Api, key: str, tmp_path: Path) -> None:
    # Long enough (about a second per epoch on an idle core) that the kill lands mid-training.
    spec = TRAIN_SPEC | {"device": "cpu", "training": {"epochs": 6, "image_size": 32, "batch_size": 32, "seed": 2},
                         "data": {"max_images_per_identity": 150}}
    # Two workers on the `cpu` queue, started together; whichever takes the job is SIGKILLed.
    workers = [WorkerProcess(stack.settings, tmp_path / f"worker-{i}.log", queues="cpu") for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        job_id = stack.client.post("/v1/jobs", json=spec, headers=stack.auth(key)).json()["id"]
        wait_for(lambda: any(e["type"] == "epoch" for e in events(stack, key, job_id)), 180, what="epoch 1")
        owner = next(w for w in workers if _parent_pid(_runner_pid(stack, job_id)) == w.proc.pid)
        survivor = next(w for w in workers if w is not owner)
        owner.kill()  # SIGKILL the whole worker mid-training, after the epoch-1 checkpoint
        assert get_job(stack, key, job_id)["status"] == "running"
        job = wait_terminal(stack, key, job_id, 240, survivor)
        final_runner_parent = _parent_pid(_runner_pid(stack, job_id))
    finally:
        for worker in workers:
            worker.stop()
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    assert final_runner_parent == survivor.proc.pid
    log = events(stack, key, job_id)
    assert any("re-queued" in e["message"] for e in log if e["type"] == "status")
    second_attempt = [e for e in log if e["attempt"] == 2]
    resumed = [e for e in second_attempt if e["message"].startswith("resumed after epoch")]
    assert resumed and resumed[0]["data"]["epoch"] >= 1
    epochs_2 = [e["data"]["epoch"] for e in second_attempt if e["type"] == "epoch"]
    assert epochs_2 and min(epochs_2) > 1 and max(epochs_2) == 6
    assert stack.client.get(f"/v1/jobs/{job_id}/artifacts", headers=stack.auth(key)).json()["items"]


STUDY_COMMON: dict[str, Any] = {
    "dataset": "digits",
    "arch": "cnn-small",
    "training": {"epochs": 1, "image_size": 32, "batch_size": 128, "seed": 0},
    "data": {"channels": 1, "max_images_per_identity": 20},
}
STUDY_ATTACK: dict[str, Any] = {
    "attacks": ["mi-face"],
    "seeds": 1,
    # cnn-small as evaluation model too: only the mechanics are under test here, and it is 3x faster.
    "evaluation": {"arch": "cnn-small", "epochs": 1, "per_identity": 1, "identities": 3, "feature_identities": 2},
    "attack_budgets": {"mi-face": {"steps": 2}},
}


# Slow (~8 s): in the default suite tests/service/test_scale_out.py runs a pipeline on PostgreSQL + Redis with
# real workers and tests/service/test_deployed_audit.py runs attack_eval jobs through the worker's engine.
@pytest.mark.slow
def test_pipeline_and_attack_eval_jobs(stack: Api, key: str, gpu_worker: WorkerProcess) -> None:
    pytest.importorskip("midre.study")
    auth = stack.auth(key)
    for bad, field in (({"attacks": ["nope"]}, "attacks[0]"), ({"cache_dir": "/etc"}, "cache_dir"),
                       ({"evaluation": {"arch": "nope"}}, "evaluation.arch")):
        spec = {"kind": "pipeline", **STUDY_COMMON, **STUDY_ATTACK, **bad}
        r = stack.client.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 422 and field in [e["field"] for e in r.json()["errors"]], r.text

    pipeline = {"kind": "pipeline", **STUDY_COMMON, **STUDY_ATTACK, "defense": {"name": "midre", "a_h": 0.4}}
    train = {"kind": "train", **STUDY_COMMON, "defense": {"name": "midre", "a_h": 0.4}}
    pipeline_id = stack.client.post("/v1/jobs", json=pipeline, headers=auth).json()["id"]
    train_id = stack.client.post("/v1/jobs", json=train, headers=auth).json()["id"]
    r = stack.client.post("/v1/jobs", json={"kind": "attack_eval", "model_job": train_id, **STUDY_ATTACK}, headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "model_job"  # not finished yet

    job = wait_terminal(stack, key, pipeline_id, 400, gpu_worker)
    assert job["status"] == "succeeded", job
    names = {a["name"] for a in stack.client.get(f"/v1/jobs/{pipeline_id}/artifacts", headers=auth).json()["items"]}
    assert {"report.json", "report.html", "targets/nodef/seed0/model.safetensors",
            "targets/midre-a_h0.4/seed0/model.json"} <= names
    assert not any(n.startswith("cache/") or "/checkpoint/" in n for n in names)
    assert "midre-a_h0.4.mi-face.attacc_top1" in job["metrics"] and "nodef.mi-face.acc" in job["metrics"]
    card = stack.client.get(f"/v1/models/{pipeline_id}", headers=auth).json()
    assert card["defense"]["name"] == "midre" and "mi-face.attacc_top1" in card["metrics"]
    assert card["checkpoint"]["name"] == "targets/midre-a_h0.4/seed0/model.safetensors"

    assert wait_terminal(stack, key, train_id, 200, gpu_worker)["status"] == "succeeded"
    r = stack.client.post("/v1/jobs", json={"kind": "attack_eval", "model_job": train_id, **STUDY_ATTACK}, headers=auth)
    assert r.status_code == 201, r.text
    job = wait_terminal(stack, key, r.json()["id"], 300, gpu_worker)
    assert job["status"] == "succeeded", job
    assert any(k.endswith("mi-face.attacc_top1") for k in job["metrics"])
    names = {a["name"] for a in stack.client.get(f"/v1/jobs/{job['id']}/artifacts", headers=auth).json()["items"]}
    assert {"report.json", "report.html"} <= names
