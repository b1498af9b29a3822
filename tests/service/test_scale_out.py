"""Workers that share nothing but the database, the broker and the object store (PostgreSQL + Redis + a
real S3-compatible server on loopback, each process with its own empty ``MIDRE_HOME``).

A dataset uploaded to the API reaches the workers only through the object store; a study fans out across
both workers, one of which is SIGKILLed while it runs a unit: the other runs that unit again from what the
store holds, and no other unit runs twice; every artifact downloads with its sha256 and exists as an object
under the prefix, and no machine's folder holds another's files. Then the store goes away: a download the API
has not cached answers 503 with ``Retry-After``, a unit that meets the outage is retried (the job does not
vanish) and finishes once the store is back.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.db.models import JobEvent, JobUnit
from services.db.session import dispose_all, session_scope
from tests.service._fleet import Fleet, S3Server
from tests.service._support import TRAIN_SPEC, face_folder_members, make_zip, wait_for
from tests.service.conftest import REDIS_URL

pytest.importorskip("midre.plan")
pytest.importorskip("moto")

#: NoDef and MIDRE x one seed: a judge, two targets and two attack runs that can run at once on two workers.
STUDY: dict[str, Any] = {
    "kind": "pipeline", "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"], "seeds": 1, "device": "cpu",
    "defense": {"name": "midre", "a_h": 0.4},
    "training": {"epochs": 1, "image_size": 32, "batch_size": 64, "seed": 0},
    "data": {"channels": 1, "max_images_per_identity": 12},
    "evaluation": {"arch": "cnn-small", "epochs": 1, "per_identity": 1, "identities": 2, "feature_identities": 0},
    "attack_budgets": {"mi-face": {"steps": 3}},
}


@pytest.fixture
def fleet(tmp_path: Path, pg_databases: Any, redis_prefix: str) -> Iterator[Fleet]:
    s3 = S3Server(tmp_path / "s3.log")
    fleet = None
    try:
        fleet = Fleet(tmp_path, s3, pg_databases.create(), REDIS_URL, redis_prefix, workers=2,
                      unit_retry_s=1.0, s3_timeout_s=3.0, max_attempts=6)
        yield fleet
    finally:
        if fleet is not None:
            fleet.stop()
        s3.stop()
        dispose_all()


def _units(fleet: Fleet, job_id: str) -> list[JobUnit]:
    with session_scope(fleet.shared["database_url"]) as session:
        rows = list(session.scalars(select(JobUnit).where(JobUnit.job_id == job_id)))
        session.expunge_all()
    return rows


def _download_checked(fleet: Fleet, job_id: str) -> list[dict[str, Any]]:
    items = fleet.http.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    assert items
    for item in items:
        r = fleet.http.get(f"/v1/jobs/{job_id}/artifacts/{item['name']}")
        assert r.status_code == 200, (item["name"], r.status_code, r.text[:300])
        assert hashlib.sha256(r.content).hexdigest() == item["sha256"] == r.headers["x-checksum-sha256"]
    return items


def test_study_fans_out_over_machines_that_share_only_db_broker_and_store(fleet: Fleet) -> None:
    # A dataset uploaded to the API: its images exist on the API's machine and in the store only.
    archive = make_zip(face_folder_members(identities=3, per_identity=6))
    r = fleet.http.post("/v1/datasets", files={"file": ("faces.zip", archive, "application/zip")},
                        data={"name": "faces"})
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    assert fleet.s3.keys(f"{fleet.prefix}/datasets/{dataset}/")

    study = fleet.submit(STUDY)

    # Both workers take units of the study; one of them is SIGKILLed (a lost machine) while it runs one.
    def two_running() -> list[JobUnit] | None:
        running = [u for u in _units(fleet, study) if u.status == "running"]
        return running if len({fleet.worker_of(u.worker) for u in running}) == 2 else None

    running = wait_for(two_running, 240, 0.2, "two units of the study running on two workers at once")
    victim = fleet.worker_of(running[0].worker)
    lost = {u.key for u in running if fleet.worker_of(u.worker) == victim}
    fleet.workers[victim].kill()
    survivor = 1 - victim
    trained = fleet.submit(TRAIN_SPEC | {"dataset": dataset, "data": {"max_images_per_identity": 6}})
    for job_id in (study, trained):
        job = fleet.wait(job_id)
        assert job["status"] == "succeeded", (job, fleet.workers[survivor].log()[-3000:])

    units = _units(fleet, study)
    assert len(units) >= 5 and all(u.status == "succeeded" for u in units)
    # the lost unit ran again on the other machine, from what the store held; no other unit ran twice
    assert {u.key: u.attempt for u in units if u.key in lost} == dict.fromkeys(lost, 2)
    assert all(u.attempt == 1 for u in units if u.key not in lost)
    assert all(fleet.worker_of(u.worker) == survivor for u in units if u.key in lost)

    # Every artifact downloads with its sha256 and is an object under the prefix; the working files are gone.
    blobs = set(fleet.s3.keys(f"{fleet.prefix}/blobs/"))
    for job_id in (study, trained):
        for item in _download_checked(fleet, job_id):
            assert f"{fleet.prefix}/blobs/{item['sha256'][:2]}/{item['sha256']}" in blobs
        assert not fleet.s3.keys(f"{fleet.prefix}/work/{job_id}/")
    # Shared nothing: no machine keeps a store of its own, the workers saw the upload only through the store.
    for home in fleet.homes:
        assert not (home / "data" / "blobs").exists()
    assert any((home / "data" / "datasets" / dataset).is_dir() for home in fleet.homes[1:])
    assert sorted(p.name for p in (fleet.homes[1 + survivor] / "data" / "datasets" / dataset).rglob("*.png"))

    # The store goes away: a download the API has not cached is a 503 that says when to retry ...
    fleet.s3.proxy.down()
    try:
        shutil.rmtree(fleet.homes[0] / "data" / "blob-cache", ignore_errors=True)
        r = fleet.http.get(f"/v1/jobs/{trained}/artifacts/model.safetensors")
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after") and r.json()["code"] == "storage_unavailable"
        assert fleet.http.get("/readyz").json()["checks"]["storage"].startswith("error")
        # ... and a unit that meets the outage is queued again instead of failing its job.
        job_id = fleet.submit(TRAIN_SPEC | {"training": TRAIN_SPEC["training"] | {"epochs": 1}})

        def retried() -> bool:
            with session_scope(fleet.shared["database_url"]) as session:
                return session.scalar(select(JobEvent.id).where(
                    JobEvent.job_id == job_id, JobEvent.message.contains("retrying"))) is not None

        wait_for(retried, 120, what="a unit to be retried while the store is away")
        assert fleet.http.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
    finally:
        fleet.s3.proxy.up()
    job = fleet.wait(job_id)
    assert job["status"] == "succeeded", job
    assert max(u.attempt for u in _units(fleet, job_id)) >= 2
    _download_checked(fleet, job_id)
    _download_checked(fleet, trained)  # the 503 above lost nothing
