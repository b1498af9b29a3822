"""Queues and the workers that exist: on a CPU-only deployment a job of device ``auto`` runs on the ``cpu``
queue, ``/readyz`` names the queue nobody consumes, and a job queued there gets a ``no_worker`` warning."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.db.keys import create_api_key
from services.db.migrate import upgrade
from services.db.session import dispose_all, session_scope
from tests.service._support import TRAIN_SPEC, ApiProcess, WorkerProcess, wait_for
from tests.service.conftest import make_settings

TINY = {**TRAIN_SPEC, "training": {"epochs": 1, "image_size": 16, "batch_size": 64, "seed": 0},
        "data": {"max_images_per_identity": 20}}


def test_a_cpu_only_stack_runs_auto_jobs_and_warns_about_gpu_ones(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", worker_threads=1, unserved_warn_s=1.0)
    settings.ensure_dirs()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        key = create_api_key(session, "cpu-only")
    api = ApiProcess(settings, tmp_path / "api.log")
    worker = WorkerProcess(settings, tmp_path / "worker.log", queues="cpu")
    try:
        api.wait_ready()
        worker.wait_ready()
        http = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        cpu, gpu = settings.queue_name("cpu"), settings.queue_name("gpu")
        ready = wait_for(lambda: (r := http.get("/readyz").json())["queues"].get(cpu) and r, 60,
                         what="the worker to announce its queue")
        assert ready["queues"] == {gpu: 0, cpu: 1} and ready["status"] == "ok"
        auto = http.post("/v1/jobs", json=TINY).json()  # device "auto", MIDRE_AUTO_QUEUE=gpu
        assert auto["queue"] == cpu, auto
        stranded = http.post("/v1/jobs", json={**TINY, "device": "cuda"}).json()
        assert stranded["queue"] == gpu

        def finished() -> dict | None:
            job = http.get(f"/v1/jobs/{auto['id']}").json()
            return job if job["status"] in ("succeeded", "failed") else None

        assert wait_for(finished, 180, what="the auto job")["status"] == "succeeded", worker.log()[-3000:]

        def warned() -> dict | None:
            events = http.get(f"/v1/jobs/{stranded['id']}/events").json()["items"]
            return next((e for e in events if e["type"] == "warning"), None)

        warning = wait_for(warned, 60, what="the no_worker warning")
        assert warning["data"] == {"code": "no_worker", "queue": gpu} and "--queues gpu" in warning["message"]
        assert http.get(f"/v1/jobs/{stranded['id']}").json()["status"] == "queued"
        http.close()
    finally:
        worker.stop()
        api.stop()
        dispose_all()
