"""Recovering jobs from lost workers and lost messages, using the DB as the source of truth.

Runs in every worker's main process (a daemon thread, every ``reaper_interval_s``):

* a ``running`` / ``cancelling`` job whose heartbeat is older than ``stale_after_s`` (or whose
  worker process on this host is gone) lost its worker (SIGKILL, OOM, node gone): it is
  re-queued (the next attempt resumes from the last epoch checkpoint), cancelled if a cancel was
  pending, or failed after ``max_attempts``;
* a ``queued`` job never handed to the broker (the API crashed or the broker was down between the
  commit and the send) is sent;
* a ``queued`` job whose message no worker picked up within ``redispatch_after_s`` is sent again
  when its queue holds fewer messages than it has queued jobs: the broker lost messages (a Redis
  restart without persistence, a FLUSHALL, a failover, a purge, a deleted message file). A job
  merely waiting behind a backlog still has its message, so it is not sent twice. Should the lost
  message turn up after all, the claim's compare-and-set runs the job once and drops the other copy;
* processed message files of the embedded broker older than a day are deleted;
* the units of fanned-out studies get the same care (``services.worker.fanout.reap_units``): a
  running unit whose heartbeat went stale is sent again, unsent and lost unit messages are sent
  (lost ones counted with the jobs of their queue), a cancelling study whose units all stopped is
  cancelled. A planned study's own heartbeat is not checked: its units carry them.

Each move is a compare-and-set, so any number of workers can run the reaper at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.db import jobs as jobstate
from services.db.models import Job, JobUnit
from services.db.session import session_factory
from services.db.types import utcnow
from services.queue.dispatch import Dispatcher
from services.settings import Settings
from services.storage.orphans import sweep_store
from services.worker.fanout import QUEUED as UNIT_QUEUED
from services.worker.fanout import reap_units, send_unit, unit_event
from services.worker.runner import owner_is_dead

log = logging.getLogger(__name__)

#: A queued job must be this old (seconds) before the reaper sends it: the API sends right after
#: its commit, so a younger one is probably being sent now.
UNSENT_GRACE_S = 10.0
PROCESSED_MAX_AGE_S = 24 * 3600


def reap_once(settings: Settings, dispatcher: Dispatcher) -> dict[str, int]:
    """One pass; returns how many jobs were re-queued, cancelled, failed, sent and re-sent."""
    sessions = session_factory(settings.db_url, settings.pool)
    counts = {"requeued": 0, "cancelled": 0, "failed": 0, "sent": 0, "resent": 0}
    now = utcnow()
    stale_before = now - dt.timedelta(seconds=settings.stale_after_s)
    to_send: list[tuple[str, str]] = []
    with sessions() as session:
        planned = select(JobUnit.id).where(JobUnit.job_id == Job.id).exists()
        active = session.scalars(
            select(Job).where(Job.status.in_([jobstate.RUNNING, jobstate.CANCELLING]), ~planned)
        ).all()
        stale = [
            job
            for job in active
            if job.heartbeat_at is None or job.heartbeat_at < stale_before or owner_is_dead(job.worker)
        ]
        for job in stale:
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
                jobstate.add_event(session, job, "status", f"{lost}; re-queued to resume from its last checkpoint",
                                   data={"status": "queued", "lost_worker": job.worker})
                counts["requeued"] += 1
                to_send.append((job.id, job.queue))
            session.commit()

        unsent = session.scalars(
            select(Job).where(
                Job.status == jobstate.QUEUED,
                Job.dispatched_at.is_(None),
                Job.created_at < now - dt.timedelta(seconds=UNSENT_GRACE_S),
            )
        ).all()
        for job in unsent:
            result = session.execute(
                update(Job).where(Job.id == job.id, Job.dispatched_at.is_(None)).values(dispatched_at=utcnow())
            )
            session.commit()
            if result.rowcount == 1:
                to_send.append((job.id, job.queue))
    for job_id, queue in to_send:
        try:
            dispatcher.send(job_id, queue)
            counts["sent"] += 1
        except Exception as exc:  # noqa: BLE001 - try again next pass
            log.warning("reaper: could not send %s: %s", job_id, exc)
            with sessions() as session:
                session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=None))
                session.commit()
    units = reap_units(settings, dispatcher, sessions, UNSENT_GRACE_S)
    for name in ("requeued", "sent", "failed", "cancelled"):
        counts[name] += getattr(units, name)
    counts["resent"] = resend_lost(settings, dispatcher, sessions, now)
    if settings.embedded:
        _clean_processed(settings)
    sweep_store(settings, sessions)  # partial uploads of dead API processes, unreferenced blobs
    if any(counts.values()):
        log.info("reaper: %s", counts)
    return counts


def resend_lost(settings: Settings, dispatcher: Dispatcher, sessions: sessionmaker[Session], now: dt.datetime) -> int:
    """Send again the queued jobs and study units whose message the broker lost; returns how many were re-sent.

    A job (or a unit of a running study) is a candidate once it was sent more than
    ``redispatch_after_s`` before ``now`` and is still ``queued``. Per queue, ``queued jobs and units -
    messages waiting`` of them (oldest send first) are re-sent; every candidate when the broker cannot
    count. Each re-send is won by a compare-and-set on ``dispatched_at``, so of several reapers only one
    sends it, and one sent again is not a candidate for another ``redispatch_after_s``.
    """
    cutoff = now - dt.timedelta(seconds=settings.redispatch_after_s)
    handed_over = (Job.status == jobstate.QUEUED) & Job.dispatched_at.is_not(None)
    unit_handed_over = ((JobUnit.status == UNIT_QUEUED) & JobUnit.dispatched_at.is_not(None)
                        & (Job.status == jobstate.RUNNING))
    with sessions() as session:
        overdue: list[tuple[Any, ...]] = [
            (row.dispatched_at, "job", row.id, row.queue, None)
            for row in session.execute(select(Job.id, Job.queue, Job.dispatched_at)
                                       .where(handed_over, Job.dispatched_at < cutoff))
        ]
        overdue += [
            (row.dispatched_at, "unit", row.id, row.queue, (row.job_id, row.key))
            for row in session.execute(
                select(JobUnit.id, JobUnit.job_id, JobUnit.key, JobUnit.dispatched_at, Job.queue)
                .join(Job, Job.id == JobUnit.job_id).where(unit_handed_over, JobUnit.dispatched_at < cutoff))
        ]
    if not overdue:
        return 0
    overdue.sort(key=lambda row: (row[0], row[1], str(row[2])))
    queues = sorted({row[3] for row in overdue})
    # The broker first, then the DB: a message taken by a worker between the two reads then looks
    # like an extra message (no re-send), never like a lost one.
    waiting_messages = dispatcher.message_counts(queues)
    with sessions() as session:
        counted = select(Job.queue, func.count()).where(handed_over, Job.queue.in_(queues)).group_by(Job.queue)
        in_flight = dict(session.execute(counted).all())
        counted_units = (select(Job.queue, func.count()).select_from(JobUnit).join(Job, Job.id == JobUnit.job_id)
                         .where(unit_handed_over, Job.queue.in_(queues)).group_by(Job.queue))
        for queue, n in session.execute(counted_units).all():
            in_flight[queue] = in_flight.get(queue, 0) + n
    chosen: list[tuple[Any, ...]] = []
    for queue in queues:
        candidates = [row for row in overdue if row[3] == queue]
        messages = waiting_messages.get(queue, -1)
        lost = len(candidates) if messages < 0 else in_flight.get(queue, 0) - messages
        chosen += candidates[: max(lost, 0)]

    resent = 0
    for _, what, ident, queue, unit in chosen:
        if what == "unit":
            resent += _resend_unit(settings, dispatcher, sessions, now, cutoff, ident, unit, queue)
        else:
            resent += _resend_job(settings, dispatcher, sessions, now, cutoff, ident, queue)
    return resent


def _resend_job(settings: Settings, dispatcher: Dispatcher, sessions: sessionmaker[Session], now: dt.datetime,
                cutoff: dt.datetime, job_id: str, queue: str) -> int:
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.dispatched_at is None:
            return 0
        waited = (now - job.dispatched_at).total_seconds()
        won = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == jobstate.QUEUED, Job.dispatched_at < cutoff)
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # claimed, cancelled, or another reaper re-sent it meanwhile
            session.rollback()
            return 0
        jobstate.add_event(
            session, job, "log", f"re-sent: not picked up within {settings.redispatch_after_s:g} s",
            data={"resent": True, "queue": queue, "waited_s": round(waited, 1)},
        )
        session.commit()
    try:
        dispatcher.send(job_id, queue)
    except Exception as exc:  # noqa: BLE001 - unsent again: the next pass sends it
        log.warning("reaper: could not re-send %s: %s", job_id, exc)
        with sessions() as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.status == jobstate.QUEUED).values(dispatched_at=None)
            )
            job = session.get(Job, job_id)
            if job is not None:
                jobstate.add_event(session, job, "log", "re-send failed: the broker refused the message; "
                                   "the reaper tries again", data={"resent": False, "queue": queue})
            session.commit()
        return 0
    log.info("reaper: re-sent %s to %s (queued, not picked up for %.0f s)", job_id, queue, waited)
    return 1


def _resend_unit(settings: Settings, dispatcher: Dispatcher, sessions: sessionmaker[Session], now: dt.datetime,
                 cutoff: dt.datetime, unit_id: int, unit: tuple[str, str], queue: str) -> int:
    job_id, key = unit
    with sessions() as session:
        row = session.get(JobUnit, unit_id)
        job = session.get(Job, job_id)
        if row is None or job is None or row.dispatched_at is None:
            return 0
        waited = (now - row.dispatched_at).total_seconds()
        won = session.execute(
            update(JobUnit)
            .where(JobUnit.id == unit_id, JobUnit.status == UNIT_QUEUED, JobUnit.dispatched_at < cutoff)
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:
            session.rollback()
            return 0
        unit_event(session, job, row, UNIT_QUEUED,
                   f"unit {key} re-sent: not picked up within {settings.redispatch_after_s:g} s",
                   resent=True, queue=queue, waited_s=round(waited, 1))
        session.commit()
    if send_unit(sessions, dispatcher, job_id, unit_id, key, queue):
        log.info("reaper: re-sent unit %s of %s to %s", key, job_id, queue)
        return 1
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


class Reaper:
    """Runs :func:`reap_once` every ``settings.reaper_interval_s`` in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dispatcher = Dispatcher(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="midre-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval_s):
            try:
                reap_once(self.settings, self.dispatcher)
            except Exception:  # noqa: BLE001 - never kill the worker over a reaper pass
                log.exception("reaper pass failed")
