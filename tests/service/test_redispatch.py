"""No lost job: a queued job whose broker message was lost is sent again, and runs exactly once.

The rule (``services.worker.reaper.resend_lost``) is checked without Celery first: not before
``redispatch_after_s``, never for running / cancelled jobs, not for a job whose message still waits
behind a backlog, and only once when two reapers race. Then end to end with a real ``midre worker``
on each broker: the job's message is taken out of Redis (its queue key deleted), RabbitMQ (the queue
purged) and the embedded file broker (the message file removed) while no worker runs; the worker's
reaper sends the job again and it succeeds with attempt 1 and one ``started`` event. Where the lost
message can be put back (Redis, file broker), it is, once the job is done: that late delivery is
dropped ('skipped').
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.db.migrate import upgrade
from services.db.models import JobEvent
from services.db.session import dispose_all, session_factory
from services.db.types import utcnow
from services.gateway.app import create_app
from services.queue.dispatch import Dispatcher
from services.settings import Settings
from services.worker.reaper import reap_once
from tests.service._support import (
    TRAIN_SPEC,
    OneUnitLibrary,
    WorkerProcess,
    delete_queues,
    job_row,
    run_job_inline,
    wait_for,
)
from tests.service._support import add_job as support_add_job
from tests.service.conftest import REDIS_URL, Api, PgDatabases, make_settings

REDISPATCH_S = 3.0
ONE_EPOCH = TRAIN_SPEC | {"training": {**TRAIN_SPEC["training"], "epochs": 1}}


# -- the rule, without Celery -------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = make_settings(tmp_path / "home", redispatch_after_s=60.0)
    s.ensure_dirs()
    upgrade(s.db_url)
    yield s
    dispose_all()


def ago(seconds: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)


def add_job(settings: Settings, **values: Any) -> str:
    """A ``cpu`` job row, ``queued`` and handed to the broker 10 minutes ago unless ``values`` say otherwise."""
    return support_add_job(settings, ONE_EPOCH, **{"created_at": ago(600), "dispatched_at": ago(600), **values})


def resent_events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_factory(settings.db_url)() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [e for e in rows if e.message.startswith("re-sent")]


def messages(settings: Settings) -> list[Path]:
    """The embedded broker's waiting message files."""
    return sorted((settings.broker_dir / "queue").glob("*.msg"))


def resent(settings: Settings, dispatcher: Dispatcher | None = None) -> int:
    return reap_once(settings, dispatcher or Dispatcher(settings))["resent"]


def test_a_lost_message_is_sent_again_after_the_timeout_only(settings: Settings) -> None:
    young = add_job(settings, dispatched_at=ago(50))  # 60 s not over yet
    assert resent(settings) == 0 and messages(settings) == []
    lost = add_job(settings, dispatched_at=ago(61))
    assert resent(settings) == 1
    assert len(messages(settings)) == 1
    row = job_row(settings, lost)
    assert row.status == "queued" and row.attempt == 0
    assert (utcnow() - row.dispatched_at).total_seconds() < 10  # the re-send is recorded
    [event] = resent_events(settings, lost)
    assert event.message == "re-sent: not picked up within 60 s" and event.type == "log"
    assert event.data["resent"] is True and event.data["waited_s"] >= 61
    # Sent again: not a candidate for another 60 s. The young job's message is missing too, but
    # its own 60 s are not over yet.
    assert resent(settings) == 0 and len(messages(settings)) == 1
    assert resent_events(settings, young) == []


def test_running_cancelled_and_finished_jobs_are_not_sent_again(settings: Settings) -> None:
    add_job(settings, status="running", attempt=1, heartbeat_at=utcnow(), worker="elsewhere:1")
    add_job(settings, status="cancelling", attempt=1, heartbeat_at=utcnow(), cancel_requested=True)
    add_job(settings, status="cancelled", cancel_requested=True)
    add_job(settings, status="succeeded", attempt=1)
    add_job(settings, status="failed", attempt=1)
    assert reap_once(settings, Dispatcher(settings)) == {
        "requeued": 0, "cancelled": 0, "failed": 0, "sent": 0, "resent": 0
    }
    assert messages(settings) == []


def test_a_job_waiting_behind_a_backlog_is_not_sent_twice(settings: Settings) -> None:
    dispatcher = Dispatcher(settings)
    waiting = [add_job(settings, dispatched_at=ago(600 - i)) for i in range(3)]
    for job_id in waiting:  # every message is there: the jobs only wait for a free worker
        dispatcher.send(job_id, settings.queue_name("cpu"))
    assert resent(settings, dispatcher) == 0 and len(messages(settings)) == 3
    messages(settings)[-1].unlink()  # one of the three is lost
    assert resent(settings, dispatcher) == 1 and len(messages(settings)) == 3
    assert [len(resent_events(settings, job_id)) for job_id in waiting] == [1, 0, 0]  # oldest first
    assert resent(settings, dispatcher) == 0


class CountlessDispatcher(Dispatcher):
    """A broker that cannot say how many messages it holds."""

    def message_counts(self, queues: Iterable[str]) -> dict[str, int]:
        return {name: -1 for name in queues}


def test_every_overdue_job_is_sent_again_when_the_broker_cannot_count(settings: Settings) -> None:
    jobs = [add_job(settings) for _ in range(2)]
    assert resent(settings, CountlessDispatcher(settings)) == 2
    assert len(messages(settings)) == 2
    assert all(len(resent_events(settings, job_id)) == 1 for job_id in jobs)


class RacingDispatcher(Dispatcher):
    """Holds each reaper after it chose what to re-send until both have chosen."""

    def __init__(self, settings: Settings, barrier: threading.Barrier) -> None:
        super().__init__(settings)
        self.barrier = barrier

    def message_counts(self, queues: Iterable[str]) -> dict[str, int]:
        counts = super().message_counts(queues)
        self.barrier.wait(timeout=30)
        return counts


@pytest.fixture(params=["sqlite", "postgresql"])
def race_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    overrides: dict[str, Any] = {"redispatch_after_s": 60.0}
    if request.param == "postgresql":
        pg: PgDatabases = request.getfixturevalue("pg_databases")
        overrides["database_url"] = pg.create()
    s = make_settings(tmp_path / "home", **overrides)
    s.ensure_dirs()
    upgrade(s.db_url)
    yield s
    dispose_all()


def test_of_two_racing_reapers_only_one_sends_again(race_settings: Settings) -> None:
    settings = race_settings
    lost = [add_job(settings) for _ in range(3)]
    barrier = threading.Barrier(2)
    results: list[dict[str, int]] = []

    def reaper() -> None:
        results.append(reap_once(settings, RacingDispatcher(settings, barrier)))

    threads = [threading.Thread(target=reaper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 2, "a reaper failed; see the log"
    # Both chose all three jobs (the barrier), yet each job went out once.
    assert sum(r["resent"] for r in results) == 3
    assert len(messages(settings)) == 3
    assert [len(resent_events(settings, job_id)) for job_id in lost] == [1, 1, 1]


def _quick(out: Path, progress: Any, should_stop: Any) -> None:
    (out / "model.json").write_text("{}")
    time.sleep(0.3)


QUICK = OneUnitLibrary(_quick)


def test_the_late_original_and_the_copy_run_the_job_once(settings: Settings) -> None:
    job_id = add_job(settings)
    assert resent(settings) == 1
    # Both deliveries at once, on two workers: the claim's compare-and-set lets one run.
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda w=w: outcomes.append(run_job_inline(settings, job_id, QUICK, w)))
        for w in ("one:1", "two:2")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # one delivery planned the job; the other found it planned (which of them sent and ran its one unit
    # depends on timing, so the job is checked below, not the first delivery's answer)
    assert len(outcomes) == 2 and "skipped" in outcomes and "failed" not in outcomes
    # A third copy after the end is dropped too.
    assert run_job_inline(settings, job_id, QUICK, "three:3") == "skipped"
    row = job_row(settings, job_id)
    assert row.status == "succeeded" and row.attempt == 1
    with session_factory(settings.db_url)() as session:
        started = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message.like("started on %"))
        ).all()
    assert len(started) == 1


# -- end to end: a real worker on each broker --------------------------------------------------------


def submit(api: Api) -> str:
    key = api.key("resend")
    r = api.client.post("/v1/jobs", json=ONE_EPOCH | {"device": "cpu"}, headers=api.auth(key))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert job_row(api.settings, job_id).dispatched_at is not None
    return job_id


def job_events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_factory(settings.db_url)() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def run_after_loss(api: Api, job_id: str, worker_log: Path, lost_at: float) -> WorkerProcess:
    """Start a worker after the message was lost; wait for the job to succeed; check it ran once."""
    settings = api.settings
    assert Dispatcher(settings).message_counts([settings.queue_name("cpu")]) == {settings.queue_name("cpu"): 0}
    worker = WorkerProcess(settings, worker_log, queues="cpu")
    try:
        worker.wait_ready()
        ready_at = time.monotonic()
        running = wait_for(lambda: job_row(settings, job_id).status != "queued", 30, 0.1, "the job to start")
        started_at = time.monotonic()
        assert running
        row = wait_for(
            lambda: (j := job_row(settings, job_id)).status in ("succeeded", "failed", "cancelled") and j,
            60, what="the job to end",
        )
    except BaseException:
        print(worker.log()[-4000:])
        worker.stop()
        raise
    events = job_events(settings, job_id)
    assert row.status == "succeeded", (row.error_message, worker.log()[-3000:])
    assert row.attempt == 1
    assert len([e for e in events if e.message.startswith("started on ")]) == 1
    assert [e.message for e in events if e.message.startswith("re-sent")] == [
        f"re-sent: not picked up within {REDISPATCH_S:g} s"
    ]
    print(f"\n{job_id}: message lost -> job running in {started_at - lost_at:.1f} s "
          f"(worker ready -> running {started_at - ready_at:.1f} s)")
    return worker


def wait_skipped(worker: WorkerProcess, job_id: str) -> None:
    wait_for(lambda: f"job {job_id}: skipped" in worker.log(), 30, what="the late message to be dropped")


def assert_ran_once(settings: Settings, job_id: str) -> None:
    row = job_row(settings, job_id)
    assert row.status == "succeeded" and row.attempt == 1
    assert len([e for e in job_events(settings, job_id) if e.message.startswith("started on ")]) == 1


@pytest.mark.service
@pytest.mark.slow  # a lost message end to end on Redis; the reaper's resend rules run in-process by default
def test_redis_lost_message(pg_databases: PgDatabases, redis_prefix: str, tmp_path: Path) -> None:
    import redis

    prefix = f"{redis_prefix}resend-{secrets.token_hex(3)}-"
    settings = make_settings(tmp_path / "home", database_url=pg_databases.create(), broker_url=REDIS_URL,
                             broker_prefix=prefix, redispatch_after_s=REDISPATCH_S)
    client = redis.Redis.from_url(REDIS_URL)
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        job_id = submit(Api(settings, http))
        # What a restart without persistence, a FLUSHALL or a failover does to this stack's queue.
        keys = [k for k in client.scan_iter(match=f"{prefix}*") if client.type(k) == b"list"]
        held = {k: client.lrange(k, 0, -1) for k in keys}
        raw_messages = [m for values in held.values() for m in values]
        assert len(raw_messages) == 1 and job_id.encode() in raw_messages[0]
        client.delete(*keys)
        lost_at = time.monotonic()
        worker = run_after_loss(Api(settings, http), job_id, tmp_path / "worker.log", lost_at)
        try:
            for key, raw in held.items():  # the lost message turns up after all
                client.lpush(key, *raw)
            wait_skipped(worker, job_id)
            assert_ran_once(settings, job_id)
        finally:
            worker.stop()
    client.close()


@pytest.mark.service
@pytest.mark.slow  # a lost message end to end on RabbitMQ; the resend rules run in-process by default
def test_rabbitmq_lost_message(amqp_url: str, tmp_path: Path) -> None:
    prefix = f"midre-test-{secrets.token_hex(4)}-"
    settings = make_settings(tmp_path / "home", broker_url=amqp_url, broker_prefix=prefix,
                             redispatch_after_s=REDISPATCH_S)
    dispatcher = Dispatcher(settings)
    queue = settings.queue_name("cpu")
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as http:
            job_id = submit(Api(settings, http))
            with dispatcher.celery.connection_for_write() as conn, conn.channel() as channel:
                assert channel.queue_purge(queue) == 1
            lost_at = time.monotonic()
            run_after_loss(Api(settings, http), job_id, tmp_path / "worker.log", lost_at).stop()
    finally:
        delete_queues(dispatcher, settings)


@pytest.mark.slow  # a lost message end to end on the file broker; the resend rules run in-process by default
def test_file_broker_lost_message(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", redispatch_after_s=REDISPATCH_S)
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        job_id = submit(Api(settings, http))
        [message] = messages(settings)
        assert message.name.endswith(f".{settings.queue_name('cpu')}.msg")
        aside = tmp_path / message.name
        message.rename(aside)  # the message file is gone from the broker folder
        lost_at = time.monotonic()
        worker = run_after_loss(Api(settings, http), job_id, tmp_path / "worker.log", lost_at)
        try:
            aside.rename(settings.broker_dir / "queue" / aside.name)  # ... and turns up after all
            wait_skipped(worker, job_id)
            assert_ran_once(settings, job_id)
        finally:
            worker.stop()
