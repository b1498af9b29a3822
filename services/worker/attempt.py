"""One attempt at one unit of a job: the claim, the heartbeat, progress, and the cancel check.

Every piece of work a worker does is a unit of a job's graph (a train job is a graph of one unit), and
every unit attempt goes through :class:`UnitAttempt`:

* **claim** with a compare-and-set on ``(status, attempt)``: a duplicate delivery of a unit another live
  worker runs (fresh heartbeat) is dropped; a finished unit is skipped (tasks are idempotent); a unit of
  a cancelled or finished job is cancelled; a unit that ran out of attempts fails its job;
* **heartbeat** from a thread every ``heartbeat_s`` (the unit's and its job's); a worker that lost the
  unit (the reaper gave it to another) notices through the attempt number and stops;
* **progress**: every ``ProgressEvent`` updates the unit and the job (its progress is the units' weighted
  progress, below 1 until the job has finished); stage changes, finished epochs and messages become job
  events naming the unit; the epochs of a job's own model (a ``train`` unit) become metric rows;
* **cancel**: ``should_stop`` reads the job's flag and the unit's ownership at most every ``cancel_poll_s``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from midre.vocabulary import normalise
from services.db import jobs as jobstate
from services.db.jobs import unit_event, weighted_progress
from services.db.models import Job, JobUnit, Metric
from services.db.types import host_id, utcnow
from services.redact import server_redactor
from services.settings import Settings
from services.worker.ending import fail_job, finish_cancel

log = logging.getLogger(__name__)

#: Seconds between two writes of a unit's progress fraction (stage changes are written at once).
PROGRESS_EVERY_S = 0.5
#: The stage name ``midre.train`` gives its end-of-epoch report (metrics of the finished epoch).
EPOCH_STAGE = "epoch"
#: The unit kind that trains the job's own model: its epochs are the job's training curve.
MODEL_UNIT = "train"


def owner_is_dead(worker: str | None) -> bool:
    """True when ``worker`` (``host:pid``) is a process of this host that no longer exists.

    Lets a redelivered message (``task_reject_on_worker_lost`` after a pool process died) or this
    host's reaper take the unit over at once instead of waiting for its heartbeat to go stale.
    """
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != host_id() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class UnitLost(Exception):
    """Another attempt owns the unit now."""


class UnitAttempt:
    """Heartbeat, progress and ``should_stop`` of one claimed attempt at one unit."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], job_id: str, unit: JobUnit,
                 single: bool) -> None:
        self.settings = settings
        self.sessions = sessions
        self.job_id = job_id
        self.unit_id = unit.id
        self.key = unit.key
        self.kind = unit.kind
        self.attempt = unit.attempt
        #: A job of one unit speaks for itself: its events and errors need not name the unit.
        self.single = single
        self.prefix = "" if single else f"{unit.key}: "
        #: Seconds the unit's own thread spent in these callbacks (the service's cost inside the library).
        self.callback_seconds = 0.0
        #: Messages reach clients (events, the job's message and error): no server path in them.
        self.redact = server_redactor(settings)
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}-{unit.key}", daemon=True)
        self._last_write = 0.0
        self._last_poll = 0.0
        self._stage: str | None = None
        self._message = ""

    def _owned(self) -> Any:
        return (JobUnit.id == self.unit_id) & (JobUnit.attempt == self.attempt) & (JobUnit.status == jobstate.RUNNING)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                now = utcnow()
                with self.sessions() as session:
                    result = session.execute(update(JobUnit).where(self._owned()).values(heartbeat_at=now))
                    session.execute(update(Job).where(Job.id == self.job_id, Job.status.in_(jobstate.ACTIVE_RUN))
                                    .values(heartbeat_at=now))
                    session.commit()
                if result.rowcount == 0:
                    log.warning("job %s unit %s: attempt %d no longer owns it", self.job_id, self.key, self.attempt)
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - keep beating through a DB hiccup
                log.warning("job %s unit %s: heartbeat failed: %s", self.job_id, self.key, exc)

    def should_stop(self) -> bool:
        """True once the job is cancelled (or failed because of another unit) or this attempt lost the unit."""
        if self.lost.is_set() or self.cancel.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll < self.settings.cancel_poll_s:
            return False
        self._last_poll = now
        with self.sessions() as session:
            job = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == self.job_id)).first()
            unit = session.execute(select(JobUnit.status, JobUnit.attempt).where(JobUnit.id == self.unit_id)).first()
        self.callback_seconds += time.monotonic() - now
        if unit is None or unit.attempt != self.attempt or unit.status != jobstate.RUNNING:
            self.lost.set()
        elif job is None or job.cancel_requested or job.status != jobstate.RUNNING:
            self.cancel.set()
        return self.lost.is_set() or self.cancel.is_set()

    def progress(self, event: Any) -> None:
        """Record one ``midre.progress.ProgressEvent`` (steps are throttled; stage changes never)."""
        stage = str(getattr(event, "stage", "") or "")
        message = self.redact(str(getattr(event, "message", "") or ""))
        fraction = min(max(float(getattr(event, "fraction", 0.0) or 0.0), 0.0), 1.0)
        step, steps = getattr(event, "step", None), getattr(event, "steps", None)
        is_step = step is not None and steps is not None and message == ""
        stage_changed = stage != self._stage and stage != EPOCH_STAGE
        now = time.monotonic()
        if is_step and not stage_changed and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        with self.sessions() as session:
            if session.execute(update(JobUnit).where(self._owned()).values(progress=fraction)).rowcount == 0:
                self.lost.set()
                return
            job = session.get(Job, self.job_id)
            if job is not None and job.status in jobstate.ACTIVE_RUN:
                self._record(session, job, event, stage, message, fraction, is_step, stage_changed)
            session.commit()
        self.callback_seconds += time.monotonic() - now
        if stage != EPOCH_STAGE:
            self._stage = stage
        self._message = message or self._message

    def _record(self, session: Session, job: Job, event: Any, stage: str, message: str, fraction: float,
                is_step: bool, stage_changed: bool) -> None:
        values: dict[str, Any] = {"progress": max(job.progress, weighted_progress(session, self.job_id))}
        if stage and stage != EPOCH_STAGE:
            values["stage"] = stage
        if message or stage_changed:
            values["message"] = f"{self.prefix}{message}" if message else ""
        session.execute(update(Job).where(Job.id == self.job_id).values(**values))
        epoch = getattr(event, "epoch", None)
        metrics = normalise(getattr(event, "metrics", None) or {})  # the one vocabulary; drops NaN
        data = {"unit": self.key, "fraction": round(fraction, 4), "epoch": epoch,
                "epochs": getattr(event, "epochs", None), "metrics": metrics}
        if stage == EPOCH_STAGE and epoch is not None:
            jobstate.add_event(session, job, "epoch", f"{self.prefix}{message or f'epoch {epoch}'}", stage=stage,
                               data=data)
            if self.kind == MODEL_UNIT:
                for name, value in metrics.items():
                    session.add(Metric(job_id=self.job_id, name=name, value=value, epoch=int(epoch)))
        elif stage_changed:
            jobstate.add_event(session, job, "stage", f"{self.prefix}{message or stage}", stage=stage, data=data)
        elif message and message != self._message and not is_step:
            jobstate.add_event(session, job, "log", f"{self.prefix}{message}", stage=stage, data=data)


def claim_unit(settings: Settings, sessions: sessionmaker[Session], job_id: str, key: str,
               worker: str) -> tuple[Job, JobUnit, bool] | str:
    """Take unit ``key`` of ``job_id`` for this worker: ``(job, unit, single)``, or why it must not run here
    (``skipped``, ``cancelled``, ``failed``). ``single``: the unit is its job's only one."""
    with sessions() as session:
        job = session.get(Job, job_id)
        unit = session.scalar(select(JobUnit).where(JobUnit.job_id == job_id, JobUnit.key == key))
        if job is None or unit is None:
            log.warning("job %s has no unit %s; dropping the message", job_id, key)
            return "skipped"
        if unit.status in jobstate.UNIT_TERMINAL or unit.status == jobstate.PENDING:
            return "skipped"
        same = (JobUnit.id == unit.id) & (JobUnit.status == unit.status) & (JobUnit.attempt == unit.attempt)
        if job.status in jobstate.TERMINAL or job.cancel_requested or job.status == jobstate.CANCELLING:
            stopped = session.execute(update(JobUnit).where(same).values(status=jobstate.CANCELLED,
                                                                         finished_at=utcnow()))
            session.commit()
            if stopped.rowcount == 1:
                finish_cancel(settings, sessions, job_id)
            return "cancelled"
        if unit.status == jobstate.RUNNING and unit.heartbeat_at is not None:
            age = (utcnow() - unit.heartbeat_at).total_seconds()
            if age < settings.stale_after_s and not owner_is_dead(unit.worker):
                log.info("job %s unit %s runs on %s; duplicate delivery dropped", job_id, key, unit.worker)
                return "skipped"
        if unit.attempt >= settings.max_attempts:
            message = f"unit {key}: gave up after {unit.attempt} attempts"
            lost = session.execute(update(JobUnit).where(same).values(status=jobstate.FAILED, error_message=message,
                                                                      finished_at=utcnow()))
            session.commit()
            if lost.rowcount == 1:
                fail_job(sessions, job_id, "worker_lost", message)
            return "failed"
        return _take(sessions, session, job, unit, worker)


def _take(sessions: sessionmaker[Session], session: Session, job: Job, unit: JobUnit,
          worker: str) -> tuple[Job, JobUnit, bool] | str:
    now = utcnow()
    live = select(Job.id).where(Job.id == job.id, Job.status == jobstate.RUNNING, Job.cancel_requested.is_(False))
    won = session.execute(
        update(JobUnit)
        .where(JobUnit.id == unit.id, JobUnit.status == unit.status, JobUnit.attempt == unit.attempt, live.exists())
        .values(status=jobstate.RUNNING, attempt=unit.attempt + 1, worker=worker, heartbeat_at=now, progress=0.0,
                started_at=unit.started_at or now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:
        session.rollback()
        return "skipped"
    session.refresh(unit)
    # The job's worker and attempt follow its units: the latest worker, the highest attempt.
    session.execute(update(Job).where(Job.id == job.id).values(worker=worker, heartbeat_at=now,
                                                               attempt=max(job.attempt, unit.attempt)))
    session.refresh(job)
    note = "resuming" if unit.attempt > 1 else "started"
    unit_event(session, job, unit, jobstate.RUNNING, f"unit {unit.key} {note} on {worker} (attempt {unit.attempt})",
               worker=worker)
    single = session.scalar(select(func.count()).select_from(JobUnit).where(JobUnit.job_id == job.id)) == 1
    session.commit()
    session.expunge(unit)
    session.expunge(job)
    return job, unit, single


__all__ = ["EPOCH_STAGE", "PROGRESS_EVERY_S", "UnitAttempt", "UnitLost", "claim_unit", "owner_is_dead"]
