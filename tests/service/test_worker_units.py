"""The worker's machinery without Celery: claim, progress, cancel, ownership, artifacts, the reaper;
plus the storage and API-key primitives (SQLite, file-system broker)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from midre.progress import Cancelled, ProgressEvent
from services.db import jobs as jobstate
from services.db.keys import authenticate, create_api_key
from services.db.migrate import upgrade
from services.db.models import ApiKey, Artifact, Job, JobEvent, Metric
from services.db.session import dispose_all, session_factory, session_scope
from services.db.types import utcnow
from services.queue.dispatch import Dispatcher
from services.settings import Settings
from services.storage import LocalStore, sha256_file
from services.worker.reaper import reap_once
from services.worker.runner import JobContext, Outcome, execute_job
from tests.service._support import add_job, job_row
from tests.service.conftest import make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = make_settings(tmp_path / "home")
    s.ensure_dirs()
    upgrade(s.db_url)
    yield s
    dispose_all()


def job_events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_factory(settings.db_url)() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def queued_messages(settings: Settings) -> list[Path]:
    return list((settings.broker_dir / "queue").glob("*.msg"))


def fake_train(ctx: JobContext) -> Outcome:
    out = ctx.work_dir / "train"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "last.pt").write_bytes(b"resume state")
    (out / "model.safetensors").write_bytes(b"weights" * 100)
    (out / "model.json").write_text('{"arch": "cnn-small"}')
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"\x89PNG fake")
    ctx.progress(ProgressEvent("load", 0.0, "loading digits"))
    for epoch in (1, 2):
        for step in (1, 2):
            ctx.progress(ProgressEvent("train", (epoch - 1 + step / 2) / 2, "", epoch=epoch, epochs=2, step=step,
                                       steps=2, metrics={"loss": 1.0 / epoch}))
        ctx.progress(ProgressEvent("epoch", epoch / 2, f"epoch {epoch}/2 done", epoch=epoch, epochs=2,
                                   metrics={"test_accuracy": 0.4 * epoch}))
    return Outcome(out_dir=out, metrics={"test_accuracy": 0.8})


def test_execute_job_records_everything(settings: Settings) -> None:
    job_id = add_job(settings)
    assert execute_job(settings, job_id, {"train": fake_train}) == "succeeded"
    job = job_row(settings, job_id)
    assert job.status == "succeeded" and job.progress == 1.0 and job.attempt == 1 and job.finished_at
    with session_factory(settings.db_url)() as session:
        artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        metrics = session.scalars(select(Metric).where(Metric.job_id == job_id)).all()
    assert set(artifacts) == {"model.safetensors", "model.json", "plots/loss.png"}  # no resume state
    store = LocalStore(settings.storage_dir)
    for artifact in artifacts.values():
        assert sha256_file(store.path(artifact.sha256)) == artifact.sha256
    assert artifacts["plots/loss.png"].content_type == "image/png"
    # Recorded in the metric vocabulary: the library's test_accuracy fraction is `acc` in percent.
    assert {(m.name, m.epoch, round(m.value, 6)) for m in metrics} == {("acc", 1, 40.0), ("acc", 2, 80.0),
                                                                       ("acc", None, 80.0)}
    types = [(e.type, e.stage) for e in job_events(settings, job_id)]
    assert types == [("status", None), ("stage", "load"), ("stage", "train"), ("epoch", "epoch"),
                     ("epoch", "epoch"), ("status", "done")]
    assert not store.work_dir(job_id).exists()
    # A second delivery of the same message is a no-op (idempotent task).
    assert execute_job(settings, job_id, {"train": fake_train}) == "skipped"
    assert job_row(settings, job_id).attempt == 1


def test_duplicate_delivery_of_a_running_job_is_dropped(settings: Settings) -> None:
    job_id = add_job(settings, status="running", attempt=1, heartbeat_at=utcnow(), worker="elsewhere:1")
    assert execute_job(settings, job_id, {"train": fake_train}) == "skipped"
    assert job_row(settings, job_id).status == "running"


def test_failure_is_recorded_with_a_code(settings: Settings) -> None:
    def bad(ctx: JobContext) -> Outcome:
        raise ValueError("arch: nope")

    job_id = add_job(settings)
    assert execute_job(settings, job_id, {"train": bad}) == "failed"
    job = job_row(settings, job_id)
    assert (job.status, job.error_code, job.error_message) == ("failed", "invalid_input", "arch: nope")


def test_cooperative_cancel(settings: Settings) -> None:
    job_id = add_job(settings)

    def long_job(ctx: JobContext) -> Outcome:
        with session_scope(settings.db_url) as session:  # the API's cancel, while running
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelling", cancel_requested=True))
        for _ in range(1000):
            if ctx.should_stop():
                raise Cancelled("stopped at a step boundary")
        raise AssertionError("should_stop never said stop")

    assert execute_job(settings, job_id, {"train": long_job}) == "cancelled"
    assert job_row(settings, job_id).status == "cancelled"


def test_a_worker_that_lost_its_job_stops_quietly(settings: Settings) -> None:
    job_id = add_job(settings)

    def taken_over(ctx: JobContext) -> Outcome:
        with session_scope(settings.db_url) as session:  # the reaper gave the job to attempt 2
            session.execute(update(Job).where(Job.id == job_id).values(attempt=2))
        while not ctx.should_stop():
            pass
        raise Cancelled("lost")

    assert execute_job(settings, job_id, {"train": taken_over}) == "lost"
    assert job_row(settings, job_id).status == "running"  # left to the owner


def stale(seconds: float = 60) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)


def test_reaper_requeues_fails_cancels_and_sends(settings: Settings) -> None:
    lost = add_job(settings, status="running", attempt=1, heartbeat_at=stale(), worker="dead:1")
    cancelling = add_job(settings, status="cancelling", attempt=1, heartbeat_at=stale(), cancel_requested=True)
    exhausted = add_job(settings, status="running", attempt=settings.max_attempts, heartbeat_at=stale())
    alive = add_job(settings, status="running", attempt=1, heartbeat_at=utcnow())
    unsent = add_job(settings)
    with session_scope(settings.db_url) as session:
        session.execute(update(Job).where(Job.id == unsent).values(created_at=stale()))
    counts = reap_once(settings, Dispatcher(settings))
    assert counts == {"requeued": 1, "cancelled": 1, "failed": 1, "sent": 2, "resent": 0}
    assert job_row(settings, lost).status == "queued" and job_row(settings, lost).dispatched_at is not None
    assert job_row(settings, cancelling).status == "cancelled"
    assert (job_row(settings, exhausted).status, job_row(settings, exhausted).error_code) == ("failed", "worker_lost")
    assert job_row(settings, alive).status == "running"
    assert len(queued_messages(settings)) == 2  # the re-queued job and the never-sent one
    assert any("re-queued" in e.message for e in job_events(settings, lost))
    assert reap_once(settings, Dispatcher(settings)) == {
        "requeued": 0, "cancelled": 0, "failed": 0, "sent": 0, "resent": 0
    }


def test_store_is_content_addressed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    a = tmp_path / "a.bin"
    a.write_bytes(b"same bytes")
    b = tmp_path / "b.bin"
    b.write_bytes(b"same bytes")
    first, second = store.put_file(a), store.put_file(b)
    assert first == second and first.size == 10
    assert store.verify(first.sha256)
    assert len([p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]) == 1
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")
    with pytest.raises(ValueError):
        store.remove_tree(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.path("0" * 64)


def test_api_keys_are_hashed_and_checked(settings: Settings) -> None:
    with session_scope(settings.db_url) as session:
        key = create_api_key(session, "acme")
        stored = session.scalar(select(ApiKey))
        assert key not in (stored.key_hash, stored.key_id) and len(stored.key_hash) == 64
        owner = authenticate(session, key)
        assert owner.tenant_name == "acme" and owner.scopes == {"admin", "jobs", "predict"}
        for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "mk__x", "garbage", ""):
            assert authenticate(session, wrong) is None
        stored.revoked_at = utcnow()
        session.flush()
        assert authenticate(session, key) is None


def test_status_constants() -> None:
    assert jobstate.TERMINAL == {"succeeded", "failed", "cancelled"}


def test_a_dead_local_owner_is_taken_over_at_once(settings: Settings) -> None:
    import os
    import subprocess
    import sys

    from services.db.types import host_id, pid_host
    from services.worker.runner import owner_is_dead

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{host_id()}:{gone.stdout.strip()}"
    assert owner_is_dead(dead)
    assert not owner_is_dead(pid_host())
    assert not owner_is_dead(f"{os.uname().nodename}#other-namespace:{gone.stdout.strip()}")
    assert not owner_is_dead("another-host:1") and not owner_is_dead(None)
    # A redelivery after the pool process died does not wait for the heartbeat to go stale.
    job_id = add_job(settings, status="running", attempt=1, heartbeat_at=utcnow(), worker=dead)
    assert execute_job(settings, job_id, {"train": fake_train}) == "succeeded"
    assert job_row(settings, job_id).attempt == 2
