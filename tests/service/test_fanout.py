"""Studies fanned out over real worker processes (embedded: SQLite + file broker, ``midre serve``'s API).

A tiny digits pipeline runs on two ``midre worker`` processes at once: both take units of the same
study; one of them is SIGKILLed while it runs a unit; the study still finishes, every unit succeeded
exactly once, the unit that was running on the dead worker shows attempt 2 and no other unit ran
twice. A cancel stops the whole graph: no unit starts after it and none is left running. A tiny
harden study recommends a checkpoint that is then a model of its own (or says it recommends none).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.db.keys import create_api_key
from services.db.migrate import upgrade
from services.db.models import JobEvent, JobUnit
from services.db.session import dispose_all, session_factory, session_scope
from services.settings import Settings
from tests.service._support import ApiProcess, WorkerProcess, wait_for
from tests.service.conftest import make_settings

pytest.importorskip("midre.plan")

#: A study small enough for two shared cores, with units long enough to be caught running.
STUDY: dict[str, Any] = {
    "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"], "seeds": 1, "device": "cpu",
    "training": {"epochs": 1, "image_size": 32, "batch_size": 64, "seed": 0},
    "data": {"channels": 1, "max_images_per_identity": 12},
    "evaluation": {"arch": "cnn-small", "epochs": 1, "per_identity": 1, "identities": 2, "feature_identities": 0},
    "attack_budgets": {"mi-face": {"steps": 3}},
}
PIPELINE = {"kind": "pipeline", "defense": {"name": "midre", "a_h": 0.4}, **STUDY}


class Service:
    """The API and two worker processes on one embedded home."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings: Settings = make_settings(tmp_path / "home", worker_threads=1)
        self.settings.ensure_dirs()
        upgrade(self.settings.db_url)
        with session_scope(self.settings.db_url) as session:
            self.key = create_api_key(session, "fanout")
        self.api = ApiProcess(self.settings, tmp_path / "api.log")
        self.workers = [WorkerProcess(self.settings, tmp_path / f"worker{i}.log", queues="cpu") for i in range(2)]
        self.api.wait_ready()
        for worker in self.workers:
            worker.wait_ready()
        self.http = httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.http.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/jobs/{job_id}").json())

    def units(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.http.get(f"/v1/jobs/{job_id}/units").json()["items"])

    def finished(self, job_id: str) -> dict[str, Any] | None:
        job = self.job(job_id)
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    def worker_of(self, unit_worker: str) -> WorkerProcess:
        """The worker process whose pool process is ``host#ns:pid`` (pool processes share its group)."""
        pid = int(unit_worker.rpartition(":")[2])
        group = os.getpgid(pid)
        return next(w for w in self.workers if w.proc.pid == group)

    def unit_rows(self, job_id: str) -> dict[str, JobUnit]:
        with session_factory(self.settings.db_url)() as session:
            return {u.key: u for u in session.scalars(select(JobUnit).where(JobUnit.job_id == job_id))}

    def unit_events(self, job_id: str) -> list[JobEvent]:
        with session_factory(self.settings.db_url)() as session:
            query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "unit").order_by(JobEvent.id)
            return list(session.scalars(query))

    def stop(self) -> None:
        self.http.close()
        for worker in self.workers:  # both shut down at once
            worker.terminate()
        for worker in self.workers:
            worker.stop()
        self.api.stop()
        dispose_all()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    try:
        yield svc
    finally:
        svc.stop()


def logs(service: Service) -> str:
    return "\n".join(w.log()[-3000:] for w in service.workers)


# Slow since the fleet test covers it in the default suite: tests/service/test_scale_out.py runs a study on two
# `midre worker` processes (PostgreSQL + Redis + object store) and SIGKILLs one while it runs a unit; this one
# does the same on the embedded stack (SQLite + file broker, one shared folder) and checks the cost estimate.
@pytest.mark.slow
def test_two_workers_share_a_study_and_a_killed_worker_loses_only_its_unit(service: Service) -> None:
    job_id = service.submit(PIPELINE)

    def two_running() -> list[dict[str, Any]] | None:
        running = [u for u in service.units(job_id) if u["status"] == "running"]
        return running if len({u["worker"] for u in running}) == 2 else None

    running = wait_for(two_running, 240, 0.2, "two units of the study running on two workers at once")
    assert all("1 torch threads" in w.log() for w in service.workers)  # MIDRE_WORKER_THREADS=1 applied
    victim = service.worker_of(running[0]["worker"])
    victim_pools = {u["worker"] for u in running if service.worker_of(u["worker"]) is victim}
    victim.kill()
    lost_worker_units = {k for k, u in service.unit_rows(job_id).items()
                         if u.status == "running" and u.worker in victim_pools}
    assert lost_worker_units, "the killed worker was running no unit"

    job = wait_for(lambda: service.finished(job_id), 600, 1.0, "the study to finish")
    assert job["status"] == "succeeded", (job, logs(service))
    rows = service.unit_rows(job_id)
    assert rows and all(u.status == "succeeded" for u in rows.values())
    assert job["units"]["total"] == job["units"]["succeeded"] == len(rows)
    assert {k: u.attempt for k, u in rows.items() if k in lost_worker_units} == dict.fromkeys(lost_worker_units, 2)
    assert all(u.attempt == 1 for k, u in rows.items() if k not in lost_worker_units)
    events = service.unit_events(job_id)
    succeeded = Counter(e.data["unit"] for e in events if e.data["status"] == "succeeded")
    assert succeeded == Counter(list(rows))  # each unit ran to completion once
    started = Counter(e.data["unit"] for e in events if e.data["status"] == "running")
    assert started == Counter({k: 2 if k in lost_worker_units else 1 for k in rows})
    assert len({e.data["worker"] for e in events if e.data["status"] == "running"}) >= 2
    names = {a["name"] for a in service.http.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    assert {"report.json", "report.html"} <= names
    # the cost estimate came before the first unit started, without a server path in it
    listed = service.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    kinds = [e["type"] for e in listed]
    estimate = listed[kinds.index("estimate")]
    assert kinds.index("estimate") < kinds.index("unit"), kinds
    assert estimate["data"]["total_seconds"] > 0 and estimate["data"]["peak_bytes"] > 0
    assert "seconds" in estimate["message"] and str(service.settings.storage_dir) not in str(estimate)


@pytest.mark.slow  # the same graph cancel runs in-process in test_worker_units.py
def test_cancel_stops_the_whole_graph(service: Service) -> None:
    job_id = service.submit(PIPELINE)
    wait_for(lambda: any(u["status"] == "running" for u in service.units(job_id)), 240, 0.2, "a running unit")
    r = service.http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202, r.text
    job = wait_for(lambda: service.finished(job_id), 120, 0.5, "the study to stop")
    assert job["status"] == "cancelled", job
    rows = service.unit_rows(job_id)
    assert {u.status for u in rows.values()} <= {"succeeded", "cancelled"}
    assert any(u.status == "cancelled" for u in rows.values())
    with session_factory(service.settings.db_url)() as session:
        cancel_at = session.scalar(select(JobEvent.id).where(JobEvent.job_id == job_id,
                                                             JobEvent.message == "cancel requested"))
    assert cancel_at is not None
    started_after = [e.data["unit"] for e in service.unit_events(job_id)
                     if e.id > cancel_at and e.data["status"] == "running"]
    assert started_after == []  # no unit started once the cancel was requested
    with session_factory(service.settings.db_url)() as session:
        cancelled_at = session.scalar(select(JobEvent.created_at).where(JobEvent.id == cancel_at))
    assert all(u.dispatched_at is None or u.dispatched_at <= cancelled_at for u in rows.values())  # none sent after
    # The workers are free again: a train job runs at once.
    train = service.submit({"kind": "train", "dataset": "digits", "arch": "cnn-small", "device": "cpu",
                            "training": {"epochs": 1, "image_size": 16}, "data": {"max_images_per_identity": 20}})
    assert wait_for(lambda: service.finished(train), 180, 0.5, "a train job")["status"] == "succeeded"


@pytest.mark.slow  # the recommendation-as-model path runs in-process in test_worker_units.py
def test_harden_recommends_a_model_of_its_own(service: Service) -> None:
    spec = {"kind": "harden", **STUDY, "candidates": ["midre:a_h=0.4|0.8"], "max_accuracy_drop": 5.0,
            "refine": False, "finalists": 1}
    job_id = service.submit(spec)
    job = wait_for(lambda: service.finished(job_id), 900, 1.0, "the harden study")
    assert job["status"] == "succeeded", (job, logs(service))
    report = service.http.get(f"/v1/jobs/{job_id}/artifacts/report.json").json()
    assert "frontier" in report and "recommendation" in report
    names = {a["name"] for a in service.http.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    events = service.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    assert [e for e in events if e["type"] == "warning"], "the single-seed study gave no warning event"
    attack = {"kind": "attack_eval", "model": job_id, "attacks": ["mi-face"], "seeds": 1, "device": "cpu",
              "evaluation": STUDY["evaluation"], "attack_budgets": STUDY["attack_budgets"]}
    if report["recommendation"] is None:
        assert "model.json" not in names
        assert service.http.post("/v1/jobs", json=attack).status_code == 422
        return
    assert {"model.json", "model.safetensors", "recommended/model.json"} <= names
    card = service.http.get(f"/v1/models/{job_id}").json()
    assert card["arch"] == "cnn-small" and card["checkpoint"]["name"] == "model.safetensors"
    audit = service.http.post("/v1/jobs", json=attack)
    assert audit.status_code == 201, audit.text
