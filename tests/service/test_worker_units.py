"""The worker's one engine without Celery: claim, progress, cancel, ownership, artifacts, the reaper; plus the
storage and API-key primitives, and job graphs of several units (SQLite, file-system broker).

Single-unit jobs run a unit body the test controls (``OneUnitLibrary``); graphs run a small library of their
own (``GraphLibrary``); both through the engine's production code (``services.worker.engine``)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from midre.errors import TransientError
from midre.progress import Cancelled, ProgressEvent
from services.db import jobs as jobstate
from services.db.keys import authenticate, create_api_key
from services.db.migrate import upgrade
from services.db.models import ApiKey, Artifact, Job, JobEvent, JobUnit, Metric
from services.db.session import dispose_all, session_factory, session_scope
from services.db.types import utcnow
from services.queue.dispatch import Dispatcher
from services.settings import Settings
from services.storage import LocalStore, sha256_file
from services.worker.ending import Outcome
from services.worker.engine import dispatch_ready, execute_unit, plan_job
from services.worker.library import report_metrics, report_warnings
from services.worker.reaper import reap_once
from tests.service._support import OneUnitLibrary, add_job, job_row, run_job_inline
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


def fake_train(out: Path, progress: Callable[[Any], None], should_stop: Callable[[], bool]) -> None:
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "last.pt").write_bytes(b"resume state")
    (out / "model.safetensors").write_bytes(b"weights" * 100)
    (out / "model.json").write_text('{"arch": "cnn-small"}')
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"\x89PNG fake")
    progress(ProgressEvent("load", 0.0, "loading digits"))
    for epoch in (1, 2):
        for step in (1, 2):
            progress(ProgressEvent("train", (epoch - 1 + step / 2) / 2, "", epoch=epoch, epochs=2, step=step,
                                   steps=2, metrics={"loss": 1.0 / epoch}))
        progress(ProgressEvent("epoch", epoch / 2, f"epoch {epoch}/2 done", epoch=epoch, epochs=2,
                               metrics={"test_accuracy": 0.4 * epoch}))


FAKE_TRAIN = OneUnitLibrary(fake_train, {"test_accuracy": 0.8})


def test_a_train_job_is_one_unit_and_records_everything(settings: Settings) -> None:
    job_id = add_job(settings)
    assert run_job_inline(settings, job_id, FAKE_TRAIN) == "succeeded"
    job = job_row(settings, job_id)
    assert job.status == "succeeded" and job.progress == 1.0 and job.attempt == 1 and job.finished_at
    assert [(u.key, u.kind, u.status, u.attempt) for u in units_of(settings, job_id).values()] == [
        ("train", "train", "succeeded", 1)]
    with session_factory(settings.db_url)() as session:
        artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        metrics = session.scalars(select(Metric).where(Metric.job_id == job_id)).all()
    assert set(artifacts) == {"model.safetensors", "model.json", "plots/loss.png", "bom.json"}  # no resume state
    store = LocalStore(settings.storage_dir)
    for artifact in artifacts.values():
        assert sha256_file(store.path(artifact.sha256)) == artifact.sha256
    assert artifacts["plots/loss.png"].content_type == "image/png"
    # Recorded in the metric vocabulary: the library's test_accuracy fraction is `acc` in percent.
    assert {(m.name, m.epoch, round(m.value, 6)) for m in metrics} == {("acc", 1, 40.0), ("acc", 2, 80.0),
                                                                       ("acc", None, 80.0)}
    events = job_events(settings, job_id)
    types = [(e.type, e.stage) for e in events if e.type != "unit"]
    assert types == [("status", None), ("stage", "plan"), ("stage", "load"), ("stage", "train"), ("epoch", "epoch"),
                     ("epoch", "epoch"), ("status", "done")]
    assert [e.message for e in events if e.type == "epoch"] == ["epoch 1/2 done", "epoch 2/2 done"]  # one unit: no key
    assert not store.work_dir(job_id).exists()
    # A second delivery of the same messages is a no-op (idempotent tasks).
    assert plan_job(settings, job_id, FAKE_TRAIN) == "skipped"
    assert execute_unit(settings, job_id, "train", FAKE_TRAIN) == "skipped"
    assert job_row(settings, job_id).attempt == 1


def test_duplicate_delivery_of_a_job_being_planned_is_dropped(settings: Settings) -> None:
    job_id = add_job(settings, status="running", attempt=1, heartbeat_at=utcnow(), worker="elsewhere:1")
    assert plan_job(settings, job_id, FAKE_TRAIN) == "skipped"
    assert job_row(settings, job_id).status == "running"


def test_failure_is_recorded_with_a_code(settings: Settings) -> None:
    def bad(out: Path, progress: Any, should_stop: Any) -> None:
        raise ValueError("arch: nope")

    job_id = add_job(settings)
    assert run_job_inline(settings, job_id, OneUnitLibrary(bad)) == "failed"
    job = job_row(settings, job_id)
    assert (job.status, job.error_code, job.error_message) == ("failed", "invalid_input", "arch: nope")
    assert units_of(settings, job_id)["train"].status == "failed"


def test_cooperative_cancel(settings: Settings) -> None:
    job_id = add_job(settings)

    def long_job(out: Path, progress: Any, should_stop: Callable[[], bool]) -> None:
        with session_scope(settings.db_url) as session:  # the API's cancel, while running
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelling", cancel_requested=True))
        for _ in range(1000):
            if should_stop():
                raise Cancelled("stopped at a step boundary")
            time.sleep(0.01)
        raise AssertionError("should_stop never said stop")

    assert run_job_inline(settings, job_id, OneUnitLibrary(long_job)) == "cancelled"
    assert units_of(settings, job_id)["train"].status == "cancelled"


def test_a_worker_that_lost_its_unit_stops_quietly(settings: Settings) -> None:
    job_id = add_job(settings)

    def taken_over(out: Path, progress: Any, should_stop: Callable[[], bool]) -> None:
        with session_scope(settings.db_url) as session:  # the reaper gave the unit to attempt 2
            session.execute(update(JobUnit).where(JobUnit.job_id == job_id).values(attempt=2))
        while not should_stop():
            time.sleep(0.01)
        raise Cancelled("lost")

    assert run_job_inline(settings, job_id, OneUnitLibrary(taken_over)) == "running"  # left to the owner
    assert units_of(settings, job_id)["train"].status == "running"


def stale(seconds: float = 60) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)


def test_reaper_requeues_fails_cancels_and_sends_jobs_being_planned(settings: Settings) -> None:
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
        assert owner.tenant_name == "acme" and owner.scopes == {"admin", "jobs", "predict", "review"}
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
    from services.worker.attempt import owner_is_dead

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{host_id()}:{gone.stdout.strip()}"
    assert owner_is_dead(dead)
    assert not owner_is_dead(pid_host())
    assert not owner_is_dead(f"{os.uname().nodename}#other-namespace:{gone.stdout.strip()}")
    assert not owner_is_dead("another-host:1") and not owner_is_dead(None)
    # A redelivery after the pool process died does not wait for the heartbeat to go stale.
    job_id = add_job(settings, status="running", attempt=1, heartbeat_at=utcnow(), worker=dead)
    assert run_job_inline(settings, job_id, FAKE_TRAIN) == "succeeded"
    assert job_row(settings, job_id).attempt == 2


# -- graphs of several units, with a small graph instead of the library's -----------------------------------

PIPELINE_SPEC = {"kind": "pipeline", "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"],
                 "training": {"epochs": 1, "image_size": 32}}


class RecordingDispatcher(Dispatcher):
    """The real file-broker dispatcher that also remembers which units it sent, in order."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.units: list[str] = []
        self.countdowns: list[float | None] = []

    def send_unit(self, job_id: str, key: str, queue: str, countdown: float | None = None) -> None:
        super().send_unit(job_id, key, queue)
        self.units.append(key)
        self.countdowns.append(countdown)


class GraphLibrary:
    """``a`` and ``b``, then ``grow`` (an expansion that adds ``c``), then ``report`` (needs ``grow`` and ``c``)."""

    def __init__(self, fail: str | None = None, during: dict[str, Callable[[Callable[[], bool]], None]] | None = None,
                 flaky: dict[str, int] | None = None, devices: dict[str, int] | None = None):
        self.fail = fail
        self.during = during or {}
        #: unit -> how many of its first runs meet a transient failure (an unreachable store, a lost rank)
        self.flaky = dict(flaky or {})
        self.needs = devices or {}
        self.ran: list[str] = []

    def devices(self, config: Any, unit: dict[str, Any]) -> int:
        return self.needs.get(unit["key"], 1)

    def plan(self, config: Any) -> list[dict[str, Any]]:
        assert type(config).__name__ in ("PipelineConfig", "HardenConfig")
        return [{"key": "a", "kind": "target", "weight": 3.0}, {"key": "b", "kind": "target"},
                {"key": "grow", "kind": "expand", "deps": ["a", "b"]},
                {"key": "report", "kind": "report", "deps": ["grow", "c"]}]

    def run(self, config: Any, out_dir: Path, unit: dict[str, Any], progress: Any, should_stop: Any
            ) -> list[dict[str, Any]]:
        key = unit["key"]
        self.ran.append(key)
        progress(ProgressEvent("train", 0.5, f"{key} half way"))
        if key in self.during:
            self.during[key](should_stop)
        if key == self.fail:
            raise ValueError(f"{key}: broken at {out_dir}")
        if self.flaky.get(key, 0) > 0:
            self.flaky[key] -= 1
            raise TransientError(f"{key}: the object store is unavailable")
        (out_dir / f"{key}.txt").write_text(key)
        if key == "report" and type(config).__name__ == "HardenConfig":
            (out_dir / "recommended").mkdir()
            (out_dir / "recommended" / "model.safetensors").write_bytes(b"weights")
            (out_dir / "recommended" / "model.json").write_text(json.dumps({"arch": "cnn-small", "data": str(out_dir)}))
        if key == "report":
            (out_dir / "report.json").write_text(json.dumps({
                "results": [{"defense": "midre", "attack": "mi-face", "metrics": {"acc": {"mean": 91.0}}}],
                "warnings": [{"code": "single_seed", "message": f"one seed only ({out_dir})"}],
            }))
        return [{"key": "c", "kind": "target", "weight": 2.0}] if key == "grow" else []

    def outcome(self, config: Any, out_dir: Path) -> Outcome:
        report = json.loads((out_dir / "report.json").read_text())
        return Outcome(report_metrics(report), report_warnings(report))


def add_study(settings: Settings, spec: dict[str, Any] = PIPELINE_SPEC) -> str:
    """A queued study job with its resolved config, as the API stores it."""
    return add_job(settings, spec)


def units_of(settings: Settings, job_id: str) -> dict[str, JobUnit]:
    with session_factory(settings.db_url)() as session:
        return {u.key: u for u in session.scalars(select(JobUnit).where(JobUnit.job_id == job_id))}


def drain(settings: Settings, job_id: str, planner: GraphLibrary, dispatcher: RecordingDispatcher) -> list[str]:
    """Deliver every sent unit message once, in order, until none is left; the outcomes."""
    outcomes, done = [], 0
    while done < len(dispatcher.units):
        key = dispatcher.units[done]
        done += 1
        outcomes.append(f"{key}:{execute_unit(settings, job_id, key, planner, dispatcher=dispatcher)}")
    return outcomes


def test_a_study_runs_as_a_unit_graph_each_unit_once(settings: Settings) -> None:
    job_id = add_study(settings)
    planner, dispatcher = GraphLibrary(), RecordingDispatcher(settings)
    assert plan_job(settings, job_id, planner, dispatcher=dispatcher) == "planned"
    assert dispatcher.units == ["a", "b"]  # the units without dependencies
    assert plan_job(settings, job_id, planner, dispatcher=dispatcher) == "skipped"  # a second delivery
    assert dispatch_ready(settings, session_factory(settings.db_url), dispatcher, job_id) == 0
    assert dispatcher.units == ["a", "b"]
    progress = []
    outcomes = []
    for key in ("a", "b", "grow", "c"):
        outcomes.append(execute_unit(settings, job_id, key, planner, dispatcher=dispatcher))
        progress.append(job_row(settings, job_id).progress)
    assert dispatcher.units == ["a", "b", "grow", "c", "report"]  # each sent once, when its deps were done
    assert progress == sorted(progress) and 0 < progress[0] < 1
    assert execute_unit(settings, job_id, "report", planner, dispatcher=dispatcher) == "succeeded"
    assert outcomes == ["succeeded"] * 4 and planner.ran == ["a", "b", "grow", "c", "report"]
    job = job_row(settings, job_id)
    assert (job.status, job.progress, job.stage) == ("succeeded", 1.0, "done")
    units = units_of(settings, job_id)
    assert {k: (u.status, u.attempt) for k, u in units.items()} == {k: ("succeeded", 1) for k in
                                                                    ("a", "b", "grow", "c", "report")}
    assert units["grow"].result["added"] == ["c"]
    with session_factory(settings.db_url)() as session:
        names = set(session.scalars(select(Artifact.name).where(Artifact.job_id == job_id)))
        metrics = {m.name: m.value for m in session.scalars(select(Metric).where(Metric.job_id == job_id))}
    assert names == {"a.txt", "b.txt", "c.txt", "grow.txt", "report.txt", "report.json"}
    assert metrics == {"midre.mi-face.acc": 91.0}
    events = job_events(settings, job_id)
    [warning] = [e for e in events if e.type == "warning"]
    assert warning.data["code"] == "single_seed" and str(settings.storage_dir) not in warning.message
    assert sum(1 for e in events if e.type == "unit" and e.data["status"] == "succeeded") == 5
    assert not LocalStore(settings.storage_dir).work_dir(job_id).exists()
    assert execute_unit(settings, job_id, "a", planner, dispatcher=dispatcher) == "skipped"  # idempotent


def test_a_failed_unit_fails_the_study(settings: Settings) -> None:
    job_id = add_study(settings)
    planner, dispatcher = GraphLibrary(fail="b"), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    assert drain(settings, job_id, planner, dispatcher) == ["a:succeeded", "b:failed"]
    job = job_row(settings, job_id)
    assert (job.status, job.error_code) == ("failed", "invalid_input")
    assert job.error_message.startswith("unit b: b: broken at ") and str(settings.storage_dir) not in job.error_message
    units = units_of(settings, job_id)
    assert {k: u.status for k, u in units.items()} == {"a": "succeeded", "b": "failed", "grow": "cancelled",
                                                       "report": "cancelled"}


def test_a_transient_failure_retries_the_unit_and_the_job_goes_on(settings: Settings) -> None:
    settings = settings.model_copy(update={"unit_retry_s": 7.0})
    job_id = add_study(settings)
    planner, dispatcher = GraphLibrary(flaky={"b": 2}), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    outcomes = drain(settings, job_id, planner, dispatcher)
    assert outcomes[:3] == ["a:succeeded", "b:retrying", "b:retrying"] and outcomes[-1] == "report:succeeded"
    assert dispatcher.countdowns[2:4] == [7.0, 7.0]  # each retry sent MIDRE_UNIT_RETRY_S later
    job = job_row(settings, job_id)
    assert job.status == "succeeded"
    units = units_of(settings, job_id)
    assert (units["b"].status, units["b"].attempt) == ("succeeded", 3) and units["a"].attempt == 1
    retries = [e.message for e in job_events(settings, job_id) if "retrying in 7 s" in e.message]
    assert retries == ["unit b: b: the object store is unavailable; retrying in 7 s (attempt 1 of 3)",
                       "unit b: b: the object store is unavailable; retrying in 7 s (attempt 2 of 3)"]


def test_a_transient_failure_past_the_attempt_limit_fails_the_job(settings: Settings) -> None:
    job_id = add_study(settings)
    planner, dispatcher = GraphLibrary(flaky={"a": 5}), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    outcomes = drain(settings, job_id, planner, dispatcher)
    assert outcomes.count("a:retrying") == settings.max_attempts - 1 and "a:failed" in outcomes
    job = job_row(settings, job_id)
    assert job.status == "failed" and "the object store is unavailable" in job.error_message


def test_a_unit_on_several_devices_waits_for_them_to_be_free(settings: Settings) -> None:
    from services.worker import devices

    settings = settings.model_copy(update={"worker_devices": 3, "unit_retry_s": 5.0})
    job_id = add_study(settings)
    planner, dispatcher = GraphLibrary(devices={"a": 2}), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    with devices.hold(settings, 2) as taken:  # another unit of this machine holds two of its three devices
        assert taken == [0, 1]
        with devices.hold(settings, 2) as none_left:
            assert none_left is None
        assert execute_unit(settings, job_id, "a", planner, dispatcher=dispatcher) == "deferred"
    assert units_of(settings, job_id)["a"].attempt == 0 and "a" not in planner.ran  # not claimed: no attempt used
    assert dispatcher.units[-1] == "a" and dispatcher.countdowns[-1] == 5.0  # sent on
    assert execute_unit(settings, job_id, "a", planner, dispatcher=dispatcher) == "succeeded"
    with devices.hold(settings, 3) as everything:  # the unit gave its devices back
        assert everything == [0, 1, 2]
    too_many = settings.model_copy(update={"worker_devices": 1})
    with devices.hold(too_many, 2) as never:
        assert never is None


def test_cancel_stops_the_whole_graph(settings: Settings) -> None:
    job_id = add_study(settings)

    def cancelled_meanwhile(should_stop: Callable[[], bool]) -> None:
        with session_scope(settings.db_url) as session:  # the API's cancel while `a` runs
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelling", cancel_requested=True))
        deadline = time.monotonic() + 30
        while not should_stop():
            assert time.monotonic() < deadline, "should_stop never said stop"
            time.sleep(0.01)
        raise Cancelled("stopped at a step boundary")

    planner, dispatcher = GraphLibrary(during={"a": cancelled_meanwhile}), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    assert drain(settings, job_id, planner, dispatcher) == ["a:cancelled", "b:skipped"]
    assert planner.ran == ["a"]  # b's message came after the cancel: it never ran
    assert job_row(settings, job_id).status == "cancelled"
    assert {u.status for u in units_of(settings, job_id).values()} == {"cancelled"}
    assert dispatcher.units == ["a", "b"]


def test_the_reaper_sends_again_a_unit_whose_worker_died(settings: Settings) -> None:
    job_id = add_study(settings)
    planner, dispatcher = GraphLibrary(), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    with session_scope(settings.db_url) as session:  # `a` ran on a worker that died; the job's own heartbeat is old
        session.execute(update(JobUnit).where(JobUnit.job_id == job_id, JobUnit.key == "a")
                        .values(status="running", attempt=1, heartbeat_at=stale(), worker="dead:1"))
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale()))
    counts = reap_once(settings, dispatcher)
    assert counts["requeued"] == 1 and counts["sent"] == 1
    assert dispatcher.units == ["a", "b", "a"]
    assert job_row(settings, job_id).status == "running"  # a planned study is not re-queued as a whole
    assert drain(settings, job_id, planner, dispatcher)[-1] == "report:succeeded"
    units = units_of(settings, job_id)
    assert units["a"].attempt == 2 and all(u.attempt == 1 for k, u in units.items() if k != "a")
    assert planner.ran.count("a") == 1 and job_row(settings, job_id).status == "succeeded"
    assert reap_once(settings, dispatcher) == {"requeued": 0, "cancelled": 0, "failed": 0, "sent": 0, "resent": 0}


def test_a_ready_unit_nobody_sent_is_sent_by_the_reaper(settings: Settings) -> None:
    job_id = add_study(settings)
    planner, dispatcher = GraphLibrary(), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    with session_scope(settings.db_url) as session:  # a and b finished, their worker died before sending `grow`
        session.execute(update(JobUnit).where(JobUnit.job_id == job_id, JobUnit.key.in_(["a", "b"]))
                        .values(status="succeeded", attempt=1))
        session.execute(update(JobUnit).where(JobUnit.job_id == job_id).values(created_at=stale()))
    assert reap_once(settings, dispatcher)["sent"] == 1 and dispatcher.units[-1] == "grow"
    assert reap_once(settings, dispatcher)["sent"] == 0


def test_a_train_job_near_chance_gets_a_warning_event(settings: Settings) -> None:
    untrained = {"kind": "train", "dataset": "digits", "arch": "cnn-small", "device": "cpu",
                 "defense": {"name": "nodef"}, "data": {"max_images_per_identity": 20},
                 "training": {"epochs": 1, "image_size": 16, "lr": 1e-9, "seed": 0}}
    trained = {**untrained, "training": {"epochs": 3, "image_size": 16, "lr": 0.003, "seed": 0}}
    warned = {}
    for name, spec in (("untrained", untrained), ("trained", trained)):
        job_id = add_job(settings, spec)
        assert run_job_inline(settings, job_id) == "succeeded"
        warned[name] = [e for e in job_events(settings, job_id) if e.type == "warning"]
    [warning] = warned["untrained"]
    assert warning.data["code"] == "target_near_chance" and "near chance" in warning.message
    assert warned["trained"] == []


def test_workers_pin_their_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from services.cli.processes import worker_env
    from services.worker.app import worker_threads

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("MIDRE_WORKER_THREADS", raising=False)
    assert worker_env(2)["MIDRE_WORKER_THREADS"] == str(max(1, cores // 2))  # midre serve --workers 2
    assert worker_env(cores * 4)["MIDRE_WORKER_THREADS"] == "1"
    assert worker_threads(Settings(), concurrency=1) == cores  # a lone worker with one pool process
    assert worker_threads(Settings(worker_threads=3), concurrency=2) == 3
    monkeypatch.setenv("MIDRE_WORKER_THREADS", "5")
    assert worker_env(2)["MIDRE_WORKER_THREADS"] == "5"  # the operator's setting wins


def test_a_harden_recommendation_is_a_model_under_the_job_id(settings: Settings) -> None:
    from services.ops.jobs import is_model

    harden = {**PIPELINE_SPEC, "kind": "harden", "candidates": ["midre:a_h=0.4"]}
    harden.pop("defense", None)
    job_id = add_study(settings, harden)
    planner, dispatcher = GraphLibrary(), RecordingDispatcher(settings)
    plan_job(settings, job_id, planner, dispatcher=dispatcher)
    assert drain(settings, job_id, planner, dispatcher)[-1] == "report:succeeded"
    with session_factory(settings.db_url)() as session:
        artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        for name in ("model.json", "model.safetensors"):
            assert artifacts[name].sha256 == artifacts[f"recommended/{name}"].sha256
        card = LocalStore(settings.storage_dir).path(artifacts["model.json"].sha256).read_text()
        assert str(settings.storage_dir) not in card  # stored redacted, like every text artifact
        assert is_model(session, session.get(Job, job_id))
    pipeline, dispatcher = add_study(settings), RecordingDispatcher(settings)
    plan_job(settings, pipeline, planner, dispatcher=dispatcher)
    drain(settings, pipeline, planner, dispatcher)
    with session_factory(settings.db_url)() as session:
        row = session.get(Job, pipeline)
        assert row.status == "succeeded" and not is_model(session, row)  # a pipeline is not one model
