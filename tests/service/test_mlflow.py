"""The MLflow hand-off against a real ``mlflow server`` (SQLite backend, artifact proxy, loopback):
configuration (write-only credentials, SSRF refusals, tenant isolation, admin scope), two train jobs
logged as runs with params, metrics, tags and artifacts and registered as versions 1 and 2 with the
alias ``hardened`` moving, and an MLflow that is down: the job still succeeds and its events say the
hand-off will be retried."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services import jobspec
from services.db import jobs as jobstate
from services.db.keys import create_api_key, hash_key
from services.db.mlflow import HUMAN_EVENT, enqueue_job_end
from services.db.models import ApiKey, Artifact, Job, Metric, WebhookAttempt, WebhookDelivery
from services.db.session import dispose_all, session_factory, session_scope
from services.db.types import new_id, utcnow
from services.gateway.app import create_app
from services.integrations.mlflow import flatten, load, send
from services.integrations.webhooks import WebhookDeliverer, check_target, deliver_due
from services.storage import LocalStore
from tests.service._support import TRAIN_SPEC, free_port, run_job_inline, stop_group, wait_for
from tests.service.conftest import Api, make_settings
from tests.service.test_audit_policies import POLICY_SPEC
from tests.service.test_jobspec import PIPELINE, STUDY

#: A public address written as a literal: configuring it needs no DNS (nothing is sent to it).
PUBLIC_URI = "https://93.184.215.14/mlflow"
#: Fast outbox timings: a deliverer pass every 0.2 s, retries 0.5 s, 1 s, ... apart.
QUICK = {"webhooks_base_delay_s": 0.5, "webhooks_poll_s": 0.2, "mlflow_timeout_s": 20.0}
#: A train job small enough for 2 busy cores (one epoch, 16 px, 20 digits per class).
SMALL_TRAIN = {**TRAIN_SPEC, "device": "cpu", "training": {**TRAIN_SPEC["training"], "epochs": 1},
               "data": {"max_images_per_identity": 20}}


class MlflowServer:
    """``python -m mlflow server`` on a free loopback port: SQLite backend store, artifacts served by
    the server itself (``--artifacts-destination``) from a temporary folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "mlflow.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            cwd=folder, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        started = time.monotonic()
        wait_for(self._up, 300, interval=0.5, what="the mlflow server to answer /health")
        self.start_s = time.monotonic() - started

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """GET ``/api/2.0/mlflow/<path>`` (MLflow's REST API) and return its JSON."""
        response = httpx.get(f"{self.url}/api/2.0/mlflow/{path}", params=params, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def artifact(self, path: str) -> bytes:
        response = httpx.get(f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=30)
        assert response.status_code == 200, response.text
        return response.content

    def stop(self) -> None:
        stop_group(self.proc, 10)
        self._log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    print(f"mlflow server up in {server.start_s:.1f} s")
    yield server
    server.stop()


def configure(api: Api, key: str, **body: Any) -> httpx.Response:
    return api.client.put("/v1/integrations/mlflow", json=body, headers=api.auth(key))


def events(api: Api, key: str, job_id: str) -> list[dict[str, Any]]:
    response = api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}, headers=api.auth(key))
    assert response.status_code == 200, response.text
    return response.json()["items"]


def mlflow_events(api: Api, key: str, job_id: str) -> list[str]:
    return [e["message"] for e in events(api, key, job_id) if e["type"] == "log" and e["message"].startswith("mlflow:")]


def add_succeeded_job(api: Api, key: str, kind: str, spec: dict[str, Any], metrics: dict[str, float],
                      files: dict[str, bytes] | None = None) -> str:
    """A ``kind`` job of the key's tenant that ran (no worker: its artifacts and final metrics are
    written here) and succeeds through :func:`services.db.jobs.transition`, which queues its hand-off."""
    store = LocalStore(api.settings.storage_dir)
    with session_factory(api.settings.db_url)() as session:
        job = Job(id=new_id("job"), tenant_id=_tenant_of(api, key), kind=kind, spec=spec,
                  resolved=jobspec.resolve(spec), status="running", queue="cpu", progress=0.5, attempt=1,
                  cancel_requested=False, created_at=utcnow(), started_at=utcnow())
        session.add(job)
        session.flush()
        for name, data in (files or {}).items():
            path = api.settings.home / "blob"
            path.write_bytes(data)
            blob = store.put_file(path)
            session.add(Artifact(job_id=job.id, name=name, size=blob.size, sha256=blob.sha256,
                                 content_type="application/octet-stream", created_at=utcnow()))
        for name, value in metrics.items():
            session.add(Metric(job_id=job.id, name=name, value=value, epoch=None))
        session.flush()
        assert jobstate.transition(session, job, [jobstate.RUNNING], jobstate.SUCCEEDED)
        session.commit()
        return job.id


def _tenant_of(api: Api, key: str) -> str:
    with session_factory(api.settings.db_url)() as session:
        return session.scalars(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key))).one()


def run_job(api: Api, key: str, spec: dict[str, Any]) -> str:
    created = api.client.post("/v1/jobs", json=spec, headers=api.auth(key))
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert run_job_inline(api.settings, job_id) == "succeeded"
    return job_id


# -- configuration -------------------------------------------------------------------------------
def test_configure_show_delete_and_tenant_isolation(api: Api, key_a: str, key_b: str) -> None:
    assert api.client.get("/v1/integrations/mlflow", headers=api.auth(key_a)).status_code == 404
    put = configure(api, key_a, tracking_uri=PUBLIC_URI + "/", experiment="faces", registered_model="faces-net",
                    token="mlflow-token-s3cret")
    assert put.status_code == 200, put.text
    shown = api.client.get("/v1/integrations/mlflow", headers=api.auth(key_a))
    assert shown.status_code == 200
    view = shown.json()
    assert (view["tracking_uri"], view["experiment"], view["registered_model"]) == (PUBLIC_URI, "faces", "faces-net")
    assert (view["auth"], view["alias"]) == ("token", "hardened")
    assert "s3cret" not in put.text + shown.text and "token" not in view

    basic = configure(api, key_a, tracking_uri=PUBLIC_URI, experiment="faces", username="ml", password="pw-s3cret")
    assert basic.status_code == 200 and basic.json()["auth"] == "basic" and basic.json()["registered_model"] is None
    assert "pw-s3cret" not in basic.text and "username" not in basic.json()

    # another tenant: its own (absent) configuration, never tenant-a's
    for method in ("GET", "DELETE"):
        other = api.client.request(method, "/v1/integrations/mlflow", headers=api.auth(key_b))
        assert other.status_code == 404 and other.json()["code"] == "not_found", other.text
    with session_scope(api.settings.db_url) as session:  # a `jobs` key of the same tenant: 403
        jobs_key = create_api_key(session, "tenant-a", scopes=("jobs",))
    assert api.client.get("/v1/integrations/mlflow", headers=api.auth(jobs_key)).status_code == 403
    assert configure(api, jobs_key, tracking_uri=PUBLIC_URI, experiment="x").status_code == 403

    assert api.client.delete("/v1/integrations/mlflow", headers=api.auth(key_a)).status_code == 204
    assert api.client.get("/v1/integrations/mlflow", headers=api.auth(key_a)).status_code == 404


def test_configure_refuses_unsafe_uris_and_half_credentials(api: Api, key_a: str) -> None:
    def field(**body: Any) -> str:
        response = configure(api, key_a, **{"experiment": "faces", **body})
        assert response.status_code == 422, response.text
        return response.json()["errors"][0]["field"]

    # SSRF: the webhooks' check (loopback, private, link-local, IPv6, names that resolve there)
    for uri in ("http://127.0.0.1:5000", "http://localhost:5000", "http://[::1]/", "http://10.0.0.1/",
                "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/", "ftp://93.184.215.14/",
                "file:///etc/passwd", "http:///nohost"):
        assert field(tracking_uri=uri) == "tracking_uri", uri
    assert field(tracking_uri="https://user:pw@93.184.215.14/") == "tracking_uri"  # credentials not in the URL
    assert field(tracking_uri=PUBLIC_URI, username="ml") == "password"
    assert field(tracking_uri=PUBLIC_URI, token="t", username="ml", password="pw") == "token"
    assert field(tracking_uri=PUBLIC_URI, experiment="") == "experiment"
    assert api.client.get("/v1/integrations/mlflow", headers=api.auth(key_a)).status_code == 404
    # a refused private address says which setting allows it
    refused = configure(api, key_a, experiment="faces", tracking_uri="http://127.0.0.1:5000").json()
    assert "MIDRE_MLFLOW_ALLOW_PRIVATE=true" in refused["errors"][0]["message"]


def test_flatten_makes_dotted_params() -> None:
    config = {"data": {"image_size": 16, "num_private": None}, "defense": {"name": "midre", "a_h": 0.4},
              "milestones": [0.75, 0.9], "defenses": [{"name": "nodef"}, {"name": "midre", "a_h": 0.8}],
              "augment": [], "attack_options": {}, "amp": True}
    assert flatten(config) == {
        "data.image_size": "16", "data.num_private": "null", "defense.name": "midre", "defense.a_h": "0.4",
        "milestones": "[0.75,0.9]", "defenses.0.name": "nodef", "defenses.1.name": "midre", "defenses.1.a_h": "0.8",
        "augment": "[]", "attack_options": "{}", "amp": "true"}


# -- the hand-off against a real MLflow server ---------------------------------------------------
@pytest.fixture
def mlflow_api(tmp_path: Path) -> Iterator[Api]:
    """An API whose operator allows loopback MLflow servers; no deliverer of its own (the test runs one)."""
    settings = make_settings(tmp_path / "home", mlflow_allow_private=True, webhooks_in_api=False, **QUICK)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(settings, client)
    dispose_all()


def test_succeeded_train_jobs_are_logged_and_registered(mlflow_api: Api, mlflow_server: MlflowServer) -> None:
    api = mlflow_api
    key = api.key("tenant-a")
    put = configure(api, key, tracking_uri=mlflow_server.url, experiment="midre-tests",
                    registered_model="digits-hardened", token="not-checked-by-this-server")
    assert put.status_code == 200, put.text

    deliverer = WebhookDeliverer(api.settings)  # what every worker runs
    deliverer.start()
    try:
        latencies = []
        jobs = []
        for spec in (SMALL_TRAIN, {**SMALL_TRAIN, "defense": {"name": "midre", "a_h": 0.8}}):
            job_id = run_job(api, key, spec)
            ended = time.monotonic()
            logged = wait_for(lambda j=job_id: [m for m in mlflow_events(api, key, j) if "logged run" in m], 120,
                              interval=0.1, what="the MLflow hand-off")
            latencies.append(time.monotonic() - ended)
            jobs.append(job_id)
            assert len(logged) == 1 and logged[0].startswith("mlflow: logged run "), logged
    finally:
        deliverer.stop()
    with session_factory(api.settings.db_url)() as session:
        tries = session.scalars(select(WebhookAttempt).join(WebhookDelivery).where(WebhookDelivery.channel == "mlflow")
                                .order_by(WebhookAttempt.id)).all()
        assert [t.status_code for t in tries] == [200, 200], "each hand-off made in one try"
    print(f"job end -> MLflow run logged and registered: {', '.join(f'{s:.2f} s' for s in latencies)} "
          f"(the tries themselves: {', '.join(f'{t.duration_ms / 1000:.2f} s' for t in tries)})")
    assert "'digits-hardened' version 2 is 'hardened'" in mlflow_events(api, key, jobs[1])[0]

    experiment = mlflow_server.api("experiments/get-by-name", experiment_name="midre-tests")["experiment"]
    runs = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search",
                      json={"experiment_ids": [experiment["experiment_id"]]}, timeout=30).json()["runs"]
    by_job = {r["info"]["run_name"]: r for r in runs}
    assert set(by_job) == set(jobs), "one run per job, named after it"

    job = api.client.get(f"/v1/jobs/{jobs[0]}", headers=api.auth(key)).json()
    run = by_job[jobs[0]]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == flatten(job["resolved"]["config"])  # the resolved config, every default included
    assert (params["epochs"], params["defense.name"], params["defense.a_h"], params["lr"]) == ("1", "midre", "0.4",
                                                                                               "0.001")
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics == pytest.approx(job["metrics"]) and "acc" in metrics
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["midre.job_id"] == jobs[0] and tags["midre.kind"] == "train"
    assert (tags["midre.defense"], tags["midre.a_h"]) == ("midre", "0.4")

    # artifacts: the job's model.json at the root, the model files under model/, byte for byte
    run_id = run["info"]["run_id"]
    root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    listed = httpx.get(f"{mlflow_server.url}/api/2.0/mlflow-artifacts/artifacts", params={"path": f"{root}/model"},
                       timeout=30).json()
    assert sorted(f["path"] for f in listed["files"]) == ["model.json", "model.safetensors"]
    stored = {a["name"]: a["sha256"] for a in
              api.client.get(f"/v1/jobs/{jobs[0]}/artifacts", headers=api.auth(key)).json()["items"]}
    for name in ("model.json", "model.safetensors"):
        assert hashlib.sha256(mlflow_server.artifact(f"{root}/model/{name}")).hexdigest() == stored[name]
    assert hashlib.sha256(mlflow_server.artifact(f"{root}/model.json")).hexdigest() == stored["model.json"]

    # the registry: version 1 for the first job, version 2 for the second, which holds the alias
    versions = mlflow_server.api("model-versions/search", filter="name='digits-hardened'")["model_versions"]
    by_version = {v["version"]: v for v in versions}
    assert set(by_version) == {"1", "2"}
    first = by_version["1"]
    assert first["run_id"] == run_id and first["source"] == f"{run['info']['artifact_uri']}/model"
    assert {t["key"]: t["value"] for t in first["tags"]} == {"job_id": jobs[0], "defense": "midre", "a_h": "0.4"}
    hardened = mlflow_server.api("registered-models/alias", name="digits-hardened", alias="hardened")
    assert hardened["model_version"]["version"] == "2" and hardened["model_version"]["run_id"] == by_job[jobs[1]][
        "info"]["run_id"]
    assert {t["key"]: t["value"] for t in hardened["model_version"]["tags"]}["a_h"] == "0.8"

    # a retry of the first hand-off (as after a try that failed at its last request) finds its run and
    # its version again, and leaves the alias on the newer version
    sessions = session_factory(api.settings.db_url)
    store = LocalStore(api.settings.storage_dir)
    with sessions() as session:
        first_message = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.job_id == jobs[0])).one()
    again = send(api.settings, store, load(sessions, store, api.settings, first_message), check_target)
    assert f"logged run {run_id}" in again and "version 1 (a newer version is 'hardened')" in again, again
    assert len(httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", timeout=30,
                          json={"experiment_ids": [experiment["experiment_id"]]}).json()["runs"]) == 2
    assert len(mlflow_server.api("model-versions/search", filter="name='digits-hardened'")["model_versions"]) == 2

    # an attack_eval job of the first model: its own run, and its AttAcc on that model's version
    attack_job = add_succeeded_job(api, key, "attack_eval", {"kind": "attack_eval", "model_job": jobs[0], **STUDY},
                                   {"midre.mi-face.attacc_top1": 12.5, "midre.mi-face.knn_dist": 80.0})
    assert deliver_due(api.settings, sessions) == 1
    said = mlflow_events(api, key, attack_job)
    assert len(said) == 1 and "AttAcc tagged on 'digits-hardened' version 1" in said[0], said
    first = mlflow_server.api("model-versions/get", name="digits-hardened", version="1")["model_version"]
    assert {t["key"]: t["value"] for t in first["tags"]}["attacc.mi-face"] == "12.5"
    runs = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", timeout=30,
                      json={"experiment_ids": [experiment["experiment_id"]]}).json()["runs"]
    attack_run = next(r for r in runs if r["info"]["run_name"] == attack_job)
    attack_tags = {t["key"]: t["value"] for t in attack_run["data"]["tags"]}
    assert (attack_tags["midre.kind"], attack_tags["midre.model_job"]) == ("attack_eval", jobs[0])
    assert {m["key"]: m["value"] for m in attack_run["data"]["metrics"]}["midre.mi-face.attacc_top1"] == 12.5

    # people reviewed the audit: a follow-up adds the human figures to the same run and the audited version
    with session_scope(api.settings.db_url) as session:
        session.add(Metric(job_id=attack_job, name="midre.mi-face.human_attacc_top1", value=6.25, epoch=None))
        assert enqueue_job_end(session, session.get(Job, attack_job), HUMAN_EVENT) == 1
    assert deliver_due(api.settings, sessions) == 1
    said = mlflow_events(api, key, attack_job)
    assert any("added the human review figures to run" in m and "human AttAcc tagged on" in m for m in said), said
    runs_after = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", timeout=30,
                            json={"experiment_ids": [experiment["experiment_id"]]}).json()["runs"]
    assert len(runs_after) == len(runs), "no new run"
    attack_run = next(r for r in runs_after if r["info"]["run_name"] == attack_job)
    assert {m["key"]: m["value"] for m in attack_run["data"]["metrics"]}["midre.mi-face.human_attacc_top1"] == 6.25
    first = mlflow_server.api("model-versions/get", name="digits-hardened", version="1")["model_version"]
    assert {t["key"]: t["value"] for t in first["tags"]}["human_attacc.mi-face"] == "6.25"

    # the consumer's side, as docs/integrations.md shows it: the `hardened` model loads with midre
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from midre.checkpoint import load_checkpoint

    version = MlflowClient(mlflow_server.url).get_model_version_by_alias("digits-hardened", "hardened")
    folder = download_artifacts(run_id=version.run_id, artifact_path="model", tracking_uri=mlflow_server.url,
                                dst_path=str(api.settings.home / "downloaded"))
    model, card = load_checkpoint(folder)
    assert card["defense"]["a_h"] == 0.8 and not model.training

    # a harden job that recommends a candidate registers that checkpoint, tagged with the candidate's AttAcc
    files = {name: api.client.get(f"/v1/jobs/{jobs[1]}/artifacts/{name}", headers=api.auth(key)).content
             for name in ("model.json", "model.safetensors")}
    recommendation = {"recommendation": {"defense": "midre-a_h0.8", "reason": "lowest AttAcc"}}
    files["report.json"] = json.dumps(recommendation).encode()
    harden = {"kind": "harden", "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"], "seeds": 1,
              "candidates": ["midre:a_h=0.8"], "device": "cpu"}
    harden_job = add_succeeded_job(api, key, "harden", harden, {"nodef.mi-face.attacc_top1": 30.0,
                                                                "midre-a_h0.8.mi-face.attacc_top1": 7.0}, files)
    assert deliver_due(api.settings, sessions) == 1
    assert any("version 3 is 'hardened'" in m for m in mlflow_events(api, key, harden_job)), \
        mlflow_events(api, key, harden_job)
    third = mlflow_server.api("model-versions/get", name="digits-hardened", version="3")["model_version"]
    tags = {t["key"]: t["value"] for t in third["tags"]}
    assert (tags["job_id"], tags["defense"], tags["attacc.mi-face"]) == (harden_job, "midre-a_h0.8", "7")


def test_mlflow_down_the_job_succeeds_and_the_handoff_is_retried(mlflow_api: Api) -> None:
    api = mlflow_api
    key = api.key("tenant-a")
    assert configure(api, key, tracking_uri=f"http://127.0.0.1:{free_port()}", experiment="x",
                     registered_model="m").status_code == 200
    job_id = run_job(api, key, SMALL_TRAIN)
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(key)).json()["status"] == "succeeded"

    sessions = session_factory(api.settings.db_url)
    assert deliver_due(api.settings, sessions) == 1
    time.sleep(0.6)  # past the 0.5 s back-off
    assert deliver_due(api.settings, sessions) == 1
    said = mlflow_events(api, key, job_id)
    assert len(said) == 2 and all(m.startswith("mlflow: unreachable, retrying in ") for m in said), said
    assert "(try 1)" in said[0] and "(try 2)" in said[1]
    print(said[1])
    with sessions() as session:
        row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
        assert (row.channel, row.state, row.attempts) == ("mlflow", "pending", 2)
        tries = session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == row.id)).all()
        assert [t.error.split(":")[0] for t in tries] == ["unreachable", "unreachable"]
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(key)).json()["status"] == "succeeded"

    # deleting the integration drops the hand-offs not yet made
    assert api.client.delete("/v1/integrations/mlflow", headers=api.auth(key)).status_code == 204
    with sessions() as session:
        assert session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).all() == []


def test_a_server_keeping_artifacts_at_its_own_path_is_refused_with_the_fix(mlflow_api: Api,
                                                                           mlflow_server: MlflowServer) -> None:
    """An experiment whose artifacts live at a path of the server's (``--default-artifact-root``): the
    hand-off says how to fix it and the run shows FAILED in MLflow; MIDRE writes nothing to that path."""
    api = mlflow_api
    key = api.key("tenant-local-root")
    local = api.settings.home / "server-side-artifacts"
    created = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/experiments/create", timeout=30,
                         json={"name": "local-root", "artifact_location": str(local)})
    assert created.status_code == 200, created.text
    assert configure(api, key, tracking_uri=mlflow_server.url, experiment="local-root").status_code == 200
    job_id = run_job(api, key, SMALL_TRAIN)
    assert deliver_due(api.settings, session_factory(api.settings.db_url)) == 1
    (said,) = mlflow_events(api, key, job_id)
    assert "--artifacts-destination" in said and "new experiment name" in said and "server-side-artifacts" in said
    assert not local.exists()
    runs = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", timeout=30,
                      json={"experiment_ids": [created.json()["experiment_id"]]}).json()["runs"]
    assert [r["info"]["status"] for r in runs] == ["FAILED"]


def test_tenants_without_mlflow_queue_nothing(mlflow_api: Api) -> None:
    api = mlflow_api
    key = api.key("tenant-b")
    job_id = run_job(api, key, SMALL_TRAIN)
    with session_factory(api.settings.db_url)() as session:
        assert session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).all() == []


def test_a_pipeline_hands_off_its_defended_target(mlflow_api: Api) -> None:
    """What a pipeline's hand-off sends (read from the DB and the store, no request made): its reports,
    the defended target's model files (not NoDef's), the defense of that target and AttAcc per attack."""
    api = mlflow_api
    key = api.key("tenant-a")
    assert configure(api, key, tracking_uri=PUBLIC_URI, experiment="studies", registered_model="m").status_code == 200
    files = {"report.html": b"<html>", "report.json": b"{}", "plots/tradeoff.png": b"png",
             "targets/nodef/seed0/model.json": b'{"defense": {"name": "nodef"}}',
             "targets/nodef/seed0/model.safetensors": b"nodef weights",
             "targets/midre/seed0/model.json": b'{"defense": {"name": "midre", "a_h": 0.4, "a_l": 0.1}}',
             "targets/midre/seed0/model.safetensors": b"midre weights"}
    metrics = {"midre.mi-face.attacc_top1": 12.5, "nodef.mi-face.attacc_top1": 40.0, "midre.mi-face.acc": 90.0}
    job_id = add_succeeded_job(api, key, "pipeline", PIPELINE, metrics, files)
    sessions = session_factory(api.settings.db_url)
    with sessions() as session:
        row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
        assert (row.channel, row.event_type, row.webhook_id, row.state) == ("mlflow", "mlflow.run", None, "pending")

    store = LocalStore(api.settings.storage_dir)
    handoff = load(sessions, store, api.settings, row.id)
    assert handoff is not None and handoff.job_id == job_id
    sent = {path: store.path(sha).read_bytes() for sha, path in handoff.files}
    assert sent == {"report.html": b"<html>", "report.json": b"{}", "model/model.json": files[
        "targets/midre/seed0/model.json"], "model/model.safetensors": b"midre weights"}
    assert handoff.params["defenses.1.name"] == "midre" and handoff.params["attacks"] == '["mi-face"]'
    assert handoff.metrics == metrics
    assert (handoff.tags["midre.kind"], handoff.tags["midre.defense"], handoff.tags["midre.a_h"]) == (
        "pipeline", "midre", "0.4")
    assert handoff.version_tags == {"job_id": job_id, "defense": "midre", "a_h": "0.4", "attacc.mi-face": "12.5"}


class _Answering(ThreadingHTTPServer):
    """A loopback HTTP server that answers every request with ``status`` (and a ``Location``) and
    records (method, path, Authorization header) of each."""

    def __init__(self, status: int, location: str = "") -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                server.seen.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_redirecting_server_fails_the_try_and_is_not_followed(mlflow_api: Api) -> None:
    api = mlflow_api
    key = api.key("tenant-a")
    inside, redirecting = _Answering(200), None
    try:
        redirecting = _Answering(302, location=f"{inside.url}/latest/meta-data/")
        assert configure(api, key, tracking_uri=redirecting.url, experiment="x", token="tok-s3cret").status_code == 200
        job_id = add_succeeded_job(api, key, "train", SMALL_TRAIN, {"acc": 50.0})
        assert deliver_due(api.settings, session_factory(api.settings.db_url)) == 1
        assert [(m, a) for m, _, a in redirecting.seen] == [("GET", "Bearer tok-s3cret")]  # the token goes there
        assert inside.seen == [], "the redirect was followed"
        said = mlflow_events(api, key, job_id)
        assert len(said) == 1 and "; retrying in" in said[0] and "(try 1)" in said[0], said
        print(said[0])
        assert "s3cret" not in str(events(api, key, job_id))
    finally:
        for server in (inside, redirecting):
            if server is not None:
                server.shutdown()
                server.server_close()


# -- continuous audit: every new registered version audited and tagged ---------------------------
#: The policy's audit: DeepInversion on the ten digits the models were trained on (as for uploads).
WATCH_AUDIT = POLICY_SPEC
#: Two versions of one model, the second clearly leakier: barely trained, then trained well.
VERSIONS = ({"training": {"epochs": 1, "image_size": 16, "lr": 1e-5}},
            {"training": {"epochs": 8, "image_size": 16}})


def test_a_new_registered_version_is_audited_and_tagged_and_a_leakier_one_regresses(
        tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from services.queue.dispatch import Dispatcher
    from services.worker.reaper import reap_once

    settings = make_settings(tmp_path / "home", mlflow_allow_private=True, webhooks_in_api=False,
                             webhooks_allow_private=True, audit_poll_s=0.01, **QUICK)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(settings, client)
        key = api.key("registry")
        assert configure(api, key, tracking_uri=mlflow_server.url, experiment="watched",
                         registered_model="face-id").status_code == 200
        hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["audit.regressed"]},
                           headers=api.auth(key))
        assert hook.status_code == 201, hook.text
        policy = client.post("/v1/audit-policies", json={"name": "registry", "trigger": "mlflow_model_version",
                                                         "registered_model": "face-id", "spec": WATCH_AUDIT},
                             headers=api.auth(key)).json()
        sessions = session_factory(settings.db_url)
        tags = []
        for version, training in enumerate(VERSIONS, start=1):
            spec = {**SMALL_TRAIN, "data": {"channels": 1, "max_images_per_identity": 40}, **training,
                    "training": {**SMALL_TRAIN["training"], **training["training"]}}
            run_job(api, key, spec)
            assert deliver_due(settings, sessions) == 1  # the hand-off registers the new version
            reap_once(settings, Dispatcher(settings))  # what every worker's reaper does: sees it, starts an audit
            audits = [j for j in client.get("/v1/jobs", params={"kind": "attack_eval"},
                                            headers=api.auth(key)).json()["items"] if j.get("trigger")]
            assert len(audits) == version and audits[0]["trigger"]["mlflow_version"] == str(version)
            assert run_job_inline(settings, audits[0]["id"]) == "succeeded"
            while deliver_due(settings, sessions):  # the audit's own run, the version's tags, webhooks
                pass
            got = mlflow_server.api("model-versions/get", name="face-id", version=str(version))["model_version"]
            tags.append({t["key"]: t["value"] for t in got["tags"]})
        assert tags[0]["midre.verdict"] == "audited" and "midre.attacc_top1.deepinversion" in tags[0]
        assert tags[0]["midre.attack_id.deepinversion"].startswith("deepinversion@")
        assert tags[1]["midre.verdict"] == "regressed: deepinversion", tags
        assert float(tags[1]["midre.attacc_top1.deepinversion"]) > float(tags[0]["midre.attacc_top1.deepinversion"])
        state = client.get(f"/v1/audit-policies/{policy['id']}", headers=api.auth(key)).json()["state"]
        assert set(state["versions"]) == {"1", "2"}
        with sessions() as session:
            sent = session.scalars(select(WebhookDelivery.event_type).where(
                WebhookDelivery.channel == "webhook")).all()
        assert sent == ["audit.regressed"]
    dispose_all()
