"""Recovering jobs from lost workers and lost messages, using the DB as the source of truth.

Runs in every worker's main process (a daemon thread, every ``reaper_interval_s``); one pass
(:func:`reap_once`):

* a unit ``running`` whose heartbeat is older than ``stale_after_s`` (or whose worker process on this
  host is gone) lost its worker (SIGKILL, OOM, node gone): it is sent again (its next attempt resumes
  from what the last one left, e.g. the last epoch checkpoint), cancelled if its job is being
  cancelled, or fails its job after ``max_attempts``;
* a job being planned whose planner was lost the same way (no units yet) is re-queued, cancelled or
  failed likewise;
* a queued job or unit never handed to the broker (a process crashed or the broker was down between
  the commit and the send) is sent; a pending unit whose dependencies all succeeded but that nobody sent
  (a worker lost between its commit and its send) is sent;
* messages the broker lost are sent again (:mod:`services.worker.resend`);
* a cancelling job whose units all stopped is cancelled; processed message files of the embedded broker
  older than a day are deleted; partial uploads of dead API processes and, after a grace period, stored
  files nothing refers to are removed (:func:`services.storage.sweep_store`).

Each move is a compare-and-set, so any number of workers can run the reaper at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.db import jobs as jobstate
from services.db import workers
from services.db.models import Job, JobEvent, JobUnit
from services.db.session import session_factory
from services.db.types import utcnow
from services.queue.dispatch import Dispatcher
from services.settings import Settings
from services.storage import sweep_store
from services.worker.attempt import owner_is_dead
from services.worker.ending import fail_job, finish_cancel
from services.worker.engine import dispatch_ready, send_unit
from services.worker.resend import resend_lost

log = logging.getLogger(__name__)

#: A queued job or unit must be this old (seconds) before the reaper sends it: whoever queued it sends it
#: right after its commit, so a younger one is probably being sent now.
UNSENT_GRACE_S = 10.0
PROCESSED_MAX_AGE_S = 24 * 3600
COUNTS = ("requeued", "cancelled", "failed", "sent", "resent")


def _stale(heartbeat: dt.datetime | None, worker: str | None, before: dt.datetime) -> bool:
    return heartbeat is None or heartbeat < before or owner_is_dead(worker)


def reap_once(settings: Settings, dispatcher: Dispatcher) -> dict[str, int]:
    """One pass; returns how many jobs and units were re-queued, cancelled, failed, sent and re-sent."""
    sessions = session_factory(settings.db_url, settings.pool)
    counts: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
    now = utcnow()
    stale_before = now - dt.timedelta(seconds=settings.stale_after_s)
    _reap_planning(settings, sessions, dispatcher, stale_before, counts)
    _reap_units(settings, sessions, dispatcher, stale_before, counts)
    _send_unsent(settings, sessions, dispatcher, now, counts)
    counts["resent"] = resend_lost(settings, dispatcher, sessions, now)
    if settings.embedded:
        _clean_processed(settings)
    sweep_store(settings, sessions)  # partial uploads of dead API processes, unreferenced blobs
    audits = _watch_registries(settings, sessions, dispatcher)
    if audits:
        log.info("reaper: %d audits of new registered model versions started", audits)
    if any(counts.values()):
        log.info("reaper: %s", dict(counts))
    return dict(counts)


_LAST_WATCH: dict[str, float] = {}


def _watch_registries(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher) -> int:
    """New versions in the MLflow registries that audit policies watch, every ``audit_poll_s`` seconds at most
    (per process); how many audits started."""
    now = time.monotonic()
    if now - _LAST_WATCH.get(settings.db_url, -1e18) < settings.audit_poll_s:
        return 0
    _LAST_WATCH[settings.db_url] = now
    from services.integrations.mlflow_watch import watch
    from services.integrations.webhooks import check_target
    from services.ops.context import ServiceContext
    from services.storage import open_store

    ctx = ServiceContext(settings, sessions, open_store(settings), dispatcher)
    try:
        return len(watch(ctx, check_target))
    except ImportError:  # the mlflow extra is not installed: nothing to watch with
        return 0


def _reap_planning(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher,
                   stale_before: dt.datetime, counts: Counter[str]) -> None:
    """Jobs whose planner was lost before they had units."""
    requeued: list[tuple[str, str]] = []
    with sessions() as session:
        planned = select(JobUnit.id).where(JobUnit.job_id == Job.id).exists()
        active = session.scalars(select(Job).where(Job.status.in_(jobstate.ACTIVE_RUN), ~planned)).all()
        for job in (j for j in active if _stale(j.heartbeat_at, j.worker, stale_before)):
            lost = f"worker {job.worker} stopped sending heartbeats"
            expected = [job.status]
            if job.cancel_requested or job.status == jobstate.CANCELLING:
                if jobstate.transition(session, job, expected, jobstate.CANCELLED, attempt=job.attempt):
                    jobstate.add_event(session, job, "status", f"{lost}; cancelled", data={"status": "cancelled"})
                    counts["cancelled"] += 1
            elif job.attempt >= settings.max_attempts:
                if jobstate.transition(session, job, expected, jobstate.FAILED, attempt=job.attempt,
                                       error_code="worker_lost",
                                       error_message=f"{lost}; gave up after {job.attempt} attempts"):
                    jobstate.add_event(session, job, "status", f"{lost}; gave up", data={"status": "failed"})
                    counts["failed"] += 1
            elif jobstate.transition(session, job, expected, jobstate.QUEUED, attempt=job.attempt,
                                     dispatched_at=utcnow()):
                jobstate.add_event(session, job, "status", f"{lost}; re-queued",
                                   data={"status": "queued", "lost_worker": job.worker})
                counts["requeued"] += 1
                requeued.append((job.id, job.queue))
            session.commit()
    for job_id, queue in requeued:
        counts["sent"] += _send_job(sessions, dispatcher, job_id, queue)


def _reap_units(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher,
                stale_before: dt.datetime, counts: Counter[str]) -> None:
    """Units whose worker was lost; pending units nobody sent; cancelling jobs none of whose units runs."""
    to_send: list[tuple[str, int, str, str]] = []
    with sessions() as session:
        running = session.execute(select(JobUnit, Job).join(Job, Job.id == JobUnit.job_id)
                                  .where(JobUnit.status == jobstate.RUNNING)).all()
        for unit, job in running:
            if _stale(unit.heartbeat_at, unit.worker, stale_before):
                outcome = _recover(settings, sessions, session, unit, job)
                if outcome in COUNTS:
                    counts[outcome] += 1
                if outcome == "requeued":
                    to_send.append((job.id, unit.id, unit.key, job.queue))
        grace = utcnow() - dt.timedelta(seconds=UNSENT_GRACE_S)
        waiting = session.scalars(select(JobUnit.job_id).join(Job, Job.id == JobUnit.job_id).where(
            JobUnit.status == jobstate.PENDING, Job.status == jobstate.RUNNING, JobUnit.created_at < grace)
            .distinct()).all()
        cancelling = session.scalars(select(Job.id).where(
            Job.status == jobstate.CANCELLING, select(JobUnit.id).where(JobUnit.job_id == Job.id).exists())).all()
    for job_id, unit_id, key, queue in to_send:
        counts["sent"] += send_unit(sessions, dispatcher, job_id, unit_id, key, queue)
    for job_id in waiting:
        counts["sent"] += dispatch_ready(settings, sessions, dispatcher, job_id)
    for job_id in cancelling:
        counts["cancelled"] += finish_cancel(settings, sessions, job_id)


def _recover(settings: Settings, sessions: sessionmaker[Session], session: Session, unit: JobUnit, job: Job) -> str:
    """Cancel, fail or re-queue one unit whose worker was lost (committed); what happened, or ``kept``."""
    lost = f"unit {unit.key}: worker {unit.worker} stopped sending heartbeats"
    owned = (JobUnit.id == unit.id) & (JobUnit.attempt == unit.attempt) & (JobUnit.status == jobstate.RUNNING)
    outcome = "kept"
    if job.cancel_requested or job.status != jobstate.RUNNING:
        if session.execute(update(JobUnit).where(owned).values(status=jobstate.CANCELLED,
                                                               finished_at=utcnow())).rowcount == 1:
            jobstate.unit_event(session, job, unit, jobstate.CANCELLED, f"{lost}; cancelled", lost_worker=unit.worker)
            outcome = "cancelled"
    elif unit.attempt >= settings.max_attempts:
        message = f"{lost}; gave up after {unit.attempt} attempts"
        if session.execute(update(JobUnit).where(owned).values(status=jobstate.FAILED, error_message=message,
                                                               finished_at=utcnow())).rowcount == 1:
            session.commit()
            fail_job(sessions, job.id, "worker_lost", message)
            return "failed"
    elif session.execute(update(JobUnit).where(owned).values(status=jobstate.QUEUED, dispatched_at=utcnow(),
                                                             progress=0.0)).rowcount == 1:
        jobstate.unit_event(session, job, unit, jobstate.QUEUED, f"{lost}; re-sent", lost_worker=unit.worker)
        jobstate.add_event(session, job, "status", f"{lost}; re-queued to resume from where it stopped",
                           data={"status": job.status, "unit": unit.key, "lost_worker": unit.worker})
        outcome = "requeued"
    session.commit()
    return outcome


def _send_unsent(settings: Settings, sessions: sessionmaker[Session], dispatcher: Dispatcher, now: dt.datetime,
                 counts: Counter[str]) -> None:
    """Queued jobs and units never handed to the broker."""
    grace = now - dt.timedelta(seconds=UNSENT_GRACE_S)
    with sessions() as session:
        jobs = session.execute(select(Job.id, Job.queue).where(
            Job.status == jobstate.QUEUED, Job.dispatched_at.is_(None), Job.created_at < grace)).all()
        units = session.execute(select(JobUnit.id, JobUnit.job_id, JobUnit.key, Job.queue)
                                .join(Job, Job.id == JobUnit.job_id)
                                .where(JobUnit.status == jobstate.QUEUED, JobUnit.dispatched_at.is_(None),
                                       Job.status == jobstate.RUNNING)).all()
    for job_id, queue in jobs:
        if _won_send(sessions, Job, Job.id == job_id):
            counts["sent"] += _send_job(sessions, dispatcher, job_id, queue)
    for unit_id, job_id, key, queue in units:
        if _won_send(sessions, JobUnit, JobUnit.id == unit_id):
            counts["sent"] += send_unit(sessions, dispatcher, job_id, unit_id, key, queue)


def _won_send(sessions: sessionmaker[Session], table: type, condition: object) -> bool:
    with sessions() as session:
        won = session.execute(update(table).where(condition, table.dispatched_at.is_(None))
                              .values(dispatched_at=utcnow()))
        session.commit()
    return won.rowcount == 1


def _send_job(sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: str, queue: str) -> int:
    try:
        dispatcher.send(job_id, queue)
        return 1
    except Exception as exc:  # noqa: BLE001 - try again next pass
        log.warning("reaper: could not send %s: %s", job_id, exc)
        with sessions() as session:
            session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=None))
            session.commit()
        return 0


def _clean_processed(settings: Settings) -> None:
    folder = settings.broker_dir / "processed"
    cutoff = time.time() - PROCESSED_MAX_AGE_S
    for path in folder.glob("*.msg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass


def warn_unserved(settings: Settings, sessions: sessionmaker[Session]) -> int:
    """Add a ``no_worker`` warning (once) to every job queued longer than ``unserved_warn_s`` on a queue no
    live worker consumes (a job of device ``cuda`` on a CPU-only deployment, say); returns how many."""
    since = utcnow() - dt.timedelta(seconds=settings.unserved_warn_s)
    warned = 0
    with sessions() as session:
        live = workers.consumers(session, settings)
        waiting = session.scalars(select(Job).where(Job.status == jobstate.QUEUED, Job.created_at < since,
                                                    Job.queue.in_([q for q, n in live.items() if n == 0]))).all()
        for job in waiting:
            noted = select(JobEvent.id).where(JobEvent.job_id == job.id, JobEvent.type == "warning",
                                              JobEvent.data["code"].as_string() == "no_worker")
            if session.scalar(noted) is not None:
                continue
            listening = ", ".join(q for q, n in live.items() if n) or "none"
            jobstate.add_event(session, job, "warning", f"no live worker listens on queue {job.queue} (queues with a "
                               f"worker: {listening}): start one with `midre worker --queues "
                               f"{job.queue.rsplit('-', 1)[-1]}`, or resubmit with another `device`",
                               data={"code": "no_worker", "queue": job.queue})
            warned += 1
        session.commit()
    return warned


class Reaper:
    """Runs :func:`reap_once` every ``settings.reaper_interval_s`` in a daemon thread, and keeps this worker's
    row in the ``workers`` table (its id and the queues it consumes) fresh."""

    def __init__(self, settings: Settings, worker: str | None = None, queues: list[str] | None = None) -> None:
        self.settings = settings
        self.worker, self.queues = worker, queues or []
        self.dispatcher = Dispatcher(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="midre-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.worker is not None:
            with session_factory(self.settings.db_url, self.settings.pool)() as session:
                workers.forget(session, self.worker)
                session.commit()

    def announce(self) -> None:
        """Write this worker's row (at start and every pass)."""
        if self.worker is not None:
            with session_factory(self.settings.db_url, self.settings.pool)() as session:
                workers.announce(session, self.worker, self.queues)
                session.commit()

    def _run(self) -> None:
        self._pass(announce_only=True)
        while not self._stop.wait(self.settings.reaper_interval_s):
            self._pass()

    def _pass(self, announce_only: bool = False) -> None:
        try:
            self.announce()
            if not announce_only:
                reap_once(self.settings, self.dispatcher)
                warn_unserved(self.settings, session_factory(self.settings.db_url, self.settings.pool))
        except Exception:  # noqa: BLE001 - never kill the worker over a reaper pass
            log.exception("reaper pass failed")


__all__ = ["Reaper", "UNSENT_GRACE_S", "reap_once", "warn_unserved"]
